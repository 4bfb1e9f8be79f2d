// The demo's pieces under test: the cohort covers every NEWS2 band and the missing-data path, the clinician views
// (latest_diagnosis, review_queue) obey row-level security, and the "assessment completed" trigger recipe yields
// exactly one run when completed twice or by two sessions at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { waitTerminal } from '../lib/fixtures.mjs';

const demo = new URL('../../demo/', import.meta.url);
let server;
let cluster;

before(async () => {
  server = await startMcpServer(['--mode', 'stateless', '--reply', 'json']);
  cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url } });
  const client = await cluster.connect();
  await client.query(`SELECT set_config('demo.patients', '150', false), set_config('demo.seed', '7', false)`);
  await client.query(readFileSync(new URL('cohort.sql', demo), 'utf8'));
  await client.query(readFileSync(new URL('recipe.sql', demo), 'utf8'));
  await client.end();
  for (const clinician of ['pgd_demo_clin_a1', 'pgd_demo_clin_a2', 'pgd_demo_clin_a3', 'pgd_demo_clin_b1', 'pgd_demo_clin_b2']) {
    await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(id, '{"reason":"ward round"}')) FROM diagnosis.patients`, [], clinician);
  }
  const ids = (await cluster.query('SELECT id FROM diagnosis.runs')).rows.map((r) => r.id);
  assert.equal(ids.length, 150);
  await waitTerminal(cluster, ids, 60000);
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

test('the cohort covers every NEWS2 band and the missing-data path', async () => {
  const rows = (await cluster.query(`SELECT risk_level, count(*)::int AS n, count(*) FILTER (WHERE needs_review)::int AS review
                                     FROM diagnosis.latest_diagnosis GROUP BY 1`)).rows;
  const bands = Object.fromEntries(rows.map((r) => [r.risk_level, r]));
  for (const band of ['low', 'medium', 'high', 'critical']) assert.ok(bands[band]?.n > 0, `no ${band} patient`);
  assert.ok(bands.low.review > 0, 'incomplete charting leads to needs_review');
  assert.equal(rows.reduce((s, r) => s + r.n, 0), 150);
});

test('latest_diagnosis and review_queue under row-level security', async () => {
  const count = async (user, view) => (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.${view}`, [], user)).rows[0].n;
  const assigned = async (user) => (await cluster.query('SELECT count(*)::int AS n FROM diagnosis.patient_assignments WHERE role_name = $1', [user])).rows[0].n;
  const orgA = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.patients WHERE organization_id = 'd0000000-0000-4000-8000-00000000000a'`)).rows[0].n;
  assert.equal(await count('pgd_demo_clin_a1', 'latest_diagnosis'), await assigned('pgd_demo_clin_a1'));
  assert.equal(await count('pgd_demo_admin_a', 'latest_diagnosis'), orgA);
  assert.equal(await count('pgd_demo_unassigned', 'latest_diagnosis'), 0);
  assert.equal(await count('pgd_demo_admin_b', 'latest_diagnosis'), 150 - orgA);
  // Another organization's admin sees none of organization A's patients, even by name.
  const leak = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.latest_diagnosis
                                     WHERE organization_id = 'd0000000-0000-4000-8000-00000000000a'`, [], 'pgd_demo_admin_b')).rows[0].n;
  assert.equal(leak, 0);
  // The review queue holds exactly the latest diagnoses that need review or are medium, high or critical, most
  // urgent first (critical, high, medium, then needs-review), newest first within each.
  const queue = (await cluster.query('SELECT risk_level, needs_review, diagnosed_at FROM diagnosis.review_queue', [], 'pgd_demo_admin_a')).rows;
  assert.ok(queue.length > 0);
  assert.ok(queue.every((r) => r.needs_review || ['medium', 'high', 'critical'].includes(r.risk_level)));
  const rank = (r) => ({ critical: 1, high: 2, medium: 3 })[r.risk_level] ?? 4;
  for (let i = 1; i < queue.length; i++) {
    const [a, b] = [queue[i - 1], queue[i]];
    assert.ok(rank(a) < rank(b) || (rank(a) === rank(b) && a.diagnosed_at >= b.diagnosed_at), `row ${i} out of order`);
  }
  assert.deepEqual([...new Set(queue.map(rank))], [1, 2, 3, 4]);
  const expected = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.latest_diagnosis
       WHERE organization_id = 'd0000000-0000-4000-8000-00000000000a' AND (needs_review OR risk_level IN ('medium', 'high', 'critical'))`)).rows[0].n;
  assert.equal(queue.length, expected);
  assert.ok(await count('pgd_demo_clin_a2', 'review_queue') < queue.length);
});

test('recipe: completing an assessment twice, or from two sessions at once, yields exactly one run', async () => {
  const clinician = 'pgd_demo_clin_a1';
  const patient = (await cluster.query('SELECT patient_id FROM diagnosis.patient_assignments WHERE role_name = $1 LIMIT 1', [clinician])).rows[0].patient_id;
  const [a, b] = (await cluster.query(`INSERT INTO app.assessments (patient_id) VALUES ($1), ($1) RETURNING id`, [patient], clinician)).rows.map((r) => r.id);

  // Twice in a row.
  await cluster.query(`UPDATE app.assessments SET status = 'completed' WHERE id = $1`, [a], clinician);
  await cluster.query(`UPDATE app.assessments SET status = 'completed' WHERE id = $1`, [a], clinician);

  // Two sessions at once: both update the same row inside open transactions.
  const s1 = await cluster.connect(clinician);
  const s2 = await cluster.connect(clinician);
  await s1.query('BEGIN');
  await s2.query('BEGIN');
  await s1.query(`UPDATE app.assessments SET status = 'completed' WHERE id = $1`, [b]);
  const second = s2.query(`UPDATE app.assessments SET status = 'completed' WHERE id = $1`, [b]); // waits for s1
  await s1.query('COMMIT');
  await second;
  await s2.query('COMMIT');
  await s1.end();
  await s2.end();

  const runs = (await cluster.query(`SELECT idempotency_key, count(*)::int AS n FROM diagnosis.runs
                                     WHERE idempotency_key IN ($1, $2) GROUP BY 1 ORDER BY 1`, [`assessment:${a}`, `assessment:${b}`])).rows;
  assert.deepEqual(runs, [{ idempotency_key: `assessment:${a}`, n: 1 }, { idempotency_key: `assessment:${b}`, n: 1 }]);
  const linked = (await cluster.query('SELECT count(DISTINCT diagnosis_run)::int AS n FROM app.assessments WHERE id IN ($1, $2)', [a, b])).rows[0].n;
  assert.equal(linked, 2);
  // An assessment completed by a clinician who may not see the patient is refused, and nothing is written.
  await assert.rejects(cluster.query(`INSERT INTO app.assessments (patient_id, status) VALUES ($1, 'completed')`, [patient], 'pgd_demo_clin_b1'),
    (e) => e.code === '22023');
});
