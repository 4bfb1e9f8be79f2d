// The two protocol eras at one endpoint, the era flag (dual, legacy-only, modern-only), the 2026-07-28 request
// rules (headers that must match the body, unsupported versions), the status codes of the transport pages, and the
// DNS-rebinding and cross-origin protections.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ARGS, MODERN, TRACEPARENT, withServer, withClient, rawCall, modernRequest, legacySession, origin } from './helpers.mjs';

const INIT = (version = '2025-06-18') => ({ jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: version, capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
const post = (server, body, headers = {}) => fetch(server.url, { method: 'POST', body: JSON.stringify(body),
  headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers } });

test('dual era: server/discover lists 2026-07-28 and the tool; a modern tools/call is served without a session', async () => {
  await withServer(['--mode', 'stateful', '--reply', 'json'], async (server) => {
    const discover = await modernRequest(server, 'server/discover', {}, { capabilities: {} });
    assert.equal(discover.status, 200);
    assert.deepEqual(discover.message.result.supportedVersions, [MODERN]);
    assert.deepEqual(discover.message.result.capabilities.tools, {});
    const call = await modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS() }, { capabilities: {} });
    assert.equal(call.status, 200);
    assert.equal(call.response.headers.get('mcp-session-id'), null);
    assert.equal(call.message.result.resultType, 'complete');
    assert.equal(call.message.result.structuredContent.risk_level, 'high');
    assert.deepEqual(server.stats.eras, { modern: 1, legacy: 0 });
  });
});

test('dual era: the handshake revisions 2025-03-26, 2025-06-18 and 2025-11-25 each get their own session', async () => {
  await withServer(['--mode', 'stateful', '--reply', 'json'], async (server) => {
    for (const version of ['2025-03-26', '2025-06-18', '2025-11-25']) {
      const session = await legacySession(server, version);
      assert.ok(session.id);
      assert.equal(session.initialized.result.protocolVersion, version);
      const call = await session.request('tools/call', { name: 'run_diagnosis', arguments: ARGS({}, 1, version) });
      assert.equal(call.message.result.structuredContent.risk_level, 'high');
    }
    assert.equal(server.stats.initialize, 3);
    assert.equal(server.stats.eras.legacy, 3);
  });
});

test('a 2026-07-28 request whose headers disagree with its body is refused with 400 HeaderMismatch', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const mismatch = await modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS() },
      { headers: { 'mcp-name': 'another_tool' } });
    assert.equal(mismatch.status, 400);
    assert.equal(mismatch.message.error.code, -32020);
    assert.equal(server.stats.total_calls, 0, 'refused before the tool ran: not a call');
  });
});

test('a modern request for a revision the server does not serve gets UnsupportedProtocolVersionError', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const res = await post(server, { jsonrpc: '2.0', id: 9, method: 'server/discover', params: { _meta: {
      'io.modelcontextprotocol/protocolVersion': '2099-01-01', 'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
      'io.modelcontextprotocol/clientCapabilities': {} } } }, { 'mcp-protocol-version': '2099-01-01', 'mcp-method': 'server/discover' });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.error.code, -32022);
    assert.ok(body.error.data.supported.includes(MODERN));
  });
});

test('--era legacy: a modern request gets a 4xx without a modern error (a dual-era client falls back), initialize works', async () => {
  await withServer(['--era', 'legacy', '--mode', 'stateful', '--reply', 'json'], async (server) => {
    const probe = await modernRequest(server, 'server/discover', {}, { capabilities: {} });
    assert.ok(probe.status >= 400 && probe.status < 500, `status ${probe.status}`);
    assert.ok(![-32022, -32020, -32021, -32601].includes(probe.message?.error?.code), JSON.stringify(probe.message));
    await withClient(server, 'modern', async (client) => {
      // The v2 client's 'auto' negotiation falls back to initialize, as the versioning page prescribes.
      assert.equal(client.getProtocolEra(), 'legacy');
      const result = await client.callTool({ name: 'run_diagnosis', arguments: ARGS() });
      assert.equal(result.structuredContent.risk_level, 'high');
    });
    assert.equal(server.stats.discover, 2);
    assert.equal(server.stats.initialize, 1);
  });
});

test('--era modern: initialize is refused naming the supported revision; GET and DELETE are 405', async () => {
  await withServer(['--era', 'modern', '--reply', 'json'], async (server) => {
    const res = await post(server, INIT());
    assert.equal(res.status, 400);
    assert.match(await res.text(), /2026-07-28/);
    assert.equal((await fetch(server.url)).status, 405);
    assert.equal((await fetch(server.url, { method: 'DELETE' })).status, 405);
    await withClient(server, 'modern', async (client) => assert.equal(client.getProtocolEra(), 'modern'));
  });
});

test('status codes: 400 without a session id, 404 for an unknown one; DELETE 200 then 404; stateless GET/DELETE 405', async () => {
  await withServer(['--mode', 'stateful', '--reply', 'json'], async (server) => {
    assert.equal((await rawCall(server, ARGS())).status, 400);
    assert.equal((await rawCall(server, ARGS(), { 'mcp-session-id': 'no-such-session' })).status, 404);
    assert.equal((await fetch(server.url)).status, 400, 'GET without a session id');
    const session = await legacySession(server, '2025-06-18');
    const del = await fetch(server.url, { method: 'DELETE', headers: { 'mcp-session-id': session.id, 'mcp-protocol-version': '2025-06-18' } });
    assert.ok([200, 204].includes(del.status), `DELETE of a known session: ${del.status}`);
    assert.equal((await session.request('tools/list')).status, 404, 'the deleted session is gone');
    const again = await fetch(server.url, { method: 'DELETE', headers: { 'mcp-session-id': session.id } });
    assert.equal(again.status, 404);
    assert.equal(server.stats.sessions_deleted, 1);
  });
  await withServer(['--mode', 'stateless', '--reply', 'json'], async (server) => {
    assert.equal((await fetch(server.url)).status, 405);
    assert.equal((await fetch(server.url, { method: 'DELETE' })).status, 405);
    assert.equal((await rawCall(server, ARGS())).status, 200, 'stateless needs no session');
  });
});

test('DNS rebinding: a foreign Host or Origin is 403 on every path; the loopback names with the port pass', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const { port } = server;
    const probe = (path, headers, method = 'GET') => new Promise((resolve, reject) => {
      // fetch() will not let a caller set Host: use a plain request.
      import('node:http').then(({ request }) => {
        const req = request({ host: '127.0.0.1', port, path, method, headers }, (res) => { res.resume(); resolve(res.statusCode); });
        req.on('error', reject);
        req.end(method === 'POST' ? JSON.stringify({ fault_rate: 1 }) : undefined);
      });
    });
    assert.equal(await probe('/mcp', { host: `evil.example:${port}` }), 403);
    assert.equal(await probe('/stats', { host: `localhost.evil.example:${port}` }), 403);
    assert.equal(await probe('/healthz', { host: `127.0.0.1:${port + 1}` }), 403, 'the port is part of the check');
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]) assert.equal(await probe('/healthz', { host }), 200);
    assert.equal(await probe('/config', { host: `127.0.0.1:${port}`, origin: 'http://evil.example', 'content-type': 'application/json' }, 'POST'), 403);
    assert.equal(await probe('/healthz', { host: `127.0.0.1:${port}`, origin: `http://localhost:${port}` }), 200);
    assert.equal(server.settings.fault_rate, 0, 'nothing cross-origin changed the fault rate');
    const rpc = await rawCall(server, ARGS(), { origin: 'http://evil.example' });
    assert.equal(rpc.status, 403);
    assert.equal((await rpc.json()).error.code, -32000);
    assert.equal(server.stats.total_calls, 0);
  });
  await withServer(['--mode', 'stateless', '--reply', 'json', '--allowed-hosts', 'mcp.internal:8080', '--allowed-origins', 'https://app.internal'], async (server) => {
    assert.equal((await rawCall(server, ARGS(), { origin: 'https://app.internal' })).status, 200, 'configured origin');
  });
});

test('/config and /stats/reset accept only application/json POSTs', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const form = await fetch(`${origin(server)}/config`, { method: 'POST', body: 'fault_rate=1',
      headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(form.status, 415);
    const text = await fetch(`${origin(server)}/stats/reset`, { method: 'POST', body: '{}', headers: { 'content-type': 'text/plain' } });
    assert.equal(text.status, 415);
    assert.equal((await fetch(`${origin(server)}/config`)).status, 405);
    assert.equal(server.settings.fault_rate, 0);
  });
});

test('/stats records each call\'s traceparent from the header and from _meta, per run and attempt', async () => {
  await withServer(['--mode', 'stateless', '--reply', 'json'], async (server) => {
    const other = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    await modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS({}, 1, 'traced') },
      { headers: { traceparent: TRACEPARENT, tracestate: 'pgd=1' }, meta: { traceparent: TRACEPARENT } });
    await rawCall(server, ARGS({}, 2, 'traced'), { traceparent: other });
    const stats = await (await fetch(`${origin(server)}/stats`)).json();
    assert.deepEqual(stats.traces.traced, [
      { attempt: 1, header: TRACEPARENT, meta: TRACEPARENT, tracestate: 'pgd=1' },
      { attempt: 2, header: other, meta: null, tracestate: null },
    ]);
  });
});
