// A 2026-07-28 server on the official SDK v2 (@modelcontextprotocol/server): createMcpHandler with a tool
// run_diagnosis that returns a valid diagnosis, on 127.0.0.1, a free port printed as "PORT n". LEGACY=reject makes it
// modern-only. GET /seen lists the tool calls it served (arguments and _meta).
import http from 'node:http';
import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import * as z from 'zod';

const diagnosis = { risk_level: 'high', confidence_score: 0.8, summary: 'sdk2', primary_findings: ['a'],
  recommendations: [{ text: 'r' }] };
const seen = [];

function factory() {
  const server = new McpServer({ name: 'sdk2-modern', version: '2.4.0' });
  server.registerTool('run_diagnosis', { description: 'test diagnosis',
    inputSchema: z.object({ run_id: z.string() }).passthrough() }, async (args, extra) => {
    seen.push({ args, meta: extra?._meta ?? null });
    return { content: [{ type: 'text', text: JSON.stringify(diagnosis) }], structuredContent: diagnosis,
      _meta: { run_id: 'sdk2-' + args.run_id } };
  });
  return server;
}

const handler = createMcpHandler(factory, { legacy: process.env.LEGACY || undefined });
const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  if (req.url === '/seen') return res.end(JSON.stringify(seen));
  const request = new Request('http://127.0.0.1' + req.url, { method: req.method, headers: req.headers,
    body: ['GET', 'HEAD'].includes(req.method) ? undefined : Buffer.concat(chunks) });
  const response = await handler.fetch(request);
  res.writeHead(response.status, Object.fromEntries(response.headers));
  if (response.body) for await (const c of response.body) res.write(c);
  res.end();
});
server.listen(0, '127.0.0.1', () => console.log('PORT', server.address().port));
