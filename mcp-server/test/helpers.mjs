// Shared by the reference server's suites: a server per test on 127.0.0.1:0 (closed even when the test fails),
// the official v2 client in either era, and raw JSON-RPC POSTs shaped as pg_diagnosis's worker sends them.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { startServer, parseSettings } from '../src/server.js';

export const PACK = { observations: [
  { code: '9279-1', value: 26, observed_at: '2026-11-24T10:00:00Z' },
  { code: 'spo2', value: 91, observed_at: '2026-11-24T10:00:00Z' },
  { code: 'heart_rate', value: 112, observed_at: '2026-11-24T10:00:00Z' },
] };

export const ARGS = (inputs = {}, attempt = 1, runId = 'run-1') => ({
  run_id: runId, patient_id: 'p-1', attempt, schema_version: 'v1', inputs, context_pack: PACK,
});

export const MODERN = '2026-07-28';
export const TASKS_EXTENSION = 'io.modelcontextprotocol/tasks';
export const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function withServer(flags, fn) {
  const server = await startServer(parseSettings(flags, {}));
  try {
    return await fn(server);
  } finally {
    await server.close();
  }
}

/** The official v2 client: `era` 'modern' negotiates with server/discover ('auto'), 'legacy' runs initialize. */
export async function withClient(server, era, fn, options = {}) {
  const client = new Client({ name: 'test', version: '1.0.0' },
    { versionNegotiation: { mode: era === 'modern' ? 'auto' : 'legacy' }, ...options });
  const transport = new StreamableHTTPClientTransport(new URL(server.url));
  await client.connect(transport);
  try {
    return await fn(client, transport);
  } finally {
    await client.close();
  }
}

/** A JSON-RPC body from a reply that is either one JSON object or an SSE stream (the last message event). */
export function parseReply(text) {
  if (text.trimStart().startsWith('{')) return JSON.parse(text);
  const data = text.split('\n').filter((line) => line.startsWith('data: ') && line.length > 6);
  return JSON.parse(data.at(-1).slice(6));
}

export function origin(server) {
  return new URL(server.url).origin;
}

/** A raw legacy-era tools/call POST, as pg_diagnosis sends it (no session: for stateless servers or faults). */
export async function rawCall(server, args, headers = {}) {
  const body = { jsonrpc: '2.0', id: `${args.run_id}:${args.attempt}`, method: 'tools/call',
    params: { name: 'run_diagnosis', arguments: args } };
  return fetch(server.url, { method: 'POST', body: JSON.stringify(body), headers: {
    'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers } });
}

let nextId = 0;

/**
 * A raw 2026-07-28 request: the per-request _meta envelope plus MCP-Protocol-Version, Mcp-Method and Mcp-Name.
 * `capabilities` are the client's (default: the tasks extension). Resolves to { status, message, response }.
 */
export async function modernRequest(server, method, params = {}, { capabilities = { extensions: { [TASKS_EXTENSION]: {} } },
  headers = {}, meta = {}, signal } = {}) {
  const body = { jsonrpc: '2.0', id: ++nextId, method, params: { ...params, _meta: {
    'io.modelcontextprotocol/protocolVersion': MODERN,
    'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
    'io.modelcontextprotocol/clientCapabilities': capabilities, ...meta } } };
  const name = params.name ?? params.taskId;
  const response = await fetch(server.url, { method: 'POST', body: JSON.stringify(body), signal, headers: {
    'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': MODERN,
    'mcp-method': method, ...(name ? { 'mcp-name': name } : {}), ...headers } });
  const text = await response.text();
  return { status: response.status, message: text ? parseReply(text) : null, response };
}

/** A legacy session opened by hand (initialize + initialized); returns { id, request(method, params) }. */
export async function legacySession(server, version = '2025-11-25', { capabilities = {} } = {}) {
  const post = (body, sessionId) => fetch(server.url, { method: 'POST', body: JSON.stringify(body), headers: {
    'content-type': 'application/json', accept: 'application/json, text/event-stream',
    ...(sessionId ? { 'mcp-session-id': sessionId, 'mcp-protocol-version': version } : {}) } });
  const init = await post({ jsonrpc: '2.0', id: ++nextId, method: 'initialize', params: {
    protocolVersion: version, capabilities, clientInfo: { name: 'raw', version: '1' } } });
  const id = init.headers.get('mcp-session-id');
  const initialized = parseReply(await init.text());
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, id);
  return {
    id,
    initialized,
    post: (body) => post(body, id),
    async request(method, params = {}) {
      const response = await post({ jsonrpc: '2.0', id: ++nextId, method, params }, id);
      const text = await response.text();
      return { status: response.status, message: text ? parseReply(text) : null };
    },
  };
}
