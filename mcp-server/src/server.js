// The reference MCP server of pg_diagnosis: Streamable HTTP on the official SDK, one tool `run_diagnosis`
// computing NEWS2, with modes and injected faults for tests and benchmarks. See README.md for flags.
import http from 'node:http';
import { createHash, randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import { diagnose } from './news2.js';

export const FAULT_KINDS = [
  'http_500', 'http_502', 'http_503', 'http_429', 'http_400', 'http_401', 'http_404_session', 'session_expiry',
  'hang', 'drop', 'is_error', 'invalid_result', 'jsonrpc_error', 'malformed_json', 'wrong_id', 'truncated_sse',
  'huge_line', 'non_utf8', 'slowloris',
];

const OPTIONS = {
  host: ['MCP_HOST', '127.0.0.1'], port: ['MCP_PORT', '0'], path: ['MCP_PATH', '/mcp'], mode: ['MCP_MODE', 'stateful'],
  reply: ['MCP_REPLY', 'sse'], 'latency-ms': ['MCP_LATENCY_MS', '0'],
  'session-expiry-calls': ['MCP_SESSION_EXPIRY_CALLS', '0'], 'session-expiry-seconds': ['MCP_SESSION_EXPIRY_SECONDS', '0'],
  'fault-rate': ['MCP_FAULT_RATE', '0'], 'fault-kinds': ['MCP_FAULT_KINDS', ''], 'retry-after': ['MCP_RETRY_AFTER', ''],
  'hang-ms': ['MCP_HANG_MS', '0'], 'auth-token': ['MCP_AUTH_TOKEN', ''],
};

/** Settings from flags, then environment, then defaults. */
export function parseSettings(argv = [], env = process.env) {
  const raw = {};
  for (const [name, [variable, fallback]] of Object.entries(OPTIONS)) raw[name] = env[variable] ?? fallback;
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in OPTIONS)) throw new Error(`unknown option ${argv[i]}`);
    raw[name] = argv[++i];
  }
  if (!['stateless', 'stateful'].includes(raw.mode)) throw new Error(`--mode must be stateless or stateful`);
  if (!['sse', 'json'].includes(raw.reply)) throw new Error(`--reply must be sse or json`);
  const kinds = raw['fault-kinds'] ? raw['fault-kinds'].split(',').map((k) => k.trim()).filter(Boolean)
    : FAULT_KINDS.filter((k) => k !== 'hang' && k !== 'slowloris');
  for (const k of kinds) if (!FAULT_KINDS.includes(k)) throw new Error(`unknown fault kind ${k}`);
  return {
    host: raw.host, port: Number(raw.port), path: raw.path, mode: raw.mode, reply: raw.reply,
    latency_ms: Number(raw['latency-ms']), session_expiry_calls: Number(raw['session-expiry-calls']),
    session_expiry_seconds: Number(raw['session-expiry-seconds']), fault_rate: Number(raw['fault-rate']),
    fault_kinds: kinds, retry_after: raw['retry-after'] === '' ? null : Number(raw['retry-after']),
    hang_ms: Number(raw['hang-ms']), auth_token: raw['auth-token'],
  };
}

const RESULT_SHAPE = {
  risk_level: z.enum(['low', 'medium', 'high', 'critical']),
  confidence_score: z.number().min(0).max(1),
  summary: z.string().max(4000),
  primary_findings: z.array(z.string()).max(50),
  recommendations: z.array(z.object({ text: z.string(), priority: z.enum(['routine', 'soon', 'urgent']).optional() })).max(50),
  differential: z.array(z.object({ condition: z.string(), probability: z.number().min(0).max(1).optional() })).optional(),
  // The scores behind the result (news2.js), an extra property that schema v1 allows: SDK clients check
  // structuredContent against this shape, which refuses properties it does not name.
  news2: z.record(z.string(), z.any()).optional(),
};

const INPUT_SHAPE = {
  run_id: z.string(), patient_id: z.string(), attempt: z.number().int(), schema_version: z.string(),
  inputs: z.record(z.string(), z.any()), context_pack: z.record(z.string(), z.any()),
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The server's own id for a call: deterministic, so a retried call gets the same id. */
export function callId(runId, attempt) {
  return 'mcp-' + createHash('sha256').update(`${runId}:${attempt}`).digest('hex').slice(0, 16);
}

function buildMcpServer(settings) {
  const server = new McpServer({ name: 'pg-diagnosis-reference', version: '0.1.0' });
  server.registerTool('run_diagnosis', {
    title: 'NEWS2 diagnosis',
    description: 'Computes the NEWS2 early-warning score from the latest vital signs in a pg_diagnosis context pack.',
    inputSchema: INPUT_SHAPE,
    outputSchema: RESULT_SHAPE,
  }, async (args, extra) => {
    const token = extra?._meta?.progressToken;
    const steps = ['reading observations', 'scoring respiration rate and SpO2', 'scoring blood pressure and pulse',
      'scoring consciousness and temperature', 'building recommendations'];
    const pause = settings.latency_ms > 0 ? settings.latency_ms / steps.length : 0;
    for (let i = 0; i < steps.length; i++) {
      if (token !== undefined) {
        await extra.sendNotification({ method: 'notifications/progress',
          params: { progressToken: token, progress: i, total: steps.length, message: steps[i] } });
      }
      if (pause) await sleep(pause);
    }
    const result = diagnose(args.context_pack);
    return {
      content: [{ type: 'text', text: JSON.stringify(result) }],
      structuredContent: result,
      _meta: { run_id: callId(args.run_id, args.attempt) },
    };
  });
  return server;
}

/** Starts the server; resolves to { url, port, close(), stats, settings }. */
export async function startServer(settings) {
  const stats = { calls: {}, total_calls: 0, initialize: 0, faults: {}, sessions_expired: 0 };
  const sessions = new Map(); // id -> { transport, server, calls, started }
  const openSockets = new Set();
  const timers = new Set();

  const later = (ms, fn) => {
    const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
    timers.add(t);
  };

  function writeMessage(res, message, status = 200) {
    if (settings.reply === 'sse') {
      res.writeHead(status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.end(`event: message\ndata: ${JSON.stringify(message)}\n\n`);
    } else {
      const text = JSON.stringify(message);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    }
  }

  function plain(res, status, text, headers = {}) {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify({ error: text }));
  }

  /** The fault to inject for this tools/call, or null. */
  function chooseFault(call) {
    const inputs = call?.params?.arguments?.inputs ?? {};
    const attempt = Number(call?.params?.arguments?.attempt ?? 1);
    if (typeof inputs.fault === 'string' && FAULT_KINDS.includes(inputs.fault)) {
      const limit = inputs.fault_attempts;
      if (limit === undefined || attempt <= Number(limit)) return inputs.fault;
    }
    if (settings.fault_rate > 0 && settings.fault_kinds.length && Math.random() < settings.fault_rate) {
      return settings.fault_kinds[Math.floor(Math.random() * settings.fault_kinds.length)];
    }
    return null;
  }

  function injectFault(kind, req, res, call, sessionId) {
    stats.faults[kind] = (stats.faults[kind] ?? 0) + 1;
    const id = call.id;
    const inputs = call.params?.arguments?.inputs ?? {};
    const retryAfter = inputs.retry_after ?? settings.retry_after;
    switch (kind) {
      case 'http_500': case 'http_502': case 'http_503': {
        const headers = kind === 'http_503' && retryAfter != null ? { 'retry-after': String(retryAfter) } : {};
        return plain(res, Number(kind.slice(5)), 'injected fault', headers);
      }
      case 'http_429':
        return plain(res, 429, 'too many requests', { 'retry-after': String(retryAfter ?? 1) });
      case 'http_400': return plain(res, 400, 'bad request');
      case 'http_401': return plain(res, 401, 'unauthorized');
      case 'http_404_session': case 'session_expiry':
        if (sessionId && sessions.has(sessionId)) {
          sessions.delete(sessionId);
          stats.sessions_expired++;
        }
        return plain(res, 404, 'session not found');
      case 'hang':
        if (settings.hang_ms > 0) later(settings.hang_ms, () => { if (!res.writableEnded) plain(res, 503, 'hung'); });
        return undefined;
      case 'drop':
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
        res.write(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"content":[`);
        return later(20, () => res.socket?.destroy());
      case 'is_error':
        return writeMessage(res, { jsonrpc: '2.0', id, result: {
          content: [{ type: 'text', text: 'injected model failure: the model could not produce a diagnosis' }], isError: true } });
      case 'invalid_result': {
        const bad = { risk_level: 'purple', confidence_score: 1.7, summary: 'schema-invalid by design', primary_findings: [], recommendations: [] };
        return writeMessage(res, { jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: JSON.stringify(bad) }], structuredContent: bad } });
      }
      case 'jsonrpc_error':
        return writeMessage(res, { jsonrpc: '2.0', id, error: { code: -32603, message: 'injected internal error' } });
      case 'malformed_json':
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end('{"jsonrpc":"2.0","id":' + JSON.stringify(id) + ',"result":{not json');
      case 'wrong_id':
        return writeMessage(res, { jsonrpc: '2.0', id: 'not-your-request', result: { content: [] } });
      case 'truncated_sse':
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        return res.end(`event: message\ndata: {"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"con`);
      case 'huge_line': {
        const size = Number(inputs.fault_bytes ?? 4 * 1024 * 1024);
        const result = diagnose(call.params?.arguments?.context_pack);
        result.summary = 'x'.repeat(size);
        return writeMessage(res, { jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'see structuredContent' }], structuredContent: result } });
      }
      case 'non_utf8': {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(Buffer.concat([
          Buffer.from(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"content":[{"type":"text","text":"`),
          Buffer.from([0xc3, 0x28, 0xff, 0xfe]), Buffer.from('"}]}}')]));
      }
      case 'slowloris': {
        const body = JSON.stringify({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'slow' }] } });
        res.writeHead(200, { 'content-type': 'application/json' });
        let i = 0;
        const drip = () => {
          if (res.writableEnded || res.destroyed) return;
          if (i >= body.length) return res.end();
          res.write(body[i++]);
          later(500, drip);
        };
        return drip();
      }
      default:
        return plain(res, 500, `unknown fault ${kind}`);
    }
  }

  function countCall(call) {
    const args = call?.params?.arguments ?? {};
    const runId = String(args.run_id ?? 'unknown');
    const attempt = String(args.attempt ?? 'unknown');
    stats.calls[runId] ??= {};
    stats.calls[runId][attempt] = (stats.calls[runId][attempt] ?? 0) + 1;
    stats.total_calls++;
  }

  function readBody(req) {
    return new Promise((resolve, reject) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      req.on('error', reject);
    });
  }

  async function control(req, res) {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'GET' && url.pathname === '/healthz') return plain(res, 200, 'ok');
    if (req.method === 'GET' && url.pathname === '/stats') {
      const text = JSON.stringify(stats);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(text);
    }
    if (req.method === 'POST' && url.pathname === '/stats/reset') {
      Object.assign(stats, { calls: {}, total_calls: 0, initialize: 0, faults: {}, sessions_expired: 0 });
      return plain(res, 200, 'reset');
    }
    if (req.method === 'POST' && url.pathname === '/config') {
      const update = JSON.parse((await readBody(req)) || '{}');
      for (const key of ['fault_rate', 'fault_kinds', 'latency_ms', 'reply', 'retry_after', 'session_expiry_calls', 'hang_ms']) {
        if (key in update) settings[key] = update[key];
      }
      return plain(res, 200, 'configured');
    }
    return false;
  }

  async function handleMcp(req, res) {
    if (settings.auth_token && req.headers.authorization !== `Bearer ${settings.auth_token}`) {
      return plain(res, 401, 'missing or wrong bearer token');
    }
    if (req.method !== 'POST') {
      // No standalone server-to-client stream: the spec allows 405 for GET.
      if (req.method === 'DELETE' && settings.mode === 'stateful') {
        sessions.delete(req.headers['mcp-session-id']);
        return plain(res, 200, 'session closed');
      }
      return plain(res, 405, 'POST only');
    }
    const text = await readBody(req);
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      return plain(res, 400, 'request body is not JSON');
    }
    const messages = Array.isArray(body) ? body : [body];
    const isInitialize = messages.some((m) => m?.method === 'initialize');
    if (isInitialize) stats.initialize++;
    const call = messages.find((m) => m?.method === 'tools/call');
    const sessionId = req.headers['mcp-session-id'];

    let session = null;
    if (settings.mode === 'stateful' && !isInitialize) {
      session = sessions.get(sessionId);
      if (!session) return plain(res, 404, 'session not found');
      const expiredByTime = settings.session_expiry_seconds > 0 &&
        Date.now() - session.started > settings.session_expiry_seconds * 1000;
      if (expiredByTime || (call && settings.session_expiry_calls > 0 && session.calls >= settings.session_expiry_calls)) {
        sessions.delete(sessionId);
        stats.sessions_expired++;
        return plain(res, 404, 'session expired');
      }
    }
    if (call) {
      countCall(call);
      if (session) session.calls++;
      const fault = chooseFault(call);
      if (fault) return injectFault(fault, req, res, call, sessionId);
    }

    if (settings.mode === 'stateless') {
      const server = buildMcpServer(settings);
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: settings.reply === 'json' });
      res.on('close', () => { transport.close(); server.close(); });
      await server.connect(transport);
      return transport.handleRequest(req, res, body);
    }
    if (isInitialize) {
      const server = buildMcpServer(settings);
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: settings.reply === 'json',
        onsessioninitialized: (id) => sessions.set(id, { transport, server, calls: 0, started: Date.now() }),
      });
      await server.connect(transport);
      return transport.handleRequest(req, res, body);
    }
    return session.transport.handleRequest(req, res, body);
  }

  const httpServer = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    (async () => {
      if (path === settings.path) return handleMcp(req, res);
      if ((await control(req, res)) === false) plain(res, 404, 'not found');
    })().catch((error) => {
      if (!res.headersSent) plain(res, 500, String(error?.message ?? error));
      else res.destroy();
    });
  });
  httpServer.keepAliveTimeout = 60000;
  httpServer.on('connection', (socket) => {
    openSockets.add(socket);
    socket.on('close', () => openSockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(settings.port, settings.host, resolve);
  });
  const port = httpServer.address().port;
  return {
    port,
    url: `http://${settings.host}:${port}${settings.path}`,
    stats,
    settings,
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sessions.values()) await s.transport.close().catch(() => {});
      sessions.clear();
      for (const socket of openSockets) socket.destroy();
      await new Promise((resolve) => httpServer.close(resolve));
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  let settings;
  try {
    settings = parseSettings(process.argv.slice(2));
  } catch (error) {
    console.error(error.message);
    process.exit(2);
  }
  const running = await startServer(settings);
  console.log(`MCP_URL=${running.url}`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await running.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
