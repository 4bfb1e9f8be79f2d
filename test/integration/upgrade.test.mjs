// Upgrades (issue 14): a database filled by the released 0.1.0 (its own library, worker and install script,
// built from this repository's history by scripts/old_release.sh) is started with the current build, as a DBA
// does after installing the new package, and updated with ALTER EXTENSION pg_diagnosis UPDATE. The updated
// catalog must equal a fresh install object for object (pg_catalog descriptions and pg_dump --schema-only), the
// old rows must be intact, and the updated database must keep working. A failure lists exactly what differs.
// pg_regress on an updated database is `make installcheck-update` (scripts/suites.sh runs it).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import os from 'node:os';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, run, chain, waitTerminal } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';
import { pgTool, snapshotData, dataColumns, diffSnapshots, dumpEntries } from '../lib/pgtools.mjs';
import { describeCatalog, diffCatalogs } from '../lib/catalog.mjs';

// The released version the update starts from, and the commit it was released at: the oldest supported (0.1.0)
// here, 0.2.0 in upgrade_from_0.2.0.test.mjs (PGDIAG_UPGRADE_FROM).
const RELEASES = { '0.1.0': { version: '0.1.0', commit: '678c72b' }, '0.2.0': { version: '0.2.0', commit: '04b08da' } };
const RELEASE = RELEASES[process.env.PGDIAG_UPGRADE_FROM || '0.1.0'];
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

let server;
let cluster;
let currentBindir;
let oldColumns;     // the data tables' columns in the old release
let oldRows;        // every row as the old release left it
let queuedLater;    // runs the old release left queued

before(async () => {
  const releaseBindir = execFileSync('bash', [join(ROOT, 'scripts', 'old_release.sh'), RELEASE.commit,
    join(os.tmpdir(), `pgdiag-release-${RELEASE.version}`)], { encoding: 'utf8' }).trim().split('\n').pop();
  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse']);
  cluster = await startCluster({ bindir: releaseBindir, createExtension: false, settings: {
    'diagnosis.mcp_url': server.url, 'diagnosis.retry_base_delay_ms': 50 } });
  currentBindir = process.env.PGDIAG_PG_BINDIR || execFileSync('pg_config', ['--bindir']).toString().trim();
  await cluster.query(`CREATE EXTENSION pg_diagnosis VERSION '${RELEASE.version}'`);

  // Runs of every kind, by the 0.1.0 worker: completed (one after a retry, one deduplicated), failed, cancelled,
  // and queued for later.
  const { patients } = await createOrganization(cluster, { patients: 12 });
  await cluster.query(`INSERT INTO diagnosis.members VALUES ('pgd_up_admin', (SELECT id FROM diagnosis.organizations), 'admin')`);
  const ids = [];
  for (const p of patients.slice(0, 5)) ids.push(await enqueue(cluster, p, { release: RELEASE.version }));
  ids.push(await enqueue(cluster, patients[5], {}, { key: 'k1' }), await enqueue(cluster, patients[5], {}, { key: 'k1' }));
  ids.push(await enqueue(cluster, patients[6], { fault: 'http_503', fault_attempts: 1 }));
  ids.push(await enqueue(cluster, patients[7], { fault: 'is_error' }), await enqueue(cluster, patients[8], { fault: 'invalid_result' }));
  await waitTerminal(cluster, ids);
  const later = new Date(Date.now() + 86400e3);
  queuedLater = [await enqueue(cluster, patients[9], {}, { runAfter: later }), await enqueue(cluster, patients[10], {}, { runAfter: later })];
  await cluster.query('SELECT diagnosis.cancel_diagnosis($1)', [await enqueue(cluster, patients[11], {}, { runAfter: later })]);

  const client = await cluster.connect();
  try {
    oldColumns = await dataColumns(client);
    oldRows = await snapshotData(client, oldColumns);
  } finally {
    await client.end();
  }
  assert.ok(oldRows.runs.length === 12 && oldRows.artifacts.length >= 20, JSON.stringify(oldRows.runs.length));

  // The package upgrade: the same data directory under the current build, then the update itself.
  cluster.stop();
  cluster.bindir = currentBindir;
  cluster.start();
  await cluster.query('ALTER EXTENSION pg_diagnosis UPDATE');
  await cluster.query('CREATE DATABASE fresh');
  const fresh = await cluster.connect('postgres', 'fresh');
  try {
    await fresh.query('CREATE EXTENSION pg_diagnosis');
  } finally {
    await fresh.end();
  }
}, { timeout: 600000 });

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

async function inDatabase(database, fn) {
  const client = await cluster.connect('postgres', database);
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

test('ALTER EXTENSION UPDATE reaches the default version', async () => {
  const [updated, fresh] = await Promise.all(['postgres', 'fresh'].map((db) => inDatabase(db, async (c) =>
    (await c.query(`SELECT extversion FROM pg_extension WHERE extname = 'pg_diagnosis'`)).rows[0].extversion)));
  assert.equal(updated, fresh);
  assert.notEqual(updated, RELEASE.version);
});

test('the updated catalog equals a fresh install, object for object', async () => {
  const updated = await inDatabase('postgres', describeCatalog);
  const fresh = await inDatabase('fresh', describeCatalog);
  assert.ok(fresh.length > 200, `the description covers the schema (${fresh.length} lines)`);
  const diff = diffCatalogs(updated, fresh, 'updated', 'fresh');
  assert.deepEqual(diff, [], `the update from ${RELEASE.version} differs from a fresh install:\n${diff.join('\n')}`);
});

test('pg_dump --schema-only of the updated and the fresh database are equal (also in binary-upgrade form)', async () => {
  for (const args of [['--schema-only'], ['--schema-only', '--binary-upgrade']]) {
    const updated = dumpEntries(pgTool(cluster, 'pg_dump', [...args, 'postgres']));
    const fresh = dumpEntries(pgTool(cluster, 'pg_dump', [...args, 'fresh']));
    const diff = diffCatalogs(updated, fresh, 'updated', 'fresh');
    assert.deepEqual(diff, [], `pg_dump ${args.join(' ')} differs:\n${diff.join('\n\n')}`);
  }
});

test(`the rows ${RELEASE.version} wrote are intact after the update`, async () => {
  const now = await inDatabase('postgres', (c) => snapshotData(c, oldColumns));
  const diff = diffSnapshots(oldRows, now);
  assert.deepEqual(diff, [], `rows changed by the update:\n${diff.join('\n')}`);
});

test(`the updated database keeps working: ${RELEASE.version} queued runs and new runs complete`, { timeout: 120000 }, async () => {
  await cluster.query('UPDATE diagnosis.runs SET run_after = now() WHERE id = ANY($1)', [queuedLater]);
  const patient = (await cluster.query('SELECT id FROM diagnosis.patients ORDER BY id LIMIT 1')).rows[0].id;
  const ids = [...queuedLater, await enqueue(cluster, patient, { after: 'update' })];
  await waitTerminal(cluster, ids, 60000);
  for (const id of ids) {
    assert.equal((await run(cluster, id)).status, 'completed');
    assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'COMPLETED']);
  }
  assert.deepEqual(await checkGuarantees(cluster), { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0,
    incomplete_artifact_sets: 0, diagnoses_on_unfinished_runs: 0 });
});
