// Reading runs at scale (0.3.0): with 1,000,000 runs (test/lib/scale.mjs writes them as a restore would), a
// patient's history and a requester's runs are index scans that touch a few dozen pages, for a superuser and under
// a clinician's or an admin's row-level security alike.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';
import { fillRuns, explain, PATIENT_HISTORY, REQUESTER_RUNS, SCALE_ORG } from '../lib/scale.mjs';

const RUNS = 1_000_000;
const PATIENTS = 10_000; // 100 runs each
let cluster;
let patient;

before(async () => {
  // No worker: nothing but the statements below touches the runs.
  cluster = await startCluster({ settings: { 'diagnosis.workers': 0, shared_buffers: '256MB', max_wal_size: '4GB' } });
  const { ms, cpu } = await fillRuns(cluster, { runs: RUNS, patients: PATIENTS });
  console.log(`inserted ${RUNS} runs in ${ms} ms (${cpu} ms of the backend's CPU)`);
  patient = (await cluster.query('SELECT id FROM diagnosis.patients ORDER BY id LIMIT 1 OFFSET 4321')).rows[0].id;
  await cluster.query('CREATE ROLE pgd_scale_clin_7 LOGIN; CREATE ROLE pgd_scale_admin LOGIN');
  await cluster.query(`INSERT INTO diagnosis.members VALUES ('pgd_scale_clin_7', $1, 'clinician'), ('pgd_scale_admin', $1, 'admin')`,
    [SCALE_ORG]);
  await cluster.query(`INSERT INTO diagnosis.patient_assignments VALUES ($1, 'pgd_scale_clin_7')`, [patient]);
});

after(() => cluster?.destroy());

const runsScans = (e) => e.nodes.filter((n) => /Scan/.test(n['Node Type']) && n['Relation Name'] === 'runs');

test('1,000,000 runs are there', async () => {
  const r = (await cluster.query('SELECT count(*)::int AS n, count(DISTINCT patient_id)::int AS patients FROM diagnosis.runs')).rows[0];
  assert.deepEqual(r, { n: RUNS, patients: PATIENTS });
});

for (const [who, role] of [['a superuser', 'postgres'], ['the assigned clinician (row-level security)', 'pgd_scale_clin_7'],
  ['an admin (row-level security)', 'pgd_scale_admin']]) {
  test(`a patient's last 20 runs: an index scan of runs_patient_history_idx for ${who}`, async (t) => {
    const e = await explain(cluster, PATIENT_HISTORY, [patient], role);
    const scans = runsScans(e);
    assert.ok(scans.length === 1 && scans[0]['Node Type'] === 'Index Scan' && scans[0]['Index Name'] === 'runs_patient_history_idx',
      JSON.stringify(scans.map((n) => [n['Node Type'], n['Index Name']])));
    assert.equal(e.rows, 20);
    // 20 heap pages and a few index pages (and the policies' lookups), not the table's tens of thousands.
    assert.ok(e.pages < 200, `${e.pages} pages`);
    t.diagnostic(`${e.ms.toFixed(3)} ms, ${e.pages} pages`);
  });
}

test("a requester's last 20 runs: an index scan of runs_requester_idx", async (t) => {
  const e = await explain(cluster, REQUESTER_RUNS, ['pgd_scale_clin_7']);
  const scans = runsScans(e);
  assert.ok(scans.length === 1 && scans[0]['Node Type'] === 'Index Scan' && scans[0]['Index Name'] === 'runs_requester_idx',
    JSON.stringify(scans.map((n) => [n['Node Type'], n['Index Name']])));
  assert.equal(e.rows, 20);
  assert.ok(e.pages < 200, `${e.pages} pages`);
  t.diagnostic(`${e.ms.toFixed(3)} ms, ${e.pages} pages`);
});
