// The clinician's day through the worker (0.3.0): a keyed run that failed because the endpoint was down, re-run
// once it is back; a sign-off that takes a diagnosis out of review_queue; a schema version a superuser added,
// validated against its own schema, also as diagnosis.default_schema_version.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, freePort } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, run, chain, artifacts, waitTerminal } from '../lib/fixtures.mjs';

const CLINICIAN = 'pgd_wf_clin';
const ADMIN = 'pgd_wf_admin';
let server;
let cluster;
let org;
let patients;

before(async () => {
  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse']);
  // The endpoint is down at first: nothing listens on this port.
  cluster = await startCluster({ settings: {
    'diagnosis.mcp_url': `http://127.0.0.1:${await freePort()}/mcp`,
    'diagnosis.retry_base_delay_ms': 50,
    'diagnosis.request_timeout_ms': 5000,
    'diagnosis.connect_timeout_ms': 1000,
  } });
  ({ org, patients } = await createOrganization(cluster, { patients: 6 }));
  await cluster.query(`CREATE ROLE ${CLINICIAN} LOGIN; CREATE ROLE ${ADMIN} LOGIN`);
  await cluster.query(`INSERT INTO diagnosis.members VALUES ($1, $3, 'clinician'), ($2, $3, 'admin')`, [CLINICIAN, ADMIN, org]);
  await cluster.query('INSERT INTO diagnosis.patient_assignments SELECT unnest($1::uuid[]), $2', [patients, CLINICIAN]);
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

const packOf = async (id) => (await cluster.query(
  `SELECT artifact_data FROM diagnosis.artifacts WHERE run_id = $1 AND artifact_type = 'context_pack'`, [id])).rows[0]?.artifact_data;

test('a keyed run that failed while the endpoint was down is re-run with a fresh context pack and completes', async () => {
  const patient = patients[0];
  const enqueueKeyed = async () => (await cluster.query(
    `SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"assessment 1"}', 'assessment:1', max_retries => 0) AS id`,
    [patient], CLINICIAN)).rows[0].id;
  const failed = await enqueueKeyed();
  await waitTerminal(cluster, [failed]);
  const before = await run(cluster, failed);
  assert.equal(before.status, 'failed');
  assert.equal(before.error_code, 'NETWORK_ERROR', before.error_message);
  // The key returns the failed run, whatever is asked: without a re-run this request could never run again.
  assert.equal(await enqueueKeyed(), failed);

  // The endpoint is back, and a new observation was charted meanwhile.
  await cluster.reload({ 'diagnosis.mcp_url': server.url });
  // A probe run with retries to spare completes once the worker has the new URL (a state, not a sleep).
  const probe = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"probe":1}', max_retries => 100) AS id`, [patients[5]])).rows[0].id;
  await waitTerminal(cluster, [probe]);
  assert.equal((await run(cluster, probe)).status, 'completed');
  await cluster.query(`INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
                       VALUES ($1, '9279-1', 25, '/min', now())`, [patient]);
  const rerun = (await cluster.query(`SELECT diagnosis.rerun_diagnosis($1, 'MCP endpoint was down') AS id`, [failed], CLINICIAN)).rows[0].id;
  assert.notEqual(rerun, failed);
  await waitTerminal(cluster, [rerun]);
  const r = await run(cluster, rerun);
  assert.equal(r.status, 'completed', r.error_message);
  assert.equal(r.rerun_of, failed);
  assert.equal(r.idempotency_key, null);
  assert.equal(r.requested_by, CLINICIAN);
  assert.deepEqual(r.inputs, { reason: 'assessment 1' });
  assert.deepEqual((await artifacts(cluster, rerun)).map((a) => a.artifact_type), ['context_pack', 'mcp_response', 'diagnosis_json']);
  assert.deepEqual(await chain(cluster, rerun), ['ENQUEUED', 'LOCKED', 'COMPLETED']);
  const enqueued = (await cluster.query(`SELECT actor, details FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'ENQUEUED'`, [rerun])).rows[0];
  assert.equal(enqueued.actor, CLINICIAN);
  assert.equal(enqueued.details.rerun_of, failed);
  assert.equal(enqueued.details.reason, 'MCP endpoint was down');
  // A fresh pack: the re-run's has the observation charted after the failure, the failed run's does not.
  const oldPack = await packOf(failed);
  const newPack = await packOf(rerun);
  assert.equal(newPack.observations.length, oldPack.observations.length + 1);
  assert.ok(newPack.observations.some((o) => o.code === '9279-1' && Number(o.value) === 25));
  // The failed run is untouched, and the key still names it.
  const afterRun = await run(cluster, failed);
  assert.deepEqual(afterRun, before);
  assert.deepEqual(await chain(cluster, failed), ['ENQUEUED', 'LOCKED', 'FAILED', 'DEDUPLICATED']);
  assert.equal(await enqueueKeyed(), failed);
});

test('a sign-off takes the diagnosis out of review_queue, once per clinician', async () => {
  // A deteriorating patient: RR 30 (3), SpO2 90 (3), systolic 88 (3), pulse 135 (3), 39.5 °C (2) → high risk.
  const patient = patients[1];
  await cluster.query(`INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
                       SELECT $1, c, v, u, now() FROM (VALUES ('9279-1', 30, '/min'), ('spo2', 90, '%'), ('8480-6', 88, 'mmHg'),
                                                               ('heart_rate', 135, '/min'), ('temperature', 39.5, 'Cel')) x(c, v, u)`, [patient]);
  const id = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"deteriorating"}') AS id`, [patient], CLINICIAN)).rows[0].id;
  await waitTerminal(cluster, [id]);
  assert.equal((await run(cluster, id)).status, 'completed');
  const queue = async (role) => (await cluster.query('SELECT run_id, risk_level FROM diagnosis.review_queue', [], role)).rows;
  const mine = (await queue(CLINICIAN)).find((q) => q.run_id === id);
  assert.ok(mine, 'the diagnosis is in the clinician\'s review queue');
  assert.ok(['high', 'critical'].includes(mine.risk_level), mine.risk_level);
  assert.ok((await queue(ADMIN)).some((q) => q.run_id === id));

  // Not completed: a sign-off of a queued run (scheduled for later) is refused with 55000.
  const queued = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"later"}', run_after => now() + interval '1 hour') AS id`,
    [patients[2]], CLINICIAN)).rows[0].id;
  await assert.rejects(cluster.query('SELECT diagnosis.acknowledge_diagnosis($1)', [queued], CLINICIAN), { code: '55000' });
  assert.equal((await cluster.query('SELECT diagnosis.cancel_diagnosis($1) AS c', [queued], CLINICIAN)).rows[0].c, true);

  const ack = (await cluster.query(`SELECT diagnosis.acknowledge_diagnosis($1, 'escalated to the outreach team') AS id`, [id], CLINICIAN)).rows[0].id;
  assert.ok(!(await queue(CLINICIAN)).some((q) => q.run_id === id), 'gone from the clinician\'s queue');
  assert.ok(!(await queue(ADMIN)).some((q) => q.run_id === id), 'gone from the admin\'s queue: the team\'s worklist');
  assert.equal((await cluster.query('SELECT diagnosis.acknowledge_diagnosis($1) AS id', [id], CLINICIAN)).rows[0].id, ack);
  const rows = (await cluster.query('SELECT acknowledged_by, note FROM diagnosis.acknowledgements WHERE run_id = $1', [id], CLINICIAN)).rows;
  assert.deepEqual(rows, [{ acknowledged_by: CLINICIAN, note: 'escalated to the outreach team' }]);
  assert.deepEqual((await chain(cluster, id)).filter((e) => e === 'ACKNOWLEDGED'), ['ACKNOWLEDGED']);
  // A newer diagnosis of the same patient, not yet signed off, is in the queue again.
  const again = (await cluster.query(`SELECT diagnosis.rerun_diagnosis($1, 'reassess after fluids') AS id`, [id], CLINICIAN)).rows[0].id;
  await waitTerminal(cluster, [again]);
  assert.ok((await queue(CLINICIAN)).some((q) => q.run_id === again));
});

test('a schema version added by a superuser validates results against its own schema, also as the default', async () => {
  const v1 = (await cluster.query(`SELECT schema FROM diagnosis.result_schemas WHERE version = 'v1'`)).rows[0].schema;
  // v2 also requires the scores behind the result (the reference server sends them); v3 a property it never sends.
  const v2 = { ...v1, required: [...v1.required, 'news2'] };
  const v3 = { ...v1, required: [...v1.required, 'sepsis_screen'] };
  await cluster.query(`INSERT INTO diagnosis.result_schemas VALUES ('v2', $1), ('v3', $2)`, [v2, v3]);
  const enqueueAs = async (patient, version) => (await cluster.query(
    `SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"schema"}', schema_version => $2) AS id`, [patient, version], CLINICIAN)).rows[0].id;
  const ok = await enqueueAs(patients[3], 'v2');
  const bad = await enqueueAs(patients[3], 'v3'); // another version: not coalesced with the v2 run in flight
  assert.notEqual(ok, bad);
  await waitTerminal(cluster, [ok, bad]);
  const okRun = await run(cluster, ok);
  assert.equal(okRun.status, 'completed', okRun.error_message);
  assert.equal(okRun.schema_version, 'v2');
  const badRun = await run(cluster, bad);
  assert.equal(badRun.status, 'failed');
  assert.equal(badRun.error_code, 'VALIDATION_ERROR');
  assert.match(JSON.stringify(badRun.error_details), /required|sepsis_screen/);
  await assert.rejects(enqueueAs(patients[3], 'v9'), { code: '22023' });

  // diagnosis.default_schema_version (sighup) decides for enqueues that name none, keys and re-runs included.
  await cluster.reload({ 'diagnosis.default_schema_version': 'v3' });
  await cluster.waitFor(async () => (await cluster.query("SELECT current_setting('diagnosis.default_schema_version') AS v")).rows[0].v === 'v3',
    { what: 'the reload' });
  const byDefault = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"default"}', 'default-1') AS id`, [patients[4]], CLINICIAN)).rows[0].id;
  await waitTerminal(cluster, [byDefault]);
  assert.equal((await run(cluster, byDefault)).schema_version, 'v3');
  assert.equal((await run(cluster, byDefault)).error_code, 'VALIDATION_ERROR');
  // The same key under another default version is another request: refused, naming the run.
  await cluster.reload({ 'diagnosis.default_schema_version': 'v1' });
  await cluster.waitFor(async () => (await cluster.query("SELECT current_setting('diagnosis.default_schema_version') AS v")).rows[0].v === 'v1',
    { what: 'the reload' });
  await assert.rejects(cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"default"}', 'default-1')`, [patients[4]], CLINICIAN),
    (e) => e.code === '22023' && e.message.includes(byDefault));
  // A re-run keeps the run's own version.
  const rerun = (await cluster.query(`SELECT diagnosis.rerun_diagnosis($1, 'schema fixed upstream') AS id`, [ok], CLINICIAN)).rows[0].id;
  await waitTerminal(cluster, [rerun]);
  assert.equal((await run(cluster, rerun)).schema_version, 'v2');
  assert.equal((await run(cluster, rerun)).status, 'completed');
});
