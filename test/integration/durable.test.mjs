// Durable calls (issue 16): against an endpoint that offers the tasks extension, the worker commits each task id
// with its run and, after a kill -9 or an immediate server restart, polls the task instead of calling again, so
// the MCP server sees exactly one tools/call per run; running runs are cancelled in both eras (and as tasks); each
// call carries a traceparent the server sees and the attempt's audit row stores.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, chain, waitTerminal, run } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const CLEAN = { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0, incomplete_artifact_sets: 0,
  diagnoses_on_unfinished_runs: 0 };

async function setUp(serverArgs, settings = {}, patients = 10) {
  const taskDir = mkdtempSync(join(os.tmpdir(), 'pgdiag-tasks-'));
  cleanups.push(() => rmSync(taskDir, { recursive: true, force: true }));
  const server = await startMcpServer([...serverArgs, '--task-dir', taskDir]);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, ...settings } });
  cleanups.push(async () => cluster.destroy());
  const org = await createOrganization(cluster, { patients });
  return { server, cluster, ...org };
}

/** tools/call requests the server received for each run, all attempts together. */
function callsPerRun(stats) {
  const out = {};
  for (const [runId, attempts] of Object.entries(stats.calls ?? {})) {
    out[runId] = Object.values(attempts).reduce((a, b) => a + b, 0);
  }
  return out;
}

async function countWhere(cluster, ids, condition) {
  return (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) AND ${condition}`, [ids])).rows[0].n;
}

for (const era of ['modern', 'legacy']) {
  for (const crash of ['kill -9 of the worker', 'pg_ctl stop -m immediate']) {
    test(`${era} tasks: ${crash} with 100 task-backed runs in flight; each run called exactly once`, { timeout: 180000 }, async () => {
      const { server, cluster, patients } = await setUp(['--era', era === 'modern' ? 'dual' : 'legacy', '--tasks',
        '--latency-ms', '6000', '--task-poll-ms', '200'], { 'diagnosis.max_inflight': 128 }, 100);
      const ids = [];
      for (const p of patients) ids.push(await enqueue(cluster, p, { durable: crash }));
      await cluster.waitFor(async () => (await countWhere(cluster, ids, "status = 'running' AND mcp_task_id IS NOT NULL")) === 100,
        { timeout: 60000, what: 'every task committed' });
      const status = (await cluster.query('SELECT mcp_era, mcp_protocol_version FROM diagnosis.worker_status()')).rows[0];
      assert.equal(status.mcp_era, era);
      if (crash.startsWith('kill')) {
        const [pid] = await cluster.workerPids();
        process.kill(pid, 'SIGKILL');
      } else {
        cluster.stop('immediate');
        cluster.start();
      }
      await waitTerminal(cluster, ids, 120000);
      assert.equal(await countWhere(cluster, ids, "status = 'completed'"), 100);
      const stats = await server.stats();
      const calls = callsPerRun(stats);
      const repeated = ids.filter((id) => calls[id] !== 1);
      console.log(`${era}, ${crash}: 100 runs, ${Object.values(calls).reduce((a, b) => a + b, 0)} tools/call, ` +
        `${stats.total_task_polls} task polls, ${repeated.length} runs called more than once`);
      assert.deepEqual(repeated, []);
      for (const id of ids.slice(0, 5)) {
        assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'RECOVERED', 'LOCKED', 'COMPLETED']);
      }
      assert.deepEqual(await checkGuarantees(cluster), CLEAN);
    });
  }
}

test('an expired or unknown task falls back to a new call in a new attempt', { timeout: 90000 }, async () => {
  const { server, cluster, patients } = await setUp(['--tasks', '--latency-ms', '3000', '--task-poll-ms', '200']);
  const id = await enqueue(cluster, patients[0]);
  await cluster.waitFor(async () => (await run(cluster, id)).mcp_task_id, { what: 'the task committed' });
  // A crash; the server has forgotten the task meanwhile (as after its ttl): restart paused, point the queued run
  // at a task the server does not know, resume.
  cluster.stop('immediate');
  cluster.setSettings({ 'diagnosis.enabled': false });
  cluster.start();
  await cluster.waitFor(async () => (await run(cluster, id)).status === 'queued', { what: 'the run recovered' });
  await cluster.query("UPDATE diagnosis.runs SET mcp_task_id = 'no-such-task' WHERE id = $1", [id]);
  await cluster.reload({ 'diagnosis.enabled': true });
  await waitTerminal(cluster, [id], 60000);
  const r = await run(cluster, id);
  assert.equal(r.status, 'completed');
  assert.equal(r.attempt, 3, 'attempt 1 created the task, attempt 2 found it lost, attempt 3 called again');
  assert.equal(callsPerRun(await server.stats())[id], 2, 'the lost task is replaced by exactly one new call');
});

const CANCEL_CASES = [
  { name: 'modern era, direct call (the stream is closed)', args: ['--era', 'dual'], how: 'stream_closed' },
  { name: 'legacy era, direct call (notifications/cancelled)', args: ['--era', 'legacy'], how: 'notifications/cancelled' },
  { name: 'modern era, task-backed call (tasks/cancel)', args: ['--era', 'dual', '--tasks'], how: 'tasks/cancel' },
];
for (const c of CANCEL_CASES) {
  test(`cancel a running run: ${c.name}`, { timeout: 60000 }, async () => {
    const { server, cluster, org, patients } = await setUp([...c.args, '--latency-ms', '30000']);
    await cluster.query('CREATE ROLE canceller LOGIN');
    await cluster.query("INSERT INTO diagnosis.members VALUES ('canceller', $1, 'admin')", [org]);
    const id = await enqueue(cluster, patients[0]);
    // In flight at the server (a call still waiting for the session would be cancelled without a message).
    await cluster.waitFor(async () => {
      const r = await run(cluster, id);
      return r.status === 'running' && (await server.stats()).calls?.[id] &&
        (!c.args.includes('--tasks') || r.mcp_task_id);
    }, { what: 'the run in flight' });
    const started = Date.now();
    const client = await cluster.connect('canceller');
    assert.equal((await client.query('SELECT diagnosis.cancel_diagnosis($1) AS ok', [id])).rows[0].ok, true);
    await client.end();
    await waitTerminal(cluster, [id], 20000);
    const elapsed = Date.now() - started;
    const r = await run(cluster, id);
    assert.equal(r.status, 'cancelled');
    assert.ok(elapsed < 10000, `cancelled after ${elapsed} ms, not when the 30 s call ended`);
    const audit = (await cluster.query("SELECT actor, status_from FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'CANCELLED'", [id])).rows;
    assert.deepEqual(audit, [{ actor: 'canceller', status_from: 'running' }]);
    assert.equal((await cluster.query("SELECT count(*)::int AS n FROM diagnosis.artifacts WHERE run_id = $1 AND artifact_type = 'diagnosis_json'", [id])).rows[0].n, 0);
    await cluster.waitFor(async () => (await server.stats()).cancellations?.[id], { timeout: 10000, what: 'the server to see the cancel' });
    const seen = (await server.stats()).cancellations[id];
    assert.ok(JSON.stringify(seen).includes(c.how), `the server saw ${JSON.stringify(seen)}`);
  });
}

test('traceparent: derived from the run id, one span per attempt, sent as header and _meta, stored with LOCKED', { timeout: 60000 }, async () => {
  const { server, cluster, patients } = await setUp(['--era', 'dual']);
  const id = await enqueue(cluster, patients[0], { fault: 'http_503', fault_attempts: 1 }, { maxRetries: 1 });
  await cluster.reload({ 'diagnosis.retry_base_delay_ms': 10 });
  await waitTerminal(cluster, [id], 30000);
  assert.equal((await run(cluster, id)).status, 'completed');
  const locked = (await cluster.query("SELECT attempt, details->>'traceparent' AS tp FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'LOCKED' ORDER BY id", [id])).rows;
  const hex = id.replace(/-/g, '');
  assert.deepEqual(locked.map((l) => l.tp), [`00-${hex}-0000000000000001-01`, `00-${hex}-0000000000000002-01`]);
  const traces = (await server.stats()).traces[id];
  const completedAttempt = traces.find((t) => String(t.attempt) === '2');
  assert.equal(completedAttempt.header, locked[1].tp);
  assert.equal(completedAttempt.meta, locked[1].tp);
});
