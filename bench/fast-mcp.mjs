// A minimal MCP Streamable HTTP endpoint for benchmarks: answers initialize, notifications/initialized and
// tools/call run_diagnosis with a fixed, schema-valid v1 result and no other work, as application/json, stateless.
// It measures pg_diagnosis's own ceiling; the reference server (mcp-server/) is the realistic workload.
// Usage: node bench/fast-mcp.mjs [--port 0] [--delay-ms 0] [--sse]   prints MCP_URL=http://127.0.0.1:<port>/mcp
// --delay-ms: each tools/call answers after that long (the model-latency regime); /stats reports the most calls
// that were in flight at once. --sse: tools/call answers as text/event-stream, a notifications/progress for the
// request's progressToken first and the result when the delay is over (how a model-backed server streams).
import http from 'node:http';

const args = process.argv.slice(2);
const option = (name) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || 0 : 0);
const port = option('--port');
const delayMs = option('--delay-ms');
const sse = args.includes('--sse');
const RESULT = {
  risk_level: 'low', confidence_score: 0.9, summary: 'NEWS2 aggregate 0: low clinical risk.',
  primary_findings: ['All vital signs within normal ranges'],
  recommendations: [{ text: 'Minimum 12-hourly observations', priority: 'routine' }],
};
const RESULT_TEXT = JSON.stringify(RESULT);
let calls = 0;
let inflight = 0;
let maxInflight = 0;

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    return reply(res, 200, { total_calls: calls, inflight, max_inflight: maxInflight });
  }
  if (req.method !== 'POST') return reply(res, 405, { error: 'POST only' });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return reply(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
    }
    if (msg.method === 'initialize') {
      return reply(res, 200, { jsonrpc: '2.0', id: msg.id, result: {
        protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'fast-mcp', version: '1.0.0' } } });
    }
    if (msg.id === undefined) { res.writeHead(202); return res.end(); } // a notification
    if (msg.method === 'tools/call') {
      calls++;
      inflight++;
      maxInflight = Math.max(maxInflight, inflight);
      const answer = { jsonrpc: '2.0', id: msg.id, result: {
        content: [{ type: 'text', text: RESULT_TEXT }], structuredContent: RESULT,
        _meta: { run_id: `fast-${msg.params?.arguments?.run_id}:${msg.params?.arguments?.attempt}` } } };
      const finish = () => {
        inflight--;
        if (!sse) return reply(res, 200, answer);
        res.end(`event: message\ndata: ${JSON.stringify(answer)}\n\n`);
        return undefined;
      };
      if (sse) {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        const token = msg.params?._meta?.progressToken;
        if (token !== undefined) {
          res.write(`event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/progress',
            params: { progressToken: token, progress: 1, total: 2, message: 'model called' } })}\n\n`);
        }
      }
      if (delayMs > 0) setTimeout(finish, delayMs);
      else finish();
      return undefined;
    }
    return reply(res, 200, { jsonrpc: '2.0', id: msg.id, error: { code: -32601, message: 'Method not found' } });
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => {
  console.log(`MCP_URL=http://127.0.0.1:${server.address().port}/mcp`);
});
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => { server.closeAllConnections(); server.close(() => process.exit(0)); });
