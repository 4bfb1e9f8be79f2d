// The conformance fixture tools (--conformance-fixtures, src/fixtures.js), one test per tool, on the 2026-07-28
// wire as the official suite calls them: the tasks extension's greet/slow_compute/failing_job/protocol_error_job/
// confirm_delete, server-stateless's diagnostic tools, and the empty prompt/resource listings of `caching`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MODERN, sleep, withServer, modernRequest } from './helpers.mjs';

const FLAGS = ['--tasks', '--conformance-fixtures', '--task-poll-ms', '100', '--task-ttl-ms', '60000'];
const NO_TASKS = { capabilities: {} };
const call = (server, name, args = {}, options) => modernRequest(server, 'tools/call', { name, arguments: args }, options);

/** tasks/get until the task leaves `working` (bounded by the count of polls, not the clock's precision). */
async function settled(server, taskId) {
  for (let i = 0; i < 300; i++) {
    const task = (await modernRequest(server, 'tasks/get', { taskId })).message.result;
    if (task.status !== 'working') return task;
    await sleep(50);
  }
  throw new Error(`task ${taskId} stayed working`);
}

/** Every JSON-RPC message of the SSE reply to a 2026-07-28 tools/call of `name` (notifications, then the response). */
async function sseMessages(server, name, capabilities, meta = {}) {
  const body = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: {}, _meta: {
    'io.modelcontextprotocol/protocolVersion': MODERN, 'io.modelcontextprotocol/clientCapabilities': capabilities, ...meta } } };
  const response = await fetch(server.url, { method: 'POST', body: JSON.stringify(body), headers: {
    'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': MODERN,
    'mcp-method': 'tools/call', 'mcp-name': name } });
  assert.match(response.headers.get('content-type'), /text\/event-stream/);
  const text = await response.text();
  return text.split('\n').filter((line) => line.startsWith('data: ') && line.length > 6).map((line) => JSON.parse(line.slice(6)));
}

test('fixtures are listed only with --conformance-fixtures, and prompts/ and resources/list exist only then', async () => {
  await withServer(['--tasks', '--reply', 'json'], async (server) => {
    const tools = (await modernRequest(server, 'tools/list')).message.result.tools.map((t) => t.name);
    assert.deepEqual(tools, ['run_diagnosis']);
    assert.equal((await call(server, 'greet', { name: 'x' })).message.error.code, -32602);
    assert.equal((await modernRequest(server, 'prompts/list')).message.error.code, -32601);
  });
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const tools = (await modernRequest(server, 'tools/list')).message.result.tools.map((t) => t.name);
    for (const name of ['greet', 'slow_compute', 'failing_job', 'protocol_error_job', 'confirm_delete',
      'test_missing_capability', 'test_streaming_elicitation', 'test_logging_tool']) assert.ok(tools.includes(name), name);
  });
});

test('greet answers Hello, {name}! synchronously, even to a declaring client that sends a legacy task hint', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const reply = await modernRequest(server, 'tools/call', { name: 'greet', arguments: { name: 'World' }, task: { ttl: 60000 } });
    assert.equal(reply.message.result.resultType, 'complete');
    assert.equal(reply.message.result.taskId, undefined);
    assert.equal(reply.message.result.content[0].text, 'Hello, World!');
    assert.equal((await call(server, 'greet', {})).message.error.code, -32602, 'name is required');
  });
});

test('slow_compute: a task for a declaring client (completes after its seconds, or ends cancelled), sync otherwise', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const created = (await call(server, 'slow_compute', { seconds: 1, label: 'one' })).message.result;
    assert.equal(created.resultType, 'task');
    assert.equal(created.status, 'working');
    assert.equal(created.ttlMs, 60000);
    const done = await settled(server, created.taskId);
    assert.equal(done.status, 'completed');
    assert.equal(done.result.content[0].text, 'Computed one after 1 s');
    assert.ok(Date.parse(done.lastUpdatedAt) - Date.parse(done.createdAt) >= 1000, 'not before its seconds');

    const long = (await call(server, 'slow_compute', { seconds: 60, label: 'long' })).message.result;
    const ack = (await modernRequest(server, 'tasks/cancel', { taskId: long.taskId })).message.result;
    assert.equal(ack.resultType, 'complete');
    assert.equal(ack.taskId, undefined, 'an empty acknowledgement');
    assert.equal((await settled(server, long.taskId)).status, 'cancelled');

    const update = (await modernRequest(server, 'tasks/update', { taskId: created.taskId, inputResponses: {} })).message.result;
    assert.equal(update.resultType, 'complete', 'tasks/update is acknowledged');

    const sync = (await call(server, 'slow_compute', { seconds: 0, label: 'now' }, NO_TASKS)).message.result;
    assert.equal(sync.resultType, 'complete');
    assert.equal(sync.content[0].text, 'Computed now after 0 s');
    assert.equal((await call(server, 'slow_compute', { seconds: -1 })).message.error.code, -32602);
  });
});

test('failing_job: its task completes with a tool error; a client without the tasks extension gets -32021 (HTTP 400)', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const created = (await call(server, 'failing_job')).message.result;
    assert.equal(created.resultType, 'task');
    const done = await settled(server, created.taskId);
    assert.equal(done.status, 'completed');
    assert.equal(done.result.isError, true);
    assert.equal(done.error, undefined);

    const refused = await call(server, 'failing_job', {}, NO_TASKS);
    assert.equal(refused.status, 400);
    assert.equal(refused.message.error.code, -32021);
    assert.deepEqual(refused.message.error.data.requiredCapabilities, { extensions: { 'io.modelcontextprotocol/tasks': {} } });
    assert.equal(server.stats.tasks_created, 1, 'the refused call created no task');
  });
});

test('protocol_error_job: its task fails with an inlined JSON-RPC error and no result', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const created = (await call(server, 'protocol_error_job')).message.result;
    const done = await settled(server, created.taskId);
    assert.equal(done.status, 'failed');
    assert.equal(done.error.code, -32603);
    assert.equal(typeof done.error.message, 'string');
    assert.equal(done.result, undefined);
  });
});

test('confirm_delete: the server cannot ask for the confirmation, so it answers a tool error and creates no task', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    const result = (await call(server, 'confirm_delete', { filename: 'rt.txt' })).message.result;
    assert.equal(result.resultType, 'complete');
    assert.equal(result.isError, true);
    assert.match(result.content[0].text, /^Not deleted: rt\.txt/);
    assert.equal(server.stats.tasks_created, 0);
  });
});

test('test_missing_capability: -32021 with HTTP 400 naming sampling unless the client declares sampling', async () => {
  await withServer([...FLAGS, '--reply', 'sse'], async (server) => {
    const refused = await call(server, 'test_missing_capability', {}, NO_TASKS);
    assert.equal(refused.status, 400);
    assert.equal(refused.message.error.code, -32021);
    assert.deepEqual(refused.message.error.data.requiredCapabilities, { sampling: {} });
    const served = await call(server, 'test_missing_capability', {}, { capabilities: { sampling: {} } });
    assert.equal(served.status, 200);
    assert.equal(served.message.result.content[0].text, 'The client declared sampling');
  });
});

test('test_streaming_elicitation: its response stream carries progress notifications and the result, no request', async () => {
  await withServer([...FLAGS, '--reply', 'sse'], async (server) => {
    const messages = await sseMessages(server, 'test_streaming_elicitation', { elicitation: {} }, { progressToken: 'p1' });
    assert.deepEqual(messages.slice(0, -1).map((m) => m.method), ['notifications/progress', 'notifications/progress']);
    assert.ok(messages.every((m) => m.method === undefined || m.id === undefined), 'no request to the client');
    assert.equal(messages.at(-1).result.content[0].text, 'Streamed without asking the client anything');
  });
});

test('test_logging_tool: no notifications/message (no logging capability), even when the request sets a log level', async () => {
  await withServer([...FLAGS, '--reply', 'sse'], async (server) => {
    const quiet = await sseMessages(server, 'test_logging_tool', {});
    assert.deepEqual(quiet.map((m) => m.method), [undefined]);
    const asked = await sseMessages(server, 'test_logging_tool', {}, { 'io.modelcontextprotocol/logLevel': 'info' });
    assert.deepEqual(asked.map((m) => m.method), [undefined]);
    assert.match(asked[0].result.content[0].text, /nothing logged/);
  });
});

test('empty prompt and resource listings carry caching hints (the caching scenario)', async () => {
  await withServer([...FLAGS, '--reply', 'json'], async (server) => {
    for (const [method, key] of [['prompts/list', 'prompts'], ['resources/list', 'resources'],
      ['resources/templates/list', 'resourceTemplates']]) {
      const result = (await modernRequest(server, method)).message.result;
      assert.deepEqual(result[key], [], method);
      assert.ok(Number.isInteger(result.ttlMs) && result.ttlMs >= 0, `${method} ttlMs`);
      assert.ok(['public', 'private'].includes(result.cacheScope), `${method} cacheScope`);
    }
    assert.equal((await modernRequest(server, 'prompts/get', { name: 'x' })).message.error.code, -32601);
  });
});
