// Backups (issue 14): a database populated through the worker and the reference MCP server is dumped while a
// run is in flight, then restored into fresh clusters twice, with pg_dump -Fc | pg_restore and with plain
// pg_dump | psql. Every table comes back row for row, the identity sequences where they were, the run that was
// running is recovered and finishes, and new work runs to completion on the restored database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, run, chain, waitTerminal } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';
import { pgTool, snapshotData, diffSnapshots } from '../lib/pgtools.mjs';

let server;
let source;
let scratch;
let expected;       // every row of the source, read in the snapshot the dumps were taken in
let inFlight;       // the run that was running when the dumps were taken
let dumpFile;       // pg_dump -Fc
let plainDump;      // pg_dump (a script for psql)
const restored = [];

const WORKER = (url) => ({ 'diagnosis.mcp_url': url, 'diagnosis.retry_base_delay_ms': 50,
  'diagnosis.request_timeout_ms': 120000 });

before(async () => {
  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse', '--hang-ms', '120000']);
  source = await startCluster({ settings: WORKER(server.url) });
  scratch = mkdtempSync(join(os.tmpdir(), 'pgdiag-backup-'));

  // Two organizations, members, an assignment, and a result schema a superuser added.
  const a = await createOrganization(source, { name: 'North', patients: 12 });
  const b = await createOrganization(source, { name: 'South', patients: 4 });
  await source.query('CREATE ROLE pgd_bk_admin LOGIN; CREATE ROLE pgd_bk_clin LOGIN');
  await source.query(`INSERT INTO diagnosis.members VALUES ('pgd_bk_admin', $1, 'admin'),
    ('pgd_bk_clin', $1, 'clinician')`, [a.org]);
  await source.query('INSERT INTO diagnosis.patient_assignments VALUES ($1, $2)', [a.patients[0], 'pgd_bk_clin']);
  await source.query(`INSERT INTO diagnosis.result_schemas SELECT 'v1-copy', schema FROM diagnosis.result_schemas WHERE version = 'v1'`);

  // Runs in every state: completed (one after a retry), failed, cancelled, queued for later, and one in flight.
  const done = [];
  for (const p of a.patients.slice(1, 7)) done.push(await enqueue(source, p, { ward: 'north' }));
  done.push(await enqueue(source, b.patients[0], { ward: 'south' }, { key: 'south-1' }));
  done.push(await enqueue(source, b.patients[0], { ward: 'south' }, { key: 'south-1' })); // DEDUPLICATED
  done.push(await enqueue(source, a.patients[7], { fault: 'http_503', fault_attempts: 1 }));
  done.push(await enqueue(source, a.patients[8], { fault: 'is_error' }));
  done.push(await enqueue(source, a.patients[9], { fault: 'invalid_result' }));
  await waitTerminal(source, done);
  // A sign-off (0.3.0): acknowledgements and their identity sequence travel with the dump too.
  await source.query(`SELECT diagnosis.acknowledge_diagnosis($1, 'seen')`, [done[0]], 'pgd_bk_admin');
  const later = await enqueue(source, a.patients[10], {}, { runAfter: new Date(Date.now() + 86400e3) });
  const cancelled = await enqueue(source, a.patients[11], {}, { runAfter: new Date(Date.now() + 86400e3) });
  await source.query('SELECT diagnosis.cancel_diagnosis($1)', [cancelled]);
  await enqueue(source, b.patients[1], {}, { runAfter: new Date(Date.now() + 86400e3) });
  assert.ok(later);
  // Hangs on attempt 1 only: after the restore it is recovered and attempt 2 completes.
  inFlight = await enqueue(source, b.patients[2], { fault: 'hang', fault_attempts: 1 }, { maxRetries: 2 });
  await source.waitFor(async () => (await run(source, inFlight)).status === 'running', { what: 'the run in flight' });

  // Both dumps and the expected rows from one exported snapshot, so they describe exactly the same state.
  const holder = await source.connect();
  try {
    await holder.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    const snapshot = (await holder.query('SELECT pg_export_snapshot() AS s')).rows[0].s;
    dumpFile = join(scratch, 'source.dump');
    pgTool(source, 'pg_dump', ['-Fc', '-f', dumpFile, `--snapshot=${snapshot}`, 'postgres']);
    plainDump = pgTool(source, 'pg_dump', [`--snapshot=${snapshot}`, 'postgres']);
    expected = await snapshotData(holder);
    await holder.query('COMMIT');
  } finally {
    await holder.end();
  }
  writeFileSync(join(scratch, 'source.sql'), plainDump);
  const counts = Object.fromEntries(Object.entries(expected).map(([t, rows]) => [t, rows.length]));
  assert.ok(counts.runs >= 13 && counts.artifacts >= 20 && counts.audit_log >= 35, JSON.stringify(counts));
  assert.ok(expected.runs.some((r) => r.includes(',running,')), 'the dump holds a running run');
});

after(async () => {
  for (const c of restored) c.destroy();
  source?.destroy();
  await server?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A fresh cluster without workers (nothing moves while the rows are compared), restored by `load`. */
async function restoreInto(load) {
  const cluster = await startCluster({ createExtension: false, settings: { 'diagnosis.workers': 0 } });
  restored.push(cluster);
  load(cluster);
  return cluster;
}

async function assertSameRows(cluster) {
  const client = await cluster.connect();
  try {
    const actual = await snapshotData(client);
    const diff = diffSnapshots(expected, actual);
    assert.deepEqual(diff, [], `restored rows differ from the dump's source:\n${diff.join('\n')}`);
  } finally {
    await client.end();
  }
}

/** Starts the workers on the restored cluster, then checks recovery, new work and the guarantees. */
async function assertWorksAfterRestore(cluster) {
  cluster.stop();
  cluster.setSettings({ 'diagnosis.workers': 1, ...WORKER(server.url) });
  cluster.start();
  await waitTerminal(cluster, [inFlight], 60000);
  assert.equal((await run(cluster, inFlight)).status, 'completed');
  assert.deepEqual(await chain(cluster, inFlight), ['ENQUEUED', 'LOCKED', 'RECOVERED', 'LOCKED', 'COMPLETED']);

  // New work: an observation (identity sequence), an enqueue for a patient with history (audit_log identity,
  // no 23505) and for a new patient; both complete through the worker.
  const maxAudit = Number((await cluster.query('SELECT max(id) AS m FROM diagnosis.audit_log')).rows[0].m);
  const maxObs = Number((await cluster.query('SELECT max(id) AS m FROM diagnosis.observations')).rows[0].m);
  const old = (await cluster.query(`SELECT patient_id FROM diagnosis.runs WHERE status = 'completed' LIMIT 1`)).rows[0].patient_id;
  const obs = (await cluster.query(`INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
    VALUES ($1, 'spo2', 91, '%', now()) RETURNING id`, [old])).rows[0].id;
  assert.equal(Number(obs), maxObs + 1);
  const fresh = await createOrganization(cluster, { name: 'After restore', patients: 1 });
  const ids = [await enqueue(cluster, old, { after: 'restore' }), await enqueue(cluster, fresh.patients[0])];
  await waitTerminal(cluster, ids, 30000);
  for (const id of ids) assert.equal((await run(cluster, id)).status, 'completed');
  // The workers' role is a cluster object, not in the dump: the restore's CREATE EXTENSION created it on the fresh
  // cluster, with the grants and policies of the install script, and the restored database's worker acts as it.
  const worker = (await cluster.query(`SELECT a.usename, r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
                                       WHERE a.backend_type = 'pg_diagnosis worker'`)).rows;
  assert.deepEqual(worker, [{ usename: 'diagnosis_worker', rolsuper: false }]);
  const newAudit = (await cluster.query('SELECT min(id) AS m FROM diagnosis.audit_log WHERE run_id = ANY($1)', [ids])).rows[0].m;
  assert.ok(Number(newAudit) > maxAudit, `new audit ids continue after ${maxAudit}, got ${newAudit}`);
  // The result schema a superuser added came back beside the shipped v1 (not twice).
  assert.equal((await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.result_schemas`)).rows[0].n, 2);
  assert.deepEqual(await checkGuarantees(cluster), { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0,
    incomplete_artifact_sets: 0, diagnoses_on_unfinished_runs: 0 });
  // Normal sessions still cannot write artifacts after the restore, superusers included.
  await assert.rejects(cluster.query(`INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id,
      artifact_type, artifact_data, content_sha256)
    SELECT id, patient_id, organization_id, 'mcp_response', '{}', 'x' FROM diagnosis.runs WHERE id = $1`, [ids[0]]),
  (error) => error.code === '42501');
}

test('pg_dump -Fc, pg_restore into a fresh cluster: every row and sequence, recovery, new work', { timeout: 180000 }, async () => {
  const cluster = await restoreInto((c) => pgTool(c, 'pg_restore', ['--exit-on-error', '-d', 'postgres', dumpFile]));
  await assertSameRows(cluster);
  await assertWorksAfterRestore(cluster);
});

test('pg_dump | psql into a fresh cluster: every row and sequence, recovery, new work', { timeout: 180000 }, async () => {
  const cluster = await restoreInto((c) => pgTool(c, 'psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', 'postgres'], { input: plainDump }));
  await assertSameRows(cluster);
  await assertWorksAfterRestore(cluster);
});

test('pg_dump --inserts is refused at the artifacts (README "Backup and restore": not supported)', async () => {
  const inserts = pgTool(source, 'pg_dump', ['--inserts', 'postgres']);
  const cluster = await startCluster({ createExtension: false, settings: { 'diagnosis.workers': 0 } });
  restored.push(cluster);
  assert.throws(() => pgTool(cluster, 'psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', 'postgres'], { input: inserts }),
    /only a pg_diagnosis worker writes artifacts/);
});

test('the dump carries every data table of the diagnosis schema', async () => {
  const toc = pgTool(source, 'pg_restore', ['-l', dumpFile]);
  for (const t of ['organizations', 'members', 'patients', 'patient_assignments', 'observations', 'result_schemas',
    'runs', 'artifacts', 'audit_log', 'acknowledgements']) {
    assert.match(toc, new RegExp(`TABLE DATA diagnosis ${t} `), `no TABLE DATA for diagnosis.${t}`);
  }
  for (const s of ['observations_id_seq', 'audit_log_id_seq', 'acknowledgements_id_seq']) {
    assert.match(toc, new RegExp(`SEQUENCE SET diagnosis ${s} `), `no SEQUENCE SET for diagnosis.${s}`);
  }
});
