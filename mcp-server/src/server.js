// The reference MCP server of pg_diagnosis: Streamable HTTP on the official SDK's v2 packages, one tool
// `run_diagnosis` computing NEWS2, serving both protocol eras at one endpoint (2026-07-28 per-request, and the
// initialize-handshake revisions with or without sessions), with tasks, SSE polling, modes and injected faults
// for tests and benchmarks. See README.md for flags.
//
// A request goes: Host/Origin check, bearer token, body parse, /stats bookkeeping, injected fault (if any), then
// by era to the SDK: the modern leg is createMcpHandler (stateless by design), the legacy leg the SDK's
// Streamable HTTP transport, per request (stateless) or per session (stateful).
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { createMcpHandler, isLegacyRequest, CLIENT_CAPABILITIES_META_KEY } from '@modelcontextprotocol/server';
import { NodeStreamableHTTPServerTransport, toNodeHandler, toWebRequest } from '@modelcontextprotocol/node';
import { parseSettings, RUNTIME_SETTINGS } from './settings.js';
import { chooseFault, injectFault, plain, TASK_FAULTS } from './faults.js';
import { buildServer, TASKS_EXTENSION } from './tool.js';
import { TaskStore } from './tasks.js';
import { missingCapabilities, MISSING_CAPABILITY } from './fixtures.js';
import { EventStore } from './events.js';
import { allowList, rejection } from './safety.js';

export { parseSettings, FAULT_KINDS } from './settings.js';
export { callId } from './tool.js';

function freshStats() {
  return {
    calls: {}, total_calls: 0, initialize: 0, discover: 0, faults: {}, sessions_expired: 0,
    eras: { modern: 0, legacy: 0 }, traces: {},
    tasks_created: 0, task_polls: {}, total_task_polls: 0, early_polls: {}, task_results: {}, cancellations: {}, total_cancellations: 0,
    cancel_notifications: 0, streams_closed: 0, resumptions: 0, sessions_deleted: 0,
  };
}

/** The JSON-RPC error body (no id) the transport page allows on HTTP-level refusals. */
function refuse(res, status, message, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const isJson = (req) => /^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '');
const bump = (map, key, by = 1) => { map[key] = (map[key] ?? 0) + by; };

/** Starts the server; resolves to { url, port, close(), stats, settings, store }. */
export async function startServer(settings) {
  const stats = freshStats();
  const store = new TaskStore(settings.task_dir);
  const events = settings.sse_polling ? new EventStore() : null;
  const sessions = new Map(); // id -> { transport, server, calls, started }
  const taskFaults = new Map(); // `${run_id}:${attempt}` -> fault kind, for task-backed calls
  const openSockets = new Set();
  const timers = new Set();
  let allowed = null; // filled in once the port is known

  const later = (ms, fn) => {
    const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
    timers.add(t);
  };

  /** The hooks the MCP surface reports to /stats through. */
  const record = {
    taskCreated: () => { stats.tasks_created++; },
    poll: (task) => {
      bump(stats.task_polls, task.runId);
      stats.total_task_polls++;
      // A poll sooner than the task's pollIntervalMs (10 % slack for timers) shows a client not honouring it.
      const now = Date.now();
      if (task.lastPollMs !== undefined && now - task.lastPollMs < task.pollIntervalMs * 0.9) bump(stats.early_polls, task.runId);
      task.lastPollMs = now;
    },
    result: (task) => { bump(stats.task_results, task.runId); },
    cancelled: (runId, how) => {
      stats.cancellations[runId] ??= {};
      bump(stats.cancellations[runId], how);
      stats.total_cancellations++;
    },
    streamClosed: () => { stats.streams_closed++; },
    call: countCall,
    // A result-level fault chosen at the edge for a task-backed call, handed to the task it creates.
    takeTaskFault: (runId, attempt) => {
      const key = `${runId}:${attempt}`;
      const kind = taskFaults.get(key);
      taskFaults.delete(key);
      return kind;
    },
  };
  const surface = { settings, store, record };

  // The modern leg: one handler per reply mode, made on first use and chosen per request, so that
  // POST /config {reply} applies at once.
  const modern = {};
  const modernLeg = (reply) => {
    if (!modern[reply]) {
      const handler = createMcpHandler(() => buildServer('modern', surface), { legacy: 'reject', responseMode: reply });
      modern[reply] = { handler, node: toNodeHandler(handler) };
    }
    return modern[reply];
  };

  /**
   * Counts one tools/call (per run id and attempt, per era) with the trace context it carried: where the tool ran
   * (record.call), or at the edge for a call a fault answered. A request the SDK refused (a bad header, an
   * unserved protocol version) ran nothing and is not a call.
   */
  function countCall(args = {}, era, trace) {
    const runId = String(args.run_id ?? 'unknown');
    const attempt = String(args.attempt ?? 'unknown');
    stats.calls[runId] ??= {};
    bump(stats.calls[runId], attempt);
    stats.total_calls++;
    stats.eras[era]++;
    (stats.traces[runId] ??= []).push({ attempt: args.attempt ?? null, header: trace.header ?? null, meta: trace.meta ?? null,
      tracestate: trace.tracestate ?? null });
  }

  async function control(req, res) {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'GET' && url.pathname === '/healthz') return plain(res, 200, 'ok');
    if (req.method === 'GET' && url.pathname === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ ...stats, tasks_in_store: store.size, sessions_open: sessions.size }));
    }
    const writable = ['/stats/reset', '/config'].includes(url.pathname);
    if (!writable) return plain(res, 404, 'not found');
    if (req.method !== 'POST') return plain(res, 405, 'POST only', { allow: 'POST' });
    // A cross-origin form or fetch without a preflight cannot send application/json: requiring it keeps web pages
    // out even where a browser omits Origin.
    if (!isJson(req)) return plain(res, 415, 'Content-Type must be application/json');
    let update;
    try {
      update = JSON.parse((await readBody(req)) || '{}');
    } catch {
      return plain(res, 400, 'body is not JSON');
    }
    if (url.pathname === '/stats/reset') {
      Object.assign(stats, freshStats());
      return plain(res, 200, 'reset');
    }
    if ('reply' in update && !['sse', 'json'].includes(update.reply)) return plain(res, 400, 'reply must be sse or json');
    for (const key of RUNTIME_SETTINGS) if (key in update) settings[key] = update[key];
    return plain(res, 200, 'configured');
  }

  /** The era a request is served in: the flag decides outside dual mode; in it, the SDK's own classifier. */
  async function eraOf(req, body) {
    if (settings.era !== 'dual') return settings.era;
    if (req.method !== 'POST') return 'legacy';
    return (await isLegacyRequest(await toWebRequest(req, body), body)) ? 'legacy' : 'modern';
  }

  /** The legacy session a request names: { session } or { status, message } (400 none given, 404 unknown). */
  function sessionFor(req, call) {
    const id = req.headers['mcp-session-id'];
    if (!id) return { status: 400, message: 'Bad Request: Mcp-Session-Id header is required' };
    const session = sessions.get(id);
    if (!session) return { status: 404, message: 'Session not found' };
    const expiredByTime = settings.session_expiry_seconds > 0 &&
      Date.now() - session.started > settings.session_expiry_seconds * 1000;
    if (expiredByTime || (call && settings.session_expiry_calls > 0 && session.calls >= settings.session_expiry_calls)) {
      sessions.delete(id);
      session.transport.close().catch(() => {});
      stats.sessions_expired++;
      return { status: 404, message: 'Session expired' };
    }
    return { session, id };
  }

  function newSession() {
    const server = buildServer('legacy', surface);
    const transport = new NodeStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: settings.reply === 'json',
      eventStore: events ?? undefined,
      retryInterval: events ? settings.sse_retry_ms : undefined,
      onsessioninitialized: (id) => sessions.set(id, { transport, server, calls: 0, started: Date.now() }),
      onsessionclosed: (id) => {
        sessions.delete(id);
        stats.sessions_deleted++;
      },
    });
    return { server, transport };
  }

  async function serveLegacy(req, res, body, messages, call) {
    const isInitialize = messages.some((m) => m?.method === 'initialize');
    if (settings.mode === 'stateless') {
      if (req.method !== 'POST') return refuse(res, 405, 'Method not allowed: this endpoint keeps no sessions', { allow: 'POST' });
      if (call && (await faulted(req, res, call, 'legacy'))) return undefined;
      const server = buildServer('legacy', surface);
      const transport = new NodeStreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: settings.reply === 'json' });
      res.on('close', () => { transport.close(); server.close(); });
      await server.connect(transport);
      return transport.handleRequest(req, res, body);
    }
    if (req.method === 'POST' && isInitialize) {
      const { server, transport } = newSession();
      await server.connect(transport);
      return transport.handleRequest(req, res, body);
    }
    const found = sessionFor(req, call);
    if (!found.session) return refuse(res, found.status, found.message);
    if (req.method === 'GET' && req.headers['last-event-id']) stats.resumptions++;
    if (call) {
      found.session.calls++;
      const expire = () => {
        if (sessions.delete(found.id)) {
          found.session.transport.close().catch(() => {});
          stats.sessions_expired++;
        }
      };
      if (await faulted(req, res, call, 'legacy', expire)) return undefined;
    }
    return found.session.transport.handleRequest(req, res, body);
  }

  /**
   * Injects a fault when one is due (and counts the call); true when the fault answered the request. A result-level
   * fault on a task-backed call is left to the task instead: the call gets its task, the task ends in the fault.
   */
  async function faulted(req, res, call, era, expireSession = () => {}) {
    const fault = chooseFault(settings, call);
    if (!fault) return false;
    bump(stats.faults, fault);
    const args = call.params?.arguments ?? {};
    if (TASK_FAULTS.includes(fault) && asksForTask(call, era)) {
      taskFaults.set(`${args.run_id}:${args.attempt}`, fault);
      return false;
    }
    const meta = call.params?._meta ?? {};
    countCall(args, era, { header: req.headers.traceparent, meta: meta.traceparent,
      tracestate: req.headers.tracestate ?? meta.tracestate });
    injectFault(fault, res, call, { settings, later, expireSession });
    return true;
  }

  /**
   * A 2026-07-28 fixture call the client's declared capabilities cannot serve: answered here, before dispatch, with
   * -32021 and HTTP 400 as that wire asks (the SDK does the same for methods that need a capability). True when
   * refused.
   */
  function refuseUndeclared(res, call) {
    const declared = call.params?._meta?.[CLIENT_CAPABILITIES_META_KEY];
    const missing = missingCapabilities(call.params?.name, declared, { tasks: settings.tasks, extension: TASKS_EXTENSION });
    if (!missing) return false;
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', id: call.id ?? null, error: { code: MISSING_CAPABILITY,
      message: 'Missing required client capability', data: { requiredCapabilities: missing } } }));
    return true;
  }

  /** Whether the tool will answer this call with a task (tasks on, and the client asked as its era does). */
  function asksForTask(call, era) {
    if (!settings.tasks) return false;
    if (era === 'legacy') return call.params?.task !== undefined;
    return Boolean(call.params?._meta?.[CLIENT_CAPABILITIES_META_KEY]?.extensions?.[TASKS_EXTENSION]);
  }

  async function handleMcp(req, res) {
    if (settings.auth_token && req.headers.authorization !== `Bearer ${settings.auth_token}`) {
      return plain(res, 401, 'missing or wrong bearer token');
    }
    let body;
    let messages = [];
    if (req.method === 'POST') {
      const text = await readBody(req);
      try {
        body = JSON.parse(text);
      } catch {
        return refuse(res, 400, 'Parse error: request body is not JSON');
      }
      messages = Array.isArray(body) ? body : [body];
    }
    for (const m of messages) {
      if (m?.method === 'initialize') stats.initialize++;
      if (m?.method === 'server/discover') stats.discover++;
      if (m?.method === 'notifications/cancelled') stats.cancel_notifications++;
    }
    const call = messages.find((m) => m?.method === 'tools/call');
    const era = await eraOf(req, body);
    if (era === 'legacy') return serveLegacy(req, res, body, messages, call);
    if (req.method !== 'POST') return refuse(res, 405, 'Method not allowed', { allow: 'POST' });
    if (call && settings.conformance_fixtures && refuseUndeclared(res, call)) return undefined;
    if (call && (await faulted(req, res, call, 'modern'))) return undefined;
    return modernLeg(settings.reply).node(req, res, body);
  }

  const httpServer = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    (async () => {
      const refused = rejection(req, allowed);
      if (refused) return refuse(res, 403, `Forbidden: ${refused}`);
      if (path === settings.path) return handleMcp(req, res);
      return control(req, res);
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
  allowed = allowList(settings, port);
  const sweeper = setInterval(() => store.sweep(), 1000);
  sweeper.unref();
  const hostInUrl = settings.host.includes(':') ? `[${settings.host}]` : settings.host;
  return {
    port,
    url: `http://${hostInUrl}:${port}${settings.path}`,
    stats,
    settings,
    store,
    async close() {
      clearInterval(sweeper);
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sessions.values()) await s.transport.close().catch(() => {});
      sessions.clear();
      for (const { handler } of Object.values(modern)) await handler.close().catch(() => {});
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
