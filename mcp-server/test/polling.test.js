// The SSE-polling mode (SEP-1699): the server ends a tools/call response stream early, after a priming event with
// an id and `retry`, and a GET with Last-Event-ID resumes it from the event store; older clients are not cut off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings } from '../src/server.js';
import { ARGS, withServer, withClient, legacySession } from './helpers.mjs';

const POLLING = ['--sse-polling', '--sse-retry-ms', '150', '--latency-ms', '300', '--mode', 'stateful', '--reply', 'sse'];
const call = (id) => ({ jsonrpc: '2.0', id, method: 'tools/call',
  params: { name: 'run_diagnosis', arguments: ARGS(), _meta: { progressToken: `p${id}` } } });

/** The JSON-RPC messages of an SSE text. */
const messages = (text) => text.split('\n').filter((l) => l.startsWith('data: ') && l.length > 6).map((l) => JSON.parse(l.slice(6)));
const resultOf = (text, id) => messages(text).find((m) => m.id === id && m.result)?.result;

/** Reads an SSE response until a message with JSON-RPC id `id` arrives (or the stream ends); returns the text. */
async function readUntil(response, id, timeoutMs = 5000) {
  const reader = response.body.getReader();
  let text = '';
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !text.includes(`"id":${id}`)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString();
  }
  await reader.cancel().catch(() => {});
  return text;
}

test('the response stream ends after the priming event and one step; GET with Last-Event-ID delivers the rest', async () => {
  await withServer(POLLING, async (server) => {
    const session = await legacySession(server, '2025-11-25');
    const first = await (await session.post(call(7))).text();
    assert.match(first, /^id: \S+\nretry: 150\ndata: \n\n/, 'a priming event with an id and retry opens the stream');
    assert.doesNotMatch(first, /"id":7/, 'the result is not on the first stream');
    const ids = [...first.matchAll(/^id: (\S+)$/gm)].map((m) => m[1]);
    assert.equal(ids.length, 2, 'priming event and the first progress notification');
    const resumed = await fetch(server.url, { headers: { accept: 'text/event-stream', 'mcp-session-id': session.id,
      'mcp-protocol-version': '2025-11-25', 'last-event-id': ids.at(-1) } });
    assert.equal(resumed.status, 200);
    const rest = await readUntil(resumed, 7);
    const progress = [...rest.matchAll(/"progress":(\d)/g)].map((m) => Number(m[1]));
    assert.deepEqual(progress, [1, 2, 3, 4], 'no notification lost or repeated across the reconnection');
    assert.equal(resultOf(rest, 7).structuredContent.risk_level, 'high');
    assert.equal(server.stats.streams_closed, 1);
    assert.equal(server.stats.resumptions, 1);
  });
});

test('the official v2 client resumes transparently and gets the result of the one call', async () => {
  await withServer(POLLING, (server) => withClient(server, 'legacy', async (client) => {
    const seen = [];
    const result = await client.callTool({ name: 'run_diagnosis', arguments: ARGS() }, { onprogress: (p) => seen.push(p.progress) });
    assert.equal(result.structuredContent.risk_level, 'high');
    assert.deepEqual(seen, [0, 1, 2, 3, 4]);
    assert.equal(server.stats.streams_closed, 1);
    assert.equal(server.stats.resumptions, 1);
    assert.deepEqual(server.stats.calls, { 'run-1': { 1: 1 } });
  }));
});

test('a 2025-06-18 client (no priming events) keeps its stream: the result arrives on the POST response', async () => {
  await withServer(POLLING, async (server) => {
    const session = await legacySession(server, '2025-06-18');
    const text = await (await session.post(call(8))).text();
    assert.equal(resultOf(text, 8).structuredContent.risk_level, 'high');
    assert.equal(server.stats.streams_closed, 0);
  });
});

test('--sse-polling needs sessions and SSE replies', () => {
  assert.throws(() => parseSettings(['--sse-polling', '--mode', 'stateless'], {}), /needs --mode stateful/);
  assert.throws(() => parseSettings(['--sse-polling', '--reply', 'json'], {}), /--reply sse/);
  assert.equal(parseSettings(['--sse-polling=1'], {}).sse_polling, true);
  assert.equal(parseSettings([], { MCP_SSE_POLLING: '1' }).sse_polling, true);
});
