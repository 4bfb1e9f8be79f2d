// Reading runs at scale (0.3.0): with 1,000,000 runs, a patient's history and a requester's runs are index scans
// that touch a handful of pages, for a superuser and under a clinician's row-level security alike. The runs are
// written by the superuser with one INSERT ... SELECT, as a restore writes them: session_replication_role =
// replica skips the foreign-key triggers (every patient and organization exists by construction; checked once
// below), the state machine guards updates and deletes, not inserts, and every CHECK constraint and index applies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';

const RUNS = 1_000_000;
const PATIENTS = 10_000; // 100 runs each
const REQUESTERS = 50;
let cluster;
let patient;

before(async () => {
  // No endpoint: the worker idles; nothing but the statements below touches the runs.
  cluster = await startCluster({ settings: { 'diagnosis.workers': 0, shared_buffers: '256MB', max_wal_size: '4GB' } });
  await cluster.query(`INSERT INTO diagnosis.organizations (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'Scale')`);
  await cluster.query(`INSERT INTO diagnosis.patients (organization_id, display_name)
                       SELECT '00000000-0000-0000-0000-00000000000a', 'Patient ' || n FROM generate_series(1, $1) n`, [PATIENTS]);
  const started = Date.now();
  // A finished history over two years: completed runs, some failed, a few still queued.
  const client = await cluster.connect();
  try {
    await client.query('SET session_replication_role = replica');
    await client.query(`
    INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, status, inputs, inputs_hash, max_retries,
                                attempt, error_code, created_at, run_after, started_at, completed_at, updated_at)
    SELECT ps.ids[1 + n % $2], '00000000-0000-0000-0000-00000000000a', 'pgd_scale_clin_' || (n % $3),
           s.status, '{}', md5(n::text), 3, CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
           CASE WHEN s.status = 'failed' THEN 'NETWORK_ERROR' END, t.at, t.at,
           CASE WHEN s.status <> 'queued' THEN t.at END, CASE WHEN s.status <> 'queued' THEN t.at + interval '5 s' END, t.at
    FROM generate_series(1, $1) n
    CROSS JOIN (SELECT array_agg(id ORDER BY id) AS ids FROM diagnosis.patients) ps
    CROSS JOIN LATERAL (SELECT now() - interval '2 years' * (1 - n::float8 / $1) AS at) t
    CROSS JOIN LATERAL (SELECT CASE WHEN n % 100 = 0 THEN 'failed' WHEN n > $1 - 1000 THEN 'queued' ELSE 'completed' END AS status) s`,
  [RUNS, PATIENTS, REQUESTERS]);
  } finally {
    await client.end();
  }
  // What the skipped foreign keys would have checked.
  const orphans = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.runs r
    WHERE NOT EXISTS (SELECT 1 FROM diagnosis.patients p WHERE p.id = r.patient_id AND p.organization_id = r.organization_id)`)).rows[0].n;
  assert.equal(orphans, 0);
  await cluster.query('ANALYZE diagnosis.runs');
  console.log(`inserted ${RUNS} runs in ${Date.now() - started} ms`);
  patient = (await cluster.query('SELECT id FROM diagnosis.patients ORDER BY id LIMIT 1 OFFSET 4321')).rows[0].id;
  await cluster.query('CREATE ROLE pgd_scale_clin_7 LOGIN; CREATE ROLE pgd_scale_admin LOGIN');
  await cluster.query(`INSERT INTO diagnosis.members VALUES ('pgd_scale_clin_7', '00000000-0000-0000-0000-00000000000a', 'clinician'),
                                                           ('pgd_scale_admin', '00000000-0000-0000-0000-00000000000a', 'admin')`);
  await cluster.query(`INSERT INTO diagnosis.patient_assignments VALUES ($1, 'pgd_scale_clin_7')`, [patient]);
});

after(() => cluster?.destroy());

/** EXPLAIN (ANALYZE, BUFFERS) of a query as a role: the plan's node types and index names, pages touched, time. */
async function explain(sql, params, role = 'postgres') {
  const plan = (await cluster.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`, params, role)).rows[0]['QUERY PLAN'][0];
  const nodes = [];
  const walk = (n) => { nodes.push(n); (n.Plans || []).forEach(walk); };
  walk(plan.Plan);
  const pages = plan.Plan['Shared Hit Blocks'] + plan.Plan['Shared Read Blocks'];
  return { nodes, pages, ms: plan['Execution Time'], rows: plan.Plan['Actual Rows'] };
}

const HISTORY = `SELECT id, status, created_at FROM diagnosis.runs WHERE patient_id = $1 ORDER BY created_at DESC LIMIT 20`;
const MINE = `SELECT id, status, created_at FROM diagnosis.runs WHERE requested_by = $1 ORDER BY created_at DESC LIMIT 20`;

test('1,000,000 runs are there', async () => {
  const r = (await cluster.query('SELECT count(*)::int AS n, count(DISTINCT patient_id)::int AS patients FROM diagnosis.runs')).rows[0];
  assert.deepEqual(r, { n: RUNS, patients: PATIENTS });
});

for (const [who, role] of [['a superuser', 'postgres'], ['the assigned clinician (row-level security)', 'pgd_scale_clin_7'],
  ['an admin (row-level security)', 'pgd_scale_admin']]) {
  test(`a patient's last 20 runs: an index scan of runs_patient_history_idx for ${who}`, async (t) => {
    const e = await explain(HISTORY, [patient], role);
    const scans = e.nodes.filter((n) => /Scan/.test(n['Node Type']) && n['Relation Name'] === 'runs');
    assert.ok(scans.length === 1 && scans[0]['Node Type'] === 'Index Scan' && scans[0]['Index Name'] === 'runs_patient_history_idx',
      JSON.stringify(scans.map((n) => [n['Node Type'], n['Index Name']])));
    assert.equal(e.rows, 20);
    // 20 heap pages and a few index pages, not the table's tens of thousands (and the policies' lookups).
    assert.ok(e.pages < 200, `${e.pages} pages`);
    t.diagnostic(`${e.ms.toFixed(3)} ms, ${e.pages} pages`);
  });
}

test("a requester's last 20 runs: an index scan of runs_requester_idx", async (t) => {
  const e = await explain(MINE, ['pgd_scale_clin_7']);
  const scans = e.nodes.filter((n) => /Scan/.test(n['Node Type']) && n['Relation Name'] === 'runs');
  assert.ok(scans.length === 1 && scans[0]['Node Type'] === 'Index Scan' && scans[0]['Index Name'] === 'runs_requester_idx',
    JSON.stringify(scans.map((n) => [n['Node Type'], n['Index Name']])));
  assert.equal(e.rows, 20);
  assert.ok(e.pages < 200, `${e.pages} pages`);
  t.diagnostic(`${e.ms.toFixed(3)} ms, ${e.pages} pages`);
});
