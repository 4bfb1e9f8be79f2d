// Crash safety with calls in flight: SIGTERM hands runs back; kill -9 of a worker makes the postmaster restart
// the cluster and every run is recovered at once (not after the lease) and finishes exactly once; several
// workers never double-claim.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, chain, waitTerminal } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function setUp(settings = {}, serverArgs = []) {
  const server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse', ...serverArgs]);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, ...settings } });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: 40 });
  return { server, cluster, patients };
}

async function runningCount(cluster, ids) {
  return (await cluster.query("SELECT count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) AND status = 'running'", [ids])).rows[0].n;
}

test('SIGTERM with calls in flight: the runs are handed back and finish exactly once after restart', { timeout: 120000 }, async () => {
  const { server, cluster, patients } = await setUp({}, ['--latency-ms', '20000']);
  const ids = [];
  for (const p of patients.slice(0, 5)) ids.push(await enqueue(cluster, p, { sigterm: true }));
  await cluster.waitFor(async () => (await runningCount(cluster, ids)) === 5, { what: 'runs in flight' });
  cluster.stop('fast'); // SIGTERM to the worker: 5 s grace, then hand back
  const handedBack = (await (async () => {
    cluster.start();
    return cluster.query("SELECT count(*)::int AS n FROM diagnosis.audit_log WHERE event = 'RECOVERED' AND details->>'reason' = 'worker shut down'");
  })()).rows[0].n;
  assert.equal(handedBack, 5);
  await server.configure({ latency_ms: 0 });
  await waitTerminal(cluster, ids, 60000);
  for (const id of ids) {
    assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'RECOVERED', 'LOCKED', 'COMPLETED']);
  }
  assert.deepEqual(await checkGuarantees(cluster), { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0,
    incomplete_artifact_sets: 0, diagnoses_on_unfinished_runs: 0 });
});

test('kill -9 of a worker with calls in flight: recovered at once after the crash restart, finished exactly once', { timeout: 120000 }, async () => {
  const { server, cluster, patients } = await setUp({ 'diagnosis.request_timeout_ms': 300000 }, ['--latency-ms', '30000']);
  const ids = [];
  for (const p of patients.slice(0, 8)) ids.push(await enqueue(cluster, p, { kill: true }));
  await cluster.waitFor(async () => (await runningCount(cluster, ids)) === 8, { what: 'runs in flight' });
  const [pid] = await cluster.workerPids();
  const killedAt = Date.now();
  process.kill(pid, 'SIGKILL');
  // The postmaster resets the whole cluster; wait until the runs are back in the queue (or already re-claimed).
  await cluster.waitFor(async () => {
    const r = await cluster.query("SELECT count(*)::int AS n FROM diagnosis.audit_log WHERE event = 'RECOVERED' AND run_id = ANY($1)", [ids]);
    return r.rows[0].n === 8;
  }, { timeout: 30000, interval: 20, what: 'recovery' });
  const recoveryMs = Date.now() - killedAt;
  console.log(`# kill -9 -> all 8 runs recovered in ${recoveryMs} ms (lease would have been ${300000 + 60000} ms)`);
  assert.ok(recoveryMs < 15000, `recovery took ${recoveryMs} ms`);
  await server.configure({ latency_ms: 0 });
  await waitTerminal(cluster, ids, 60000);
  for (const id of ids) {
    const events = await chain(cluster, id);
    assert.equal(events.filter((e) => e === 'COMPLETED').length, 1, events.join(','));
    assert.equal(events.at(-1), 'COMPLETED');
    assert.ok(events.includes('RECOVERED'));
  }
  assert.deepEqual(await checkGuarantees(cluster), { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0,
    incomplete_artifact_sets: 0, diagnoses_on_unfinished_runs: 0 });
});

test('three workers never double-claim: 300 runs, one LOCKED per attempt, one call each', { timeout: 120000 }, async () => {
  const { server, cluster, patients } = await setUp({ 'diagnosis.workers': 3, 'diagnosis.max_inflight': 16 }, ['--latency-ms', '5']);
  assert.equal((await cluster.query('SELECT count(*)::int AS n FROM diagnosis.worker_status()')).rows[0].n, 3);
  const ids = (await cluster.query(`
    SELECT diagnosis.enqueue_diagnosis(p, jsonb_build_object('n', n)) AS id
    FROM unnest($1::uuid[]) p, generate_series(1, 8) n`, [patients.slice(0, 38)])).rows.map((r) => r.id);
  assert.equal(ids.length, 304);
  await waitTerminal(cluster, ids, 60000);
  const r = (await cluster.query(`
    SELECT count(*) FILTER (WHERE status = 'completed')::int AS completed,
           (SELECT count(*)::int FROM diagnosis.audit_log WHERE event = 'LOCKED' AND run_id = ANY($1)) AS locked,
           (SELECT count(DISTINCT worker_pid)::int FROM diagnosis.runs WHERE id = ANY($1)) AS workers_used
    FROM diagnosis.runs WHERE id = ANY($1)`, [ids])).rows[0];
  assert.equal(r.completed, 304);
  assert.equal(r.locked, 304);
  const stats = await server.stats();
  assert.ok(ids.every((id) => JSON.stringify(stats.calls[id]) === '{"1":1}'), 'one call per run');
  console.log(`# 304 runs over ${r.workers_used} workers`);
  assert.deepEqual(await checkGuarantees(cluster), { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0,
    incomplete_artifact_sets: 0, diagnoses_on_unfinished_runs: 0 });
});

test('JSON replies from a stateless server, and a legacy stateful server whose sessions expire every 2 calls', { timeout: 120000 }, async () => {
  for (const args of [['--mode', 'stateless', '--reply', 'json'], ['--era', 'legacy', '--session-expiry-calls', '2']]) {
    const { server, cluster, patients } = await setUp({}, args);
    const ids = [];
    for (const p of patients.slice(0, 10)) ids.push(await enqueue(cluster, p, { mode: args.join(' ') }));
    await waitTerminal(cluster, ids);
    const done = (await cluster.query("SELECT count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) AND status = 'completed'", [ids])).rows[0].n;
    assert.equal(done, 10, args.join(' '));
    const stats = await server.stats();
    if (args.includes('--session-expiry-calls')) assert.ok(stats.initialize > 1, `initialize ${stats.initialize}`);
  }
});
