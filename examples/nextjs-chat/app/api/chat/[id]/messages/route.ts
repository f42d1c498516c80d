// The stored chat as UIMessage[], for useChat({ messages }) when the page loads.
export async function GET(_request: Request, { params }: { params: Promise<{ id: string }> }): Promise<Response> {
  const { id } = await params;
  const upstream = await fetch(`${process.env.AI_STREAM_URL}/ai/ui/chat/${encodeURIComponent(id)}/messages`, {
    headers: { Authorization: `Bearer ${process.env.AI_STREAM_API_KEY}` },
    cache: "no-store",
  });
  // A chat that was never stored is simply empty.
  if (upstream.status === 404) return Response.json([]);
  return new Response(upstream.body, { status: upstream.status, headers: upstream.headers });
}
