/** @type {import('next').NextConfig} */
const nextConfig = {
  // The app is this folder alone (the repository root has other lock files).
  outputFileTracingRoot: import.meta.dirname,
  turbopack: { root: import.meta.dirname },
};

export default nextConfig;
