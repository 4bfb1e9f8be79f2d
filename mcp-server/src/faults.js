// Injected faults for tools/call, written on the raw HTTP response before the SDK sees the request, so each one
// looks on the wire exactly as a broken server or network would (README.md "Faults").
import { FAULT_KINDS } from './settings.js';
import { diagnose } from './news2.js';

/** The fault to inject for this tools/call, or null: inputs.fault (within fault_attempts) or a random one. */
export function chooseFault(settings, call) {
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

/** Faults a task can carry to its end (a task-backed call answers at once; the fault shows when it finishes). */
export const TASK_FAULTS = ['is_error', 'invalid_result', 'jsonrpc_error'];

/** The outcome of a result-level fault: { result } (a CallToolResult) or { error } (a JSON-RPC error). */
export function faultOutcome(kind) {
  switch (kind) {
    case 'is_error':
      return { result: { content: [{ type: 'text', text: 'injected model failure: the model could not produce a diagnosis' }], isError: true } };
    case 'invalid_result': {
      const bad = { risk_level: 'purple', confidence_score: 1.7, summary: 'schema-invalid by design', primary_findings: [], recommendations: [] };
      return { result: { content: [{ type: 'text', text: JSON.stringify(bad) }], structuredContent: bad } };
    }
    case 'jsonrpc_error':
      return { error: { code: -32603, message: 'injected internal error' } };
    default:
      throw new Error(`${kind} is not a result-level fault`);
  }
}

/** A JSON-RPC message as the reply mode frames it: one SSE event or one JSON body. */
export function writeMessage(res, reply, message, status = 200) {
  if (reply === 'sse') {
    res.writeHead(status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.end(`event: message\ndata: ${JSON.stringify(message)}\n\n`);
  } else {
    const text = JSON.stringify(message);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
}

/** A small JSON error body (not JSON-RPC) with an HTTP status. */
export function plain(res, status, text, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ error: text }));
}

/**
 * Writes fault `kind` for `call` on `res`. `ctx` gives the settings, a timer that the server clears on close
 * (`later`) and `expireSession()`, which drops the caller's session for the 404 faults.
 */
export function injectFault(kind, res, call, ctx) {
  const { settings, later } = ctx;
  const id = call.id;
  const inputs = call.params?.arguments?.inputs ?? {};
  const retryAfter = inputs.retry_after ?? settings.retry_after;
  const reply = (message) => writeMessage(res, settings.reply, message);
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
      ctx.expireSession();
      return plain(res, 404, 'session not found');
    case 'hang':
      if (settings.hang_ms > 0) later(settings.hang_ms, () => { if (!res.writableEnded) plain(res, 503, 'hung'); });
      return undefined;
    case 'drop':
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"content":[`);
      return later(20, () => res.socket?.destroy());
    case 'is_error': case 'invalid_result': case 'jsonrpc_error':
      return reply({ jsonrpc: '2.0', id, ...faultOutcome(kind) });
    case 'malformed_json':
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end('{"jsonrpc":"2.0","id":' + JSON.stringify(id) + ',"result":{not json');
    case 'wrong_id':
      return reply({ jsonrpc: '2.0', id: 'not-your-request', result: { content: [] } });
    case 'truncated_sse':
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      return res.end(`event: message\ndata: {"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"con`);
    case 'huge_line': {
      const size = Number(inputs.fault_bytes ?? 4 * 1024 * 1024);
      const result = diagnose(call.params?.arguments?.context_pack);
      result.summary = 'x'.repeat(size);
      return reply({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'see structuredContent' }], structuredContent: result } });
    }
    case 'non_utf8':
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(Buffer.concat([
        Buffer.from(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"content":[{"type":"text","text":"`),
        Buffer.from([0xc3, 0x28, 0xff, 0xfe]), Buffer.from('"}]}}')]));
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
