// A hostile MCP server of the project's own (issue 27): a raw HTTP server that speaks just enough of the legacy
// Streamable HTTP era (initialize, tools/list, tools/call; the 2025-11-25 tasks capability) to be a usable
// endpoint, and answers each tools/call by the attack its run's inputs name ({"attack": "..."}), written out on
// the wire byte for byte because most of them are malformed framing the official SDK would never produce. A call
// without an attack gets a valid diagnosis at once, so one server is the hostile peer of one organization and
// the well-behaved peer of another. It runs inside the test process; every socket it opened is destroyed on close.
import http from 'node:http';
import { randomBytes } from 'node:crypto';

export const GOOD_RESULT = {
  risk_level: 'low', confidence_score: 0.9, summary: 'well-behaved answer', primary_findings: ['none'],
  recommendations: [{ text: 'routine care', priority: 'routine' }],
};

const sseHead = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
const event = (message) => `event: message\ndata: ${JSON.stringify(message)}\n\n`;
const toolResult = (id) => ({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: JSON.stringify(GOOD_RESULT) }], structuredContent: GOOD_RESULT } });

/** Text that does not compress (as the 0.2.0 table growth was measured), with a two-byte character every 8. */
function incompressible(chars) {
  const ascii = randomBytes(Math.ceil(chars * 0.75) + 8).toString('base64').replace(/[+/=]/g, 'x');
  let out = '';
  for (let i = 0; out.length < chars; i++) out += i % 8 === 7 ? 'é' : ascii[i % ascii.length];
  return out;
}

/**
 * The attacks, by name. Each gets (res, call, ctx) and writes the whole answer; `ctx.stats` counts what the worker
 * did, `ctx.later(ms, fn)` is a timer cleared on close.
 */
const ATTACKS = {
  // A confidence_score the schema allows but real cannot hold (1e-50), or one beyond the schema (1e300): the
  // worker validates or stores it, never fails to store it (issue 27).
  number_edges(res, call) {
    const result = { ...GOOD_RESULT, confidence_score: Number(call.params.arguments.inputs.confidence) };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', id: call.id,
      result: { content: [{ type: 'text', text: JSON.stringify(result) }], structuredContent: result } }));
  },
  // 0.2.0 copied the last id into every event: 64 KiB id x 20,000 events of 7 bytes = 1.3 GB from 184 KB.
  ids(res, call) {
    res.writeHead(200, sseHead);
    res.write(`id: ${'i'.repeat(64 * 1024)}\n`);
    res.write('data:\n\n'.repeat(20000));
    res.end(event(toolResult(call.id)));
  },
  // The longest id accepted, then tiny events up to ~90 % of max_response_bytes: per-event overhead.
  tiny_events(res, call, { maxBytes }) {
    res.writeHead(200, sseHead);
    res.write(`id: ${'i'.repeat(1000)}\n`);
    const chunk = 'data\n\n'.repeat(10000);
    for (let sent = 0; sent < maxBytes * 0.9; sent += chunk.length) res.write(chunk);
    res.end(event(toolResult(call.id)));
  },
  // Comments and retry: fields (including megabyte-long ones) up to ~90 % of max_response_bytes, then the answer.
  comments(res, call, { maxBytes }) {
    res.writeHead(200, sseHead);
    res.write(`: ${'c'.repeat(Math.floor(maxBytes * 0.4))}\n`);
    res.write(`retry: ${'9'.repeat(Math.floor(maxBytes * 0.2))}\n`);
    const chunk = `: ${'k'.repeat(60)}\nretry: 99999999999999\nx-unknown: ${'u'.repeat(60)}\n`.repeat(500);
    for (let sent = maxBytes * 0.6; sent < maxBytes * 0.9; sent += chunk.length) res.write(chunk);
    res.end(event(toolResult(call.id)));
  },
  // A stream that closes before the answer, each time after ~60 % of max_response_bytes of notifications, with an
  // id and retry: 10: 0.2.0 resumed it with GET + Last-Event-ID and a fresh budget every time, until the deadline.
  resume(res, call, ctx) {
    ctx.stats.resume_bytes[ctx.runId] ??= 0;
    const note = { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'n'.repeat(60000) } };
    const burst = (n, out) => {
      out.writeHead(200, sseHead);
      let sent = 0;
      for (let i = 0; sent < ctx.maxBytes * 0.6; i++) {
        const text = `id: ${ctx.runId}:${n}:${i}\nretry: 10\n${event(note)}`;
        out.write(text);
        sent += text.length;
      }
      ctx.stats.resume_bytes[ctx.runId] += sent;
      out.end();
    };
    ctx.resumeWith = burst;
    burst(0, res);
  },
  // 1,000 server requests on the call's stream before the answer; every answer the worker POSTs is answered with
  // a stream holding another request (0.2.0 answered those too: a storm that outlived the run).
  requests(res, call, ctx) {
    res.writeHead(200, sseHead);
    for (let i = 0; i < 1000; i++) res.write(event({ jsonrpc: '2.0', id: `srv-${ctx.runId}-${i}`, method: 'ping' }));
    ctx.stats.call_streams_ended[ctx.runId] = true;
    res.end(event(toolResult(call.id)));
  },
  // 503 with Retry-After at the end of time: 0.2.0 parked the run until 9999-12-31.
  retry_after(res) {
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': 'Fri, 31 Dec 9999 23:59:59 GMT' });
    res.end('{"error":"come back later"}');
  },
  // Progress notifications with 100,000-character messages, rising, every 200 ms, then the same one repeated: 0.2.0 wrote each
  // message whole, about once a second.
  progress(res, call, ctx) {
    res.writeHead(200, sseHead);
    const token = call.params?._meta?.progressToken;
    const steps = Math.floor((ctx.maxBytes * 0.8) / 125000);
    let i = 0;
    const tick = () => {
      if (res.destroyed) return;
      if (i < steps + 5) {
        const k = Math.min(i, steps);
        res.write(event({ jsonrpc: '2.0', method: 'notifications/progress',
          params: { progressToken: token, progress: k + 1, total: steps + 2, message: i >= steps ? 'steady' : incompressible(100000) } }));
        i++;
        return ctx.later(200, tick);
      }
      res.end(event(toolResult(call.id)));
    };
    tick();
  },
  // Headers of megabytes: 200 of 20 KB each.
  headers(res, call) {
    const headers = { 'content-type': 'application/json' };
    for (let i = 0; i < 200; i++) headers[`x-junk-${i}`] = 'h'.repeat(20000);
    res.writeHead(200, headers);
    res.end(JSON.stringify(toolResult(call.id)));
  },
  // A task whose id is 70 % of max_response_bytes (megabytes at the default): 0.2.0 stored it in the run and sent it
  // back with every poll.
  task_id(res, call, ctx) {
    const task = { taskId: 't'.repeat(Math.floor(ctx.maxBytes * 0.7)), status: 'working', ttl: 600000, pollInterval: 200,
      createdAt: new Date().toISOString() };
    const text = JSON.stringify({ jsonrpc: '2.0', id: call.id, result: { task, content: [] } });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(text);
  },
  // An SSE stream that never ends and never answers but trickles a byte of comment every 100 ms: only the call's
  // deadline ends it.
  endless(res, call, ctx) {
    res.writeHead(200, sseHead);
    const tick = () => {
      if (res.destroyed) return;
      res.write(':\n');
      ctx.later(100, tick);
    };
    tick();
  },
};

export const ATTACK_NAMES = Object.keys(ATTACKS);

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * Starts the server on 127.0.0.1 and a free port. maxBytes: the worker's max_response_bytes, which the attacks
 * size themselves by. Resolves to { url, stats, close() }.
 */
export async function startHostileServer({ maxBytes = 2 << 20 } = {}) {
  const stats = {
    calls: {}, replies: 0, replies_by_run: {}, replies_to_replies: 0, resume_gets: {}, resume_bytes: {},
    call_streams_ended: {}, task_polls: 0, polled_task_id_bytes: 0,
  };
  const sockets = new Set();
  const timers = new Set();
  const resumers = new Map(); // run id -> burst(n) of the resume attack
  const later = (ms, fn) => {
    const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
    timers.add(t);
  };

  const server = http.createServer(async (req, res) => {
    res.on('error', () => {});
    const body = await readBody(req).catch(() => '');
    if (req.method === 'DELETE') return res.writeHead(200).end();
    if (req.method === 'GET') {
      // Resumption of the resume attack's stream: Last-Event-ID is "<run id>:<burst>:<event>".
      const last = String(req.headers['last-event-id'] ?? '');
      const runId = last.split(':')[0];
      const burst = resumers.get(runId);
      stats.resume_gets[runId] = (stats.resume_gets[runId] ?? 0) + 1;
      if (!burst) return res.writeHead(405).end();
      return burst(stats.resume_gets[runId], res);
    }
    let message;
    try {
      message = JSON.parse(body);
    } catch {
      return res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"not json"}');
    }
    if (!message.method) {
      // A JSON-RPC response of the worker to one of our requests. Answered with a stream holding yet another
      // request: a client that answers on any stream keeps this going for ever.
      stats.replies++;
      const runId = String(message.id ?? '').split('-').slice(1, -1).join('-');
      stats.replies_by_run[runId] = (stats.replies_by_run[runId] ?? 0) + 1;
      if (String(message.id ?? '').startsWith('storm-')) stats.replies_to_replies++;
      res.writeHead(200, sseHead);
      return res.end(event({ jsonrpc: '2.0', id: `storm-${runId}-${stats.replies}`, method: 'ping' }));
    }
    switch (message.method) {
      case 'server/discover':
        return res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"unknown method"}');
      case 'initialize':
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: {
          protocolVersion: message.params?.protocolVersion ?? '2025-11-25',
          capabilities: { tools: {}, tasks: { requests: { tools: { call: {} } } } },
          serverInfo: { name: 'hostile', version: '0' } } }));
      case 'tools/list':
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: { tools: [{ name: 'run_diagnosis',
          inputSchema: { type: 'object' }, execution: { taskSupport: 'optional' } }] } }));
      case 'tasks/get': case 'tasks/result': case 'tasks/cancel':
        stats.task_polls++;
        stats.polled_task_id_bytes += String(message.params?.taskId ?? '').length;
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: {
          taskId: message.params?.taskId, status: 'working', ttl: 600000, pollInterval: 200, createdAt: new Date().toISOString() } }));
      case 'tools/call': {
        const args = message.params?.arguments ?? {};
        const runId = String(args.run_id ?? '');
        stats.calls[runId] = (stats.calls[runId] ?? 0) + 1;
        const attack = ATTACKS[args.inputs?.attack];
        if (!attack) {
          res.writeHead(200, { 'content-type': 'application/json' });
          return res.end(JSON.stringify(toolResult(message.id)));
        }
        const ctx = { stats, later, maxBytes, runId, resumeWith: null };
        attack(res, message, ctx);
        if (ctx.resumeWith) resumers.set(runId, ctx.resumeWith);
        return undefined;
      }
      default:
        if (message.method.startsWith('notifications/')) return res.writeHead(202).end();
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, error: { code: -32601, message: 'Method not found' } }));
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    stats,
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
