// Liveness under real operations (issue 13): a terminated worker comes back; a dropped database is waited for
// quietly and served again once re-created; a clean restart keeps attempts; live workers recover expired leases
// and runs of workers that are gone (by per-start token, not pid); no busy loop in any idle state; 3000 calls in
// flight at a soft descriptor limit of 1024 with no failed run; the WARNINGs a DBA needs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
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

/** The minimal endpoint (bench/fast-mcp.mjs) answering after `delayMs`, with room for thousands of sockets. */
function startFastEndpoint(delayMs) {
  const script = fileURLToPath(new URL('../../bench/fast-mcp.mjs', import.meta.url));
  return new Promise((resolve, reject) => {
    const proc = spawn('prlimit', ['--nofile=20000:20000', process.execPath, script, '--delay-ms', String(delayMs)],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.on('error', reject);
    proc.on('exit', (code) => reject(new Error(`the endpoint exited with code ${code}`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/MCP_URL=(\S+)/);
      if (m) {
        const url = m[1];
        resolve({
          url,
          stats: async () => (await fetch(url.replace(/\/mcp$/, '/stats'))).json(),
          stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }),
        });
      }
    });
  });
}

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (CLK_TCK = 100)
}

/** CPU share of one core the worker used over `ms`. */
async function workerCpuShare(cluster, ms = 3000) {
  const [pid] = await cluster.workerPids();
  const before = cpuSeconds(pid);
  await new Promise((r) => setTimeout(r, ms));
  return (cpuSeconds(pid) - before) / (ms / 1000);
}

async function workerState(cluster) {
  return (await cluster.query('SELECT * FROM diagnosis.worker_status()')).rows[0];
}

/** Queries in another database of the cluster, shaped like a Cluster for the fixtures. */
function inDatabase(cluster, database) {
  return {
    waitFor: cluster.waitFor.bind(cluster),
    async query(sql, params = []) {
      const client = await cluster.connect('postgres', database);
      try {
        return await client.query(sql, params);
      } finally {
        await client.end();
      }
    },
  };
}

test('a terminated worker comes back by itself and serves again', { timeout: 60000 }, async () => {
  const server = await startMcpServer([]);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url } });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: 2 });
  const [pid] = await cluster.workerPids();
  await cluster.query('SELECT pg_terminate_backend($1)', [pid]);
  const newPid = await cluster.waitFor(async () => {
    const pids = await cluster.workerPids();
    return pids.length === 1 && pids[0] !== pid ? pids[0] : null;
  }, { what: 'a new worker' });
  assert.notEqual(newPid, pid);
  const id = await enqueue(cluster, patients[0]);
  await waitTerminal(cluster, [id]);
  assert.equal((await run(cluster, id)).status, 'completed');
});

test('DROP DATABASE ... WITH (FORCE): the worker waits quietly, then serves the re-created database', { timeout: 90000 }, async () => {
  const server = await startMcpServer([]);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ createExtension: false,
    settings: { 'diagnosis.mcp_url': server.url, 'diagnosis.database': 'clinical', 'diagnosis.poll_interval_ms': 200 } });
  cleanups.push(async () => cluster.destroy());
  const clinical = inDatabase(cluster, 'clinical');
  // worker_status() is read from 'postgres' (shared memory is the same in every database).
  await cluster.query('CREATE EXTENSION pg_diagnosis');
  await cluster.query('CREATE DATABASE clinical');
  await clinical.query('CREATE EXTENSION pg_diagnosis');
  await cluster.waitFor(async () => (await workerState(cluster))?.state === 'idle', { what: 'an idle worker' });

  const logBefore = cluster.log().length;
  await cluster.query('DROP DATABASE clinical WITH (FORCE)');
  await cluster.waitFor(async () => (await workerState(cluster))?.state === 'waiting_for_database',
    { what: 'the worker waiting for its database' });
  // Several poll intervals and restart intervals pass: one FATAL at most, one LOG line, no busy loop.
  const share = await workerCpuShare(cluster, 3000);
  const log = cluster.log().slice(logBefore);
  const fatals = log.split('\n').filter((l) => /FATAL:.*database "clinical" does not exist/.test(l)).length;
  const waits = log.split('\n').filter((l) => l.includes('database "clinical" does not exist; the worker waits')).length;
  assert.ok(fatals <= 1, `${fatals} FATAL lines`);
  assert.equal(waits, 1);
  assert.ok(share < 0.05, `waiting for the database used ${(share * 100).toFixed(1)} % of a core`);

  await cluster.query('CREATE DATABASE clinical');
  await clinical.query('CREATE EXTENSION pg_diagnosis');
  const { patients } = await createOrganization(clinical, { patients: 1 });
  const id = await enqueue(clinical, patients[0]);
  await waitTerminal(clinical, [id], 30000);
  assert.equal((await run(clinical, id)).status, 'completed');
});

test('diagnosis.database missing at server start: one FATAL, one LOG line, then the worker waits without restarting', { timeout: 90000 }, async () => {
  const server = await startMcpServer([]);
  cleanups.push(() => server.stop());
  // A fresh server has no relation cache init file yet: a worker connected to no database has the shared catalogs
  // but not their indexes, so the look for the database must not need one (it died every second in 0.2.0).
  const cluster = await startCluster({ createExtension: false,
    settings: { 'diagnosis.mcp_url': server.url, 'diagnosis.database': 'later', 'diagnosis.poll_interval_ms': 200 } });
  cleanups.push(async () => cluster.destroy());
  await cluster.query('CREATE EXTENSION pg_diagnosis');
  const waiting = await cluster.waitFor(async () => {
    const w = await workerState(cluster);
    return w?.state === 'waiting_for_database' ? w : null;
  }, { what: 'the worker waiting for its database' });
  const share = await workerCpuShare(cluster, 3000);
  assert.equal((await workerState(cluster)).pid, waiting.pid, 'the waiting worker restarted');
  const log = cluster.log();
  const fatals = log.split('\n').filter((l) => l.includes('FATAL:'));
  assert.ok(fatals.length <= 1, fatals.join('\n'));
  assert.equal(log.split('\n').filter((l) => l.includes('database "later" does not exist; the worker waits')).length, 1);
  assert.ok(share < 0.05, `waiting for the database used ${(share * 100).toFixed(1)} % of a core`);

  const later = inDatabase(cluster, 'later');
  await cluster.query('CREATE DATABASE later');
  await later.query('CREATE EXTENSION pg_diagnosis');
  const { patients } = await createOrganization(later, { patients: 1 });
  const id = await enqueue(later, patients[0]);
  await waitTerminal(later, [id], 30000);
  assert.equal((await run(later, id)).status, 'completed');
});

test('a clean restart keeps attempts: a max_retries => 0 run in flight completes after it', { timeout: 90000 }, async () => {
  const server = await startMcpServer(['--latency-ms', '20000']);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url } });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: 1 });
  const id = await enqueue(cluster, patients[0], {}, { maxRetries: 0 });
  await cluster.waitFor(async () => (await run(cluster, id)).status === 'running', { what: 'the run in flight' });
  cluster.stop('fast');
  await server.configure({ latency_ms: 0 });
  cluster.start();
  await waitTerminal(cluster, [id], 30000);
  const r = await run(cluster, id);
  assert.equal(r.status, 'completed');
  assert.equal(r.attempt, 1);
  assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'RECOVERED', 'LOCKED', 'COMPLETED']);
  const back = (await cluster.query("SELECT details FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'RECOVERED'", [id])).rows[0];
  assert.equal(back.details.reason, 'worker shut down');
  assert.equal(back.details.attempt_kept, true);
});

test('live workers recover an expired lease, and runs of a worker that is gone by token, even with a live pid', { timeout: 90000 }, async () => {
  const server = await startMcpServer(['--latency-ms', '4000']);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, 'diagnosis.poll_interval_ms': 200 } });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: 2 });
  const expired = await enqueue(cluster, patients[0]);
  const foreign = await enqueue(cluster, patients[1]);
  await cluster.waitFor(async () => (await cluster.query(
    "SELECT count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) AND status = 'running'", [[expired, foreign]])).rows[0].n === 2,
  { what: 'both runs in flight' });
  // What a failed finalize leaves behind (a lease that ran out), and what a pid namespace reuse looks like (the
  // live worker's pid, another start's token): set up by a superuser with the guard aside.
  await cluster.query(`
    ALTER TABLE diagnosis.runs DISABLE TRIGGER runs_state_machine;
    UPDATE diagnosis.runs SET lease_expires_at = now() - interval '1 second' WHERE id = '${expired}';
    UPDATE diagnosis.runs SET worker_token = 12345 WHERE id = '${foreign}';
    ALTER TABLE diagnosis.runs ENABLE TRIGGER runs_state_machine;`);
  await waitTerminal(cluster, [expired, foreign], 30000);
  const reasons = (await cluster.query(`SELECT run_id, details->>'reason' AS reason FROM diagnosis.audit_log
    WHERE event = 'RECOVERED' AND run_id = ANY($1)`, [[expired, foreign]])).rows;
  assert.deepEqual(Object.fromEntries(reasons.map((r) => [r.run_id, r.reason])),
    { [expired]: 'lease expired', [foreign]: 'worker exited' });
  for (const id of [expired, foreign]) {
    assert.equal((await run(cluster, id)).status, 'completed');
    assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'RECOVERED', 'LOCKED', 'COMPLETED']);
  }
  assert.deepEqual(await checkGuarantees(cluster), CLEAN);
});

test('no busy loop: the worker sleeps in every idle state', { timeout: 120000 }, async () => {
  const server = await startMcpServer(['--latency-ms', '30000']);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ createExtension: false, settings: { 'diagnosis.mcp_url': server.url } });
  cleanups.push(async () => cluster.destroy());
  const shares = {};
  shares['no extension'] = await workerCpuShare(cluster);
  await cluster.query('CREATE EXTENSION pg_diagnosis');
  const { patients } = await createOrganization(cluster, { patients: 4 });

  await cluster.reload({ 'diagnosis.enabled': false });
  await enqueue(cluster, patients[0], { n: 'paused' });
  shares['paused, a run due'] = await workerCpuShare(cluster);

  await cluster.reload({ 'diagnosis.enabled': true, 'diagnosis.mcp_url': '' });
  shares['no endpoint, a run due'] = await workerCpuShare(cluster);
  await cluster.query("UPDATE diagnosis.runs SET status = 'cancelled', completed_at = now() WHERE status = 'queued'");

  // A due run that another transaction holds locked: the claim skips it and must not retry at once.
  const locked = await enqueue(cluster, patients[1], { n: 'locked' });
  const holder = await cluster.connect();
  cleanups.push(() => holder.end().catch(() => {}));
  await holder.query('BEGIN');
  await holder.query('SELECT id FROM diagnosis.runs WHERE id = $1 FOR UPDATE', [locked]);
  await cluster.reload({ 'diagnosis.mcp_url': server.url });
  shares['due run locked by another transaction'] = await workerCpuShare(cluster);
  await holder.query('COMMIT');

  await cluster.waitFor(async () => (await run(cluster, locked)).status === 'running', { what: 'the run in flight' });
  shares['calls in flight'] = await workerCpuShare(cluster);

  console.log(`worker CPU (share of one core over 3 s): ${JSON.stringify(shares)}`);
  for (const [state, share] of Object.entries(shares)) assert.ok(share < 0.05, `${state}: ${(share * 100).toFixed(1)} % of a core`);
});

test('3000 calls in flight at a soft descriptor limit of 1024: every run completes, none fails', { timeout: 240000 }, async () => {
  const endpoint = await startFastEndpoint(2000);
  cleanups.push(() => endpoint.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': endpoint.url, 'diagnosis.max_inflight': 3000 } });
  cleanups.push(async () => cluster.destroy());
  const [pid] = await cluster.workerPids();
  const limits = readFileSync(`/proc/${pid}/limits`, 'utf8');
  const status = await workerState(cluster);
  console.log(`worker: call_limit ${status.call_limit}, fd_limit ${status.fd_limit}; ${limits.split('\n').find((l) => l.startsWith('Max open files'))}`);
  assert.equal(status.call_limit, 3000);
  assert.ok(status.fd_limit > 1024);

  const { patients } = await createOrganization(cluster, { patients: 3000 });
  const started = Date.now();
  await cluster.query("SELECT diagnosis.enqueue_diagnosis(p) FROM unnest($1::uuid[]) p", [patients]);
  await cluster.waitFor(async () => (await cluster.query(
    "SELECT count(*)::int AS n FROM diagnosis.runs WHERE status IN ('queued', 'running')")).rows[0].n === 0,
  { timeout: 180000, interval: 200, what: '3000 runs' });
  const seconds = (Date.now() - started) / 1000;
  const counts = (await cluster.query('SELECT status, count(*)::int AS n FROM diagnosis.runs GROUP BY status')).rows;
  const stats = await endpoint.stats();
  console.log(`3000 runs in ${seconds.toFixed(1)} s (${(3000 / seconds).toFixed(0)} runs/s; Little's law: 1500 runs/s), ` +
    `at most ${stats.max_inflight} calls in flight at the endpoint, ${stats.total_calls} calls`);
  assert.deepEqual(counts, [{ status: 'completed', n: 3000 }]);
  assert.equal(stats.total_calls, 3000);
  assert.ok(stats.max_inflight > 1024, `only ${stats.max_inflight} calls were ever in flight`);
  assert.doesNotMatch(cluster.log(), /out of file descriptors/);
});

test('WARNINGs: CREATE EXTENSION outside diagnosis.database, and too few worker slots', { timeout: 60000 }, async () => {
  const cluster = await startCluster({ settings: { 'diagnosis.workers': 4, max_worker_processes: 3 } });
  cleanups.push(async () => cluster.destroy());
  assert.match(cluster.log(), /WARNING: {2}pg_diagnosis: only \d of the 4 workers of diagnosis\.workers can start/);
  assert.match(cluster.log(), /Raise max_worker_processes \(now 3\)/);
  await cluster.query('CREATE DATABASE elsewhere');
  const client = await cluster.connect('postgres', 'elsewhere');
  const notices = [];
  client.on('notice', (n) => notices.push(n));
  await client.query('CREATE EXTENSION pg_diagnosis');
  await client.end();
  assert.equal(notices.length, 1);
  assert.equal(notices[0].severity, 'WARNING');
  assert.equal(notices[0].message, 'pg_diagnosis workers run in database "postgres", not in "elsewhere"');
});
