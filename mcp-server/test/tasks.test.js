// Task-backed run_diagnosis: the tasks extension (2026-07-28, SEP-2663) and the 2025-11-25 experimental tasks
// (SEP-1686): creation, polling at the configured latency, results, cancellation, ttl expiry, and a store that
// outlives the server's own restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, parseSettings, callId } from '../src/server.js';
import { ARGS, sleep, withServer, modernRequest, legacySession, rawCall, parseReply } from './helpers.mjs';

const callTask = (server, args = ARGS()) => modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: args });
const get = (server, taskId, options) => modernRequest(server, 'tasks/get', { taskId }, options);

test('extension: a declaring client gets a durable task that completes after the latency with the tool result', async () => {
  // Intervals of seconds, not tens of milliseconds: the assertions below are about the order of events, and a loaded
  // machine stretched 75 ms polls past the 300 ms latency.
  await withServer(['--tasks', '--latency-ms', '2500', '--task-poll-ms', '1000', '--task-ttl-ms', '60000', '--reply', 'json'], async (server) => {
    const started = Date.now();
    const created = await callTask(server);
    assert.equal(created.status, 200);
    const task = created.message.result;
    assert.equal(task.resultType, 'task');
    assert.equal(task.status, 'working');
    assert.equal(task.ttlMs, 60000);
    assert.equal(task.pollIntervalMs, 1000);
    assert.match(task.taskId, /^[0-9a-f-]{36}$/);
    // Returned at once, not after the latency: the task is still working (a clock bound flaked on a loaded machine).
    const statuses = [];
    let last;
    while (Date.now() - started < 15000) {
      last = (await get(server, task.taskId)).message.result;
      statuses.push(last.status);
      if (last.status !== 'working') break;
      await sleep(task.pollIntervalMs);
    }
    assert.equal(last.status, 'completed');
    assert.equal(last.resultType, 'complete');
    assert.ok(Date.now() - started >= 2490, 'completed no sooner than the configured latency');
    assert.ok(statuses.filter((s) => s === 'working').length >= 2, statuses.join(','));
    assert.equal(last.result.structuredContent.risk_level, 'high');
    assert.equal(last.result._meta.run_id, callId('run-1', 1));
    assert.deepEqual(server.stats.calls, { 'run-1': { 1: 1 } }, 'exactly one tools/call');
    assert.equal(server.stats.task_polls['run-1'], statuses.length);
    assert.deepEqual(server.stats.early_polls, {}, 'polled at pollIntervalMs');
    await get(server, task.taskId);
    await get(server, task.taskId);
    assert.equal(server.stats.early_polls['run-1'], 2, 'back-to-back polls are counted as early');
    assert.equal(server.stats.tasks_created, 1);
  });
});

test('extension: a client that does not declare it gets a plain result, and tasks/get is refused with -32021', async () => {
  await withServer(['--tasks', '--reply', 'json'], async (server) => {
    const plainCall = await modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS() }, { capabilities: {} });
    assert.equal(plainCall.message.result.resultType, 'complete');
    assert.equal(plainCall.message.result.structuredContent.risk_level, 'high');
    const { taskId } = (await callTask(server)).message.result;
    const refused = await get(server, taskId, { capabilities: {} });
    assert.equal(refused.message.error.code, -32021);
    assert.deepEqual(refused.message.error.data.requiredCapabilities, { extensions: { 'io.modelcontextprotocol/tasks': {} } });
  });
});

test('extension: tasks/cancel acknowledges and the task stays cancelled; unknown ids are -32602', async () => {
  await withServer(['--tasks', '--latency-ms', '2000', '--reply', 'json'], async (server) => {
    const { taskId } = (await callTask(server, ARGS({}, 1, 'to-cancel'))).message.result;
    const ack = await modernRequest(server, 'tasks/cancel', { taskId });
    assert.equal(ack.status, 200);
    assert.equal(ack.message.result.resultType, 'complete');
    const after = (await get(server, taskId)).message.result;
    assert.equal(after.status, 'cancelled');
    assert.equal(after.result, undefined);
    assert.deepEqual(server.stats.cancellations, { 'to-cancel': { 'tasks/cancel': 1 } });
    const unknown = await get(server, 'no-such-task');
    assert.equal(unknown.message.error.code, -32602);
    assert.match(unknown.message.error.message, /not found/);
  });
});

test('extension: a task past its ttl is expired (-32602) and dropped from the store', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgd-tasks-'));
  try {
    await withServer(['--tasks', '--task-dir', dir, '--task-ttl-ms', '200', '--reply', 'json'], async (server) => {
      const { taskId, ttlMs } = (await callTask(server)).message.result;
      assert.equal(ttlMs, 200);
      assert.ok(fs.existsSync(path.join(dir, `${taskId}.json`)));
      await sleep(300);
      const expired = await get(server, taskId);
      assert.equal(expired.message.error.code, -32602);
      assert.match(expired.message.error.message, /expired/);
      assert.ok(!fs.existsSync(path.join(dir, `${taskId}.json`)));
      assert.match((await get(server, taskId)).message.error.message, /not found/);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the task store outlives a restart of the server: the new process answers tasks/get for the old task', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgd-tasks-'));
  const flags = ['--tasks', '--task-dir', dir, '--latency-ms', '300', '--reply', 'json', '--mode', 'stateless'];
  try {
    const first = await startServer(parseSettings(flags, {}));
    const created = await callTask(first, ARGS({}, 1, 'survivor'));
    const legacy = await (await rawCall(first, { ...ARGS({}, 1, 'survivor-legacy') }, {})).text();
    assert.ok(parseReply(legacy).result.structuredContent, 'a call without task augmentation stays synchronous');
    await first.close();
    const second = await startServer(parseSettings(flags, {}));
    try {
      await sleep(350);
      const { result } = (await get(second, created.message.result.taskId)).message;
      assert.equal(result.status, 'completed');
      assert.equal(result.result.structuredContent.risk_level, 'high');
      assert.equal(second.stats.total_calls, 0, 'no second tools/call was needed');
      assert.equal(second.stats.task_polls.survivor, 1);
    } finally {
      await second.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('2025-11-25 tasks: capability and taskSupport advertised; task-augmented call, tasks/get, blocking tasks/result, cancel', async () => {
  await withServer(['--tasks', '--latency-ms', '300', '--task-poll-ms', '50', '--task-ttl-ms', '60000', '--mode', 'stateful', '--reply', 'json'], async (server) => {
    const session = await legacySession(server, '2025-11-25');
    assert.deepEqual(session.initialized.result.capabilities.tasks, { cancel: {}, requests: { tools: { call: {} } } });
    const { message: list } = await session.request('tools/list');
    assert.deepEqual(list.result.tools[0].execution, { taskSupport: 'optional' });
    const started = Date.now();
    const { message: created } = await session.request('tools/call', { name: 'run_diagnosis', arguments: ARGS({}, 1, 'legacy-task'), task: { ttl: 5000 } });
    const task = created.result.task;
    assert.equal(task.status, 'working');
    assert.equal(task.ttl, 5000, 'the requested ttl is honoured (below the server maximum)');
    assert.equal(task.pollInterval, 50);
    const { message: polled } = await session.request('tasks/get', { taskId: task.taskId });
    assert.equal(polled.result.status, 'working');
    const { message: result } = await session.request('tasks/result', { taskId: task.taskId });
    assert.ok(Date.now() - started >= 290, 'tasks/result blocks until the task is done');
    assert.equal(result.result.structuredContent.risk_level, 'high');
    assert.deepEqual(result.result._meta['io.modelcontextprotocol/related-task'], { taskId: task.taskId });
    const { message: late } = await session.request('tasks/cancel', { taskId: task.taskId });
    assert.equal(late.error.code, -32602, 'a terminal task cannot be cancelled');
    const { message: other } = await session.request('tools/call', { name: 'run_diagnosis', arguments: ARGS({}, 2, 'legacy-task'), task: {} });
    assert.equal(other.result.task.ttl, 60000, 'no ttl requested: the server maximum');
    const { message: cancelled } = await session.request('tasks/cancel', { taskId: other.result.task.taskId });
    assert.equal(cancelled.result.status, 'cancelled');
    const { message: afterCancel } = await session.request('tasks/result', { taskId: other.result.task.taskId });
    assert.ok(afterCancel.error, 'a cancelled task has no result');
    assert.deepEqual(server.stats.calls['legacy-task'], { 1: 1, 2: 1 });
    assert.deepEqual(server.stats.cancellations['legacy-task'], { 'tasks/cancel': 1 });
    assert.equal(server.stats.task_results['legacy-task'], 2);
  });
});

test('without --tasks, a declaring client gets plain results and the task methods do not exist', async () => {
  await withServer(['--reply', 'json'], async (server) => {
    const call = await callTask(server);
    assert.equal(call.message.result.resultType, 'complete');
    const get404 = await get(server, 'anything');
    assert.equal(get404.message.error.code, -32601);
    const session = await legacySession(server, '2025-11-25');
    assert.equal(session.initialized.result.capabilities.tasks, undefined);
    const { message } = await session.request('tools/call', { name: 'run_diagnosis', arguments: ARGS(), task: { ttl: 1000 } });
    assert.equal(message.result.structuredContent.risk_level, 'high', 'task metadata is ignored when tasks are off');
  });
});

test('cancelling a synchronous call: closing the stream (2026-07-28) or notifications/cancelled (handshake era)', async () => {
  await withServer(['--latency-ms', '3000', '--mode', 'stateful', '--reply', 'sse'], async (server) => {
    const aborter = new AbortController();
    const pending = modernRequest(server, 'tools/call', { name: 'run_diagnosis', arguments: ARGS({}, 1, 'modern-cancel') },
      { capabilities: {}, signal: aborter.signal }).catch((error) => error);
    await sleep(300);
    aborter.abort();
    assert.equal((await pending).name, 'AbortError');
    const session = await legacySession(server, '2025-06-18');
    const call = session.post({ jsonrpc: '2.0', id: 'c1', method: 'tools/call',
      params: { name: 'run_diagnosis', arguments: ARGS({}, 1, 'legacy-cancel') } });
    await sleep(300);
    const note = await session.post({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 'c1', reason: 'run cancelled' } });
    assert.equal(note.status, 202);
    await call.then((r) => r.body?.cancel()).catch(() => {});
    for (let i = 0; i < 50 && server.stats.total_cancellations < 2; i++) await sleep(20);
    assert.deepEqual(server.stats.cancellations, {
      'modern-cancel': { stream_closed: 1 }, 'legacy-cancel': { 'notifications/cancelled': 1 } });
    assert.equal(server.stats.cancel_notifications, 1);
  });
});

test('300 task-backed calls in flight across a server restart: each run called once, every task completes', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgd-tasks-'));
  const flags = ['--tasks', '--task-dir', dir, '--latency-ms', '500', '--task-poll-ms', '100', '--reply', 'json'];
  const runs = Array.from({ length: 300 }, (_, i) => `bulk-${i}`);
  try {
    const first = await startServer(parseSettings(flags, {}));
    const created = await Promise.all(runs.map((run) => callTask(first, ARGS({}, 1, run))));
    const ids = created.map((c) => c.message.result.taskId);
    assert.equal(new Set(ids).size, runs.length);
    assert.equal(first.stats.total_calls, runs.length);
    await first.close(); // in flight: every task is still working
    const second = await startServer(parseSettings(flags, {}));
    try {
      const done = await Promise.all(ids.map(async (taskId) => {
        for (;;) {
          const { result } = (await get(second, taskId)).message;
          if (result.status !== 'working') return result;
          await sleep(result.pollIntervalMs);
        }
      }));
      assert.ok(done.every((t) => t.status === 'completed' && t.result.structuredContent.risk_level === 'high'));
      assert.equal(second.stats.total_calls, 0, 'no run was called again after the restart');
      assert.equal(Object.keys(second.stats.task_polls).length, runs.length);
    } finally {
      await second.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('result-level faults on task-backed calls end the task: isError and schema-invalid complete, a JSON-RPC error fails', async () => {
  await withServer(['--tasks', '--latency-ms', '100', '--mode', 'stateful', '--reply', 'json'], async (server) => {
    const outcome = async (fault) => {
      const { taskId } = (await callTask(server, ARGS({ fault }, 1, `task-${fault}`))).message.result;
      await sleep(150);
      return (await get(server, taskId)).message.result;
    };
    const isError = await outcome('is_error');
    assert.equal(isError.status, 'completed');
    assert.equal(isError.result.isError, true);
    assert.equal((await outcome('invalid_result')).result.structuredContent.risk_level, 'purple');
    const failed = await outcome('jsonrpc_error');
    assert.equal(failed.status, 'failed');
    assert.deepEqual(failed.error, { code: -32603, message: 'injected internal error' });
    assert.match(failed.statusMessage, /injected internal error/);
    const session = await legacySession(server, '2025-11-25');
    const { message } = await session.request('tools/call', { name: 'run_diagnosis', arguments: ARGS({ fault: 'jsonrpc_error' }, 1, 'legacy-failed'), task: {} });
    const { message: result } = await session.request('tasks/result', { taskId: message.result.task.taskId });
    assert.deepEqual(result.error, { code: -32603, message: 'injected internal error' }, 'tasks/result returns the call\'s own error');
    assert.deepEqual(server.stats.faults, { is_error: 1, invalid_result: 1, jsonrpc_error: 2 });
    const http = await callTask(server, ARGS({ fault: 'http_503' }, 1, 'task-503'));
    assert.equal(http.status, 503, 'transport-level faults still hit the tools/call itself');
  });
});
