// Pass-through to ai-stream: the body useChat sends goes on unchanged, the answer (the UI message
// stream) comes back unchanged; only the API key is added, from the server's environment.
export async function POST(request: Request): Promise<Response> {
  const upstream = await fetch(`${process.env.AI_STREAM_URL}/ai/ui/chat`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Authorization: `Bearer ${process.env.AI_STREAM_API_KEY}`,
    },
    body: await request.text(),
    signal: request.signal, // the browser leaving ends the model's answer too
  });
  return new Response(upstream.body, { status: upstream.status, headers: upstream.headers });
}
