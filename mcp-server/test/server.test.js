// The reference server over real HTTP: the official v2 client in both eras and every mode, progress, sessions,
// stats, and every injected fault. Each test starts its server on 127.0.0.1:0 and closes it, even when it fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings, FAULT_KINDS, callId } from '../src/server.js';
import { ARGS, withServer, withClient, rawCall, origin, modernRequest } from './helpers.mjs';

const postJson = (server, path, body) => fetch(`${origin(server)}${path}`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

for (const era of ['legacy', 'modern']) {
  for (const mode of ['stateless', 'stateful']) {
    for (const reply of ['json', 'sse']) {
      test(`v2 client round trip: ${era} era, ${mode}, ${reply} replies`, async () => {
        await withServer(['--mode', mode, '--reply', reply], (server) => withClient(server, era, async (client, transport) => {
          assert.equal(client.getProtocolEra(), era);
          assert.equal(client.getNegotiatedProtocolVersion(), era === 'modern' ? '2026-07-28' : '2025-11-25');
          const { tools } = await client.listTools();
          assert.deepEqual(tools.map((t) => t.name), ['run_diagnosis']);
          assert.deepEqual(tools[0].outputSchema.required.sort(),
            ['confidence_score', 'primary_findings', 'recommendations', 'risk_level', 'summary']);
          assert.deepEqual(tools[0].outputSchema.properties.risk_level.enum, ['low', 'medium', 'high', 'critical']);
          assert.ok(tools[0].inputSchema.properties.context_pack);
          const result = await client.callTool({ name: 'run_diagnosis', arguments: ARGS() });
          assert.ok(!result.isError);
          assert.equal(result.structuredContent.risk_level, 'high'); // 3 + 3 + 2 = 8
          assert.deepEqual(JSON.parse(result.content[0].text), result.structuredContent);
          assert.equal(result._meta.run_id, callId('run-1', 1));
          // Sessions exist only in the handshake era, and only when the server keeps them.
          assert.equal(Boolean(transport.sessionId), era === 'legacy' && mode === 'stateful');
          assert.deepEqual(server.stats.calls, { 'run-1': { 1: 1 } });
          assert.deepEqual(server.stats.eras, { modern: era === 'modern' ? 1 : 0, legacy: era === 'legacy' ? 1 : 0 });
          assert.equal(server.stats.initialize, era === 'legacy' ? 1 : 0);
          assert.equal(server.stats.discover, era === 'modern' ? 1 : 0);
        }));
      });
    }
  }
}

for (const era of ['legacy', 'modern']) {
  test(`progress notifications are streamed over SSE and spread over the latency (${era} era)`, async () => {
    await withServer(['--reply', 'sse', '--latency-ms', '250'], (server) => withClient(server, era, async (client) => {
      const seen = [];
      const started = Date.now();
      await client.callTool({ name: 'run_diagnosis', arguments: ARGS() },
        { onprogress: (p) => seen.push({ ...p, at: Date.now() - started }) });
      assert.equal(seen.length, 5);
      assert.deepEqual(seen.map((p) => p.progress), [0, 1, 2, 3, 4]);
      assert.ok(seen.every((p) => p.total === 5 && typeof p.message === 'string'));
      assert.ok(seen[4].at >= 150, `progress spread over the latency (${seen[4].at} ms)`);
    }));
  });
}

test('deterministic: the same arguments give byte-identical results', async () => {
  await withServer(['--mode', 'stateless', '--reply', 'json'], async (server) => {
    const a = await (await rawCall(server, ARGS())).text();
    const b = await (await rawCall(server, ARGS())).text();
    assert.equal(a, b);
    assert.equal(server.stats.calls['run-1']['1'], 2);
  });
});

test('stateful: an unknown session is 404; session expiry after N calls forces a new initialize', async () => {
  await withServer(['--mode', 'stateful', '--reply', 'json', '--session-expiry-calls', '2'], async (server) => {
    const res = await rawCall(server, ARGS(), { 'mcp-session-id': 'no-such-session' });
    assert.equal(res.status, 404);
    await withClient(server, 'legacy', async (client) => {
      await client.callTool({ name: 'run_diagnosis', arguments: ARGS({}, 1, 'a') });
      await client.callTool({ name: 'run_diagnosis', arguments: ARGS({}, 1, 'b') });
      await assert.rejects(client.callTool({ name: 'run_diagnosis', arguments: ARGS({}, 1, 'c') }));
    });
    assert.equal(server.stats.sessions_expired, 1);
  });
});

test('bearer token required when configured', async () => {
  await withServer(['--mode', 'stateless', '--auth-token', 't0k3n'], async (server) => {
    assert.equal((await rawCall(server, ARGS())).status, 401);
    assert.equal((await rawCall(server, ARGS(), { authorization: 'Bearer t0k3n' })).status, 200);
  });
});

test('/config changes behaviour at run time; /stats/reset zeroes counts', async () => {
  await withServer(['--mode', 'stateless', '--reply', 'json'], async (server) => {
    let res = await postJson(server, '/config', { fault_rate: 1, fault_kinds: ['http_502'] });
    assert.equal(res.status, 200);
    assert.equal((await rawCall(server, ARGS())).status, 502);
    await postJson(server, '/config', { fault_rate: 0 });
    assert.equal((await rawCall(server, ARGS())).status, 200);
    const stats = await (await fetch(`${origin(server)}/stats`)).json();
    assert.equal(stats.total_calls, 2);
    assert.equal(stats.faults.http_502, 1);
    await postJson(server, '/stats/reset', {});
    res = await (await fetch(`${origin(server)}/stats`)).json();
    assert.equal(res.total_calls, 0);
  });
});

// What each fault looks like on the wire.
const EXPECT = {
  http_500: async (r) => assert.equal(r.status, 500),
  http_502: async (r) => assert.equal(r.status, 502),
  http_503: async (r) => { assert.equal(r.status, 503); assert.equal(r.headers.get('retry-after'), '3'); },
  http_429: async (r) => { assert.equal(r.status, 429); assert.equal(r.headers.get('retry-after'), '3'); },
  http_400: async (r) => assert.equal(r.status, 400),
  http_401: async (r) => assert.equal(r.status, 401),
  http_404_session: async (r) => assert.equal(r.status, 404),
  session_expiry: async (r) => assert.equal(r.status, 404),
  drop: async (r) => { assert.equal(r.status, 200); await assert.rejects(r.text()); },
  is_error: async (r) => { const m = await r.json(); assert.equal(m.result.isError, true); },
  invalid_result: async (r) => { const m = await r.json(); assert.equal(m.result.structuredContent.risk_level, 'purple'); },
  jsonrpc_error: async (r) => { const m = await r.json(); assert.equal(m.error.code, -32603); },
  malformed_json: async (r) => { const text = await r.text(); assert.throws(() => JSON.parse(text)); },
  wrong_id: async (r) => { const m = await r.json(); assert.equal(m.id, 'not-your-request'); },
  truncated_sse: async (r) => { assert.match(r.headers.get('content-type'), /event-stream/); assert.doesNotMatch(await r.text(), /\n\n$/); },
  huge_line: async (r) => { const t = await r.text(); assert.ok(t.length > 100000); },
  non_utf8: async (r) => { const b = Buffer.from(await r.arrayBuffer()); assert.ok(b.includes(Buffer.from([0xff, 0xfe]))); },
};

for (const kind of FAULT_KINDS) {
  if (kind === 'hang' || kind === 'slowloris') continue;
  test(`fault ${kind} by inputs.fault, only for attempts <= fault_attempts`, async () => {
    await withServer(['--mode', 'stateless', '--reply', 'json'], async (server) => {
      const inputs = { fault: kind, fault_attempts: 1, retry_after: 3, fault_bytes: 200000 };
      const res = await rawCall(server, ARGS(inputs, 1));
      await EXPECT[kind](res);
      assert.equal(server.stats.faults[kind], 1);
      const ok = await rawCall(server, ARGS(inputs, 2));
      assert.equal(ok.status, 200, `attempt 2 is not faulted (${kind})`);
      assert.equal((await ok.json()).result.structuredContent.risk_level, 'high');
      assert.deepEqual(server.stats.calls['run-1'], { 1: 1, 2: 1 });
    });
  });
}

test('fault hang holds the request until --hang-ms, then 503; slowloris trickles', async () => {
  await withServer(['--mode', 'stateless', '--hang-ms', '300'], async (server) => {
    const started = Date.now();
    const res = await rawCall(server, ARGS({ fault: 'hang' }));
    assert.equal(res.status, 503);
    assert.ok(Date.now() - started >= 280);
    const slow = await rawCall(server, ARGS({ fault: 'slowloris' }));
    const reader = slow.body.getReader();
    const first = await reader.read();
    assert.equal(first.value.length, 1);
    await reader.cancel();
  });
});

test('random faults at --fault-rate over --fault-kinds', async () => {
  await withServer(['--mode', 'stateless', '--reply', 'json', '--fault-rate', '1', '--fault-kinds', 'http_503'], async (server) => {
    for (let i = 0; i < 5; i++) assert.equal((await rawCall(server, ARGS({}, i + 1))).status, 503);
    assert.equal(server.stats.faults.http_503, 5);
  });
  assert.throws(() => parseSettings(['--fault-kinds', 'nope'], {}));
  assert.throws(() => parseSettings(['--mode', 'odd'], {}));
});

test('faults hit 2026-07-28 calls too, before the SDK: the same wire shapes, counted per run and attempt', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const call = (inputs, attempt) => modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS(inputs, attempt, 'modern-fault') }, { capabilities: {} });
    assert.equal((await call({ fault: 'http_503', retry_after: 2 }, 1)).status, 503);
    assert.equal((await call({ fault: 'is_error', fault_attempts: 2 }, 2)).message.result.isError, true);
    assert.equal((await call({ fault: 'is_error', fault_attempts: 2 }, 3)).message.result.structuredContent.risk_level, 'high');
    assert.deepEqual(server.stats.calls['modern-fault'], { 1: 1, 2: 1, 3: 1 });
    assert.deepEqual(server.stats.faults, { http_503: 1, is_error: 1 });
    assert.equal(server.stats.eras.modern, 3);
  });
});
