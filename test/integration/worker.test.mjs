// The worker end to end against the reference MCP server (stateful, SSE): every outcome and error code,
// retries with backoff and Retry-After, context pack failures, cancel, wait_for_run, priority, progress.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, run, chain, artifacts, waitTerminal } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';

let server;
let cluster;
let patients;
let next = 0;
const patient = () => patients[next++];

before(async () => {
  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse', '--hang-ms', '60000']);
  cluster = await startCluster({ settings: {
    'diagnosis.mcp_url': server.url,
    'diagnosis.retry_base_delay_ms': 50,
    'diagnosis.request_timeout_ms': 1500,
  } });
  ({ patients } = await createOrganization(cluster, { patients: 60 }));
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

test('happy path: three artifacts, audit chain, one call, timings', async () => {
  await cluster.query('CREATE ROLE pgd_it_admin LOGIN');
  await cluster.query(`INSERT INTO diagnosis.members SELECT 'pgd_it_admin', organization_id, 'admin' FROM diagnosis.patients WHERE id = $1`, [patients[0]]);
  const id = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"ward round"}') AS id`, [patient()], 'pgd_it_admin')).rows[0].id;
  assert.equal((await cluster.query(`SELECT diagnosis.wait_for_run($1, '20 s') AS s`, [id])).rows[0].s, 'completed');
  const r = await run(cluster, id);
  assert.equal(r.attempt, 1);
  assert.equal(r.error_code, null);
  assert.match(r.mcp_run_id, /^mcp-[0-9a-f]{16}$/);
  assert.ok(r.processing_time_ms >= 0 && r.processing_time_ms < 15000);
  assert.equal(r.progress, 1);
  assert.equal(r.worker_pid !== null, true);
  const a = await artifacts(cluster, id);
  assert.deepEqual(a.map((x) => x.artifact_type), ['context_pack', 'mcp_response', 'diagnosis_json']);
  assert.ok(a.every((x) => x.sha_ok));
  assert.equal(a[2].risk_level, 'low'); // RR 22 (2) + SpO2 95 (1) + BP 118 (0) + pulse 96 (1) + temp 37.9 (0) = 4
  assert.ok(a[2].primary_findings.some((f) => /Respiration rate 22/.test(f)));
  assert.equal(a[2].needs_review, false);
  assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'COMPLETED']);
  const actors = (await cluster.query('SELECT event, actor FROM diagnosis.audit_log WHERE run_id = $1 ORDER BY id', [id])).rows;
  assert.equal(actors[0].actor, 'pgd_it_admin');
  assert.equal(actors[1].actor, 'diagnosis_worker');
  const stats = await server.stats();
  assert.deepEqual(stats.calls[id], { 1: 1 });
  // The context pack artifact carries the run's inputs and the patient's observations.
  const pack = (await cluster.query(`SELECT artifact_data FROM diagnosis.artifacts WHERE run_id = $1 AND artifact_type = 'context_pack'`, [id])).rows[0].artifact_data;
  assert.deepEqual(pack.inputs, { reason: 'ward round' });
  assert.equal(pack.observations.length, 5);
});

const FAILURES = [
  ['is_error', 'LLM_ERROR', ['context_pack', 'mcp_response'], 1],
  ['invalid_result', 'VALIDATION_ERROR', ['context_pack', 'mcp_response'], 1],
  ['jsonrpc_error', 'MCP_ERROR', ['context_pack'], 1],
  ['http_400', 'MCP_ERROR', ['context_pack'], 1],
  ['malformed_json', 'MCP_ERROR', ['context_pack'], 1],
  ['non_utf8', 'MCP_ERROR', ['context_pack'], 1],
  ['wrong_id', 'MCP_ERROR', ['context_pack'], 1],
];
for (const [fault, code, kept, calls] of FAILURES) {
  test(`${fault} fails the run with ${code} and keeps ${kept.join(' + ')}`, async () => {
    const id = await enqueue(cluster, patient(), { fault });
    await waitTerminal(cluster, [id]);
    const r = await run(cluster, id);
    assert.equal(r.status, 'failed');
    assert.equal(r.error_code, code, r.error_message);
    assert.ok(r.error_message.length > 0);
    assert.deepEqual((await artifacts(cluster, id)).map((x) => x.artifact_type), kept);
    assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'FAILED']);
    assert.deepEqual((await server.stats()).calls[id], { 1: calls });
    if (code === 'VALIDATION_ERROR') {
      assert.equal(r.error_details.pointer, '/risk_level');
      assert.equal(r.error_details.keyword, 'enum');
    }
  });
}

test('transient errors with no retries left fail with NETWORK_ERROR and TIMEOUT_ERROR', async () => {
  const down = await enqueue(cluster, patient(), { fault: 'http_503' }, { maxRetries: 0 });
  const hung = await enqueue(cluster, patient(), { fault: 'hang' }, { maxRetries: 0 });
  const cut = await enqueue(cluster, patient(), { fault: 'truncated_sse' }, { maxRetries: 0 });
  const dropped = await enqueue(cluster, patient(), { fault: 'drop' }, { maxRetries: 0 });
  await waitTerminal(cluster, [down, hung, cut, dropped]);
  assert.equal((await run(cluster, down)).error_code, 'NETWORK_ERROR');
  assert.equal((await run(cluster, hung)).error_code, 'TIMEOUT_ERROR');
  assert.equal((await run(cluster, cut)).error_code, 'NETWORK_ERROR');
  assert.equal((await run(cluster, dropped)).error_code, 'NETWORK_ERROR');
  assert.deepEqual((await server.stats()).calls[down], { 1: 1 });
});

test('retry then success: a 503 on attempt 1 completes on attempt 2', async () => {
  const id = await enqueue(cluster, patient(), { fault: 'http_503', fault_attempts: 1 });
  await waitTerminal(cluster, [id]);
  const r = await run(cluster, id);
  assert.equal(r.status, 'completed');
  assert.equal(r.attempt, 2);
  assert.equal(r.error_code, null);
  assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'RETRY_SCHEDULED', 'LOCKED', 'COMPLETED']);
  assert.deepEqual((await server.stats()).calls[id], { 1: 1, 2: 1 });
});

test('Retry-After is honoured: the second claim waits at least the 2 s the server asked for', async () => {
  const id = await enqueue(cluster, patient(), { fault: 'http_429', fault_attempts: 1, retry_after: 2 });
  await waitTerminal(cluster, [id], 20000);
  const rows = (await cluster.query(`SELECT event, created_at FROM diagnosis.audit_log WHERE run_id = $1 ORDER BY id`, [id])).rows;
  assert.deepEqual(rows.map((x) => x.event), ['ENQUEUED', 'LOCKED', 'RETRY_SCHEDULED', 'LOCKED', 'COMPLETED']);
  const waited = rows[3].created_at - rows[2].created_at;
  assert.ok(waited >= 1900, `waited ${waited} ms`);
  assert.ok(waited < 6000, `waited ${waited} ms`);
});

test('retries exhausted: a persistent 503 with max_retries 2 makes exactly 3 calls, then fails', async () => {
  const id = await enqueue(cluster, patient(), { fault: 'http_503' }, { maxRetries: 2 });
  await waitTerminal(cluster, [id], 20000);
  const r = await run(cluster, id);
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'NETWORK_ERROR');
  assert.equal(r.attempt, 3);
  assert.deepEqual((await server.stats()).calls[id], { 1: 1, 2: 1, 3: 1 });
  assert.deepEqual(await chain(cluster, id),
    ['ENQUEUED', 'LOCKED', 'RETRY_SCHEDULED', 'LOCKED', 'RETRY_SCHEDULED', 'LOCKED', 'FAILED']);
});

test('a context pack that fails to build fails its run with CONTEXT_PACK_ERROR and no artifacts', async () => {
  const bad = patient();
  await cluster.query(`
    CREATE FUNCTION public.picky_pack(p uuid) RETURNS jsonb LANGUAGE plpgsql AS $$
    BEGIN
      IF p = '${bad}' THEN RAISE EXCEPTION 'no chart for this patient'; END IF;
      RETURN diagnosis.build_context_pack(p);
    END $$`);
  await cluster.reloadApplied({ 'diagnosis.context_pack_function': 'public.picky_pack' });
  const failing = await enqueue(cluster, bad, { pack: 1 });
  const fine = await enqueue(cluster, patient(), { pack: 1 });
  await waitTerminal(cluster, [failing, fine]);
  await cluster.reload({ 'diagnosis.context_pack_function': '' });
  const r = await run(cluster, failing);
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'CONTEXT_PACK_ERROR');
  assert.match(r.error_message, /no chart for this patient/);
  assert.deepEqual(await artifacts(cluster, failing), []);
  assert.equal((await server.stats()).calls[failing], undefined, 'no MCP call for a run without a pack');
  assert.equal((await run(cluster, fine)).status, 'completed', 'the other run of the same claim is unaffected');
});

test('cancel: a queued run is cancelled and never called; paused workers claim nothing', async () => {
  await cluster.reload({ 'diagnosis.enabled': 'off' });
  await cluster.waitFor(async () => (await cluster.query('SELECT state FROM diagnosis.worker_status()')).rows[0]?.state === 'paused',
    { what: 'the worker to pause' }).catch(() => {});
  const id = await enqueue(cluster, patient(), { cancel: 1 });
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await run(cluster, id)).status, 'queued');
  assert.equal((await cluster.query('SELECT diagnosis.cancel_diagnosis($1) AS c', [id])).rows[0].c, true);
  assert.equal((await cluster.query('SELECT diagnosis.cancel_diagnosis($1) AS c', [id])).rows[0].c, false);
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  await cluster.waitFor(async () => (await cluster.query('SELECT state FROM diagnosis.worker_status()')).rows[0]?.state !== 'paused',
    { what: 'the worker to resume' });
  // A whole claim later (another run claimed and done), the cancelled run was never claimed.
  await waitTerminal(cluster, [await enqueue(cluster, patient(), { after_cancel: 1 })]);
  assert.equal((await run(cluster, id)).status, 'cancelled');
  assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'CANCELLED']);
  assert.equal((await server.stats()).calls[id], undefined);
});

test('priority: with one slot, higher priority runs are claimed first', async () => {
  await cluster.reload({ 'diagnosis.enabled': 'off', 'diagnosis.max_inflight': 1 });
  // Paused: the worker has applied this reload (both settings), whatever the machine's speed.
  await cluster.waitFor(async () => (await cluster.query('SELECT state FROM diagnosis.worker_status()')).rows[0]?.state === 'paused',
    { what: 'the worker to pause' });
  const low = await enqueue(cluster, patient(), { p: 'low' }, { priority: 0 });
  const mid = await enqueue(cluster, patient(), { p: 'mid' }, { priority: 5 });
  const high = await enqueue(cluster, patient(), { p: 'high' }, { priority: 10 });
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  await waitTerminal(cluster, [low, mid, high]);
  await cluster.reload({ 'diagnosis.max_inflight': 64 });
  const order = (await cluster.query(`
    SELECT run_id FROM diagnosis.audit_log WHERE event = 'LOCKED' AND run_id = ANY($1) ORDER BY id`, [[low, mid, high]])).rows
    .map((x) => x.run_id);
  assert.deepEqual(order, [high, mid, low]);
});

test('wait_for_run wakes on completion, not at its timeout', async () => {
  await server.configure({ latency_ms: 300 });
  const id = await enqueue(cluster, patient(), { wait: 1 });
  const started = Date.now();
  const status = (await cluster.query(`SELECT diagnosis.wait_for_run($1, '20 s') AS s`, [id])).rows[0].s;
  const took = Date.now() - started;
  await server.configure({ latency_ms: 0 });
  assert.equal(status, 'completed');
  assert.ok(took < 5000, `took ${took} ms`);
});

test('progress: a long run reports progress between 0 and 1, never backwards', async () => {
  await server.configure({ latency_ms: 3500 });
  await cluster.reloadApplied({ 'diagnosis.request_timeout_ms': 15000 });
  const id = await enqueue(cluster, patient(), { progress: 1 });
  const seen = [];
  await cluster.waitFor(async () => {
    const r = await run(cluster, id);
    if (r.progress !== null) seen.push(r.progress);
    return r.status === 'completed';
  }, { timeout: 20000, interval: 100 });
  await server.configure({ latency_ms: 0 });
  await cluster.reload({ 'diagnosis.request_timeout_ms': 1500 });
  assert.ok(seen.some((p) => p > 0 && p < 1), `saw ${seen.join(', ')}`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `went backwards: ${seen.join(', ')}`);
  assert.equal(seen[seen.length - 1], 1);
  const msg = (await run(cluster, id)).progress_message;
  assert.ok(typeof msg === 'string' && msg.length > 0);
});

test('state machine of a running run: only the worker moves or changes it; a first cancel request is all others may write', async () => {
  await server.configure({ latency_ms: 4000 });
  await cluster.reloadApplied({ 'diagnosis.request_timeout_ms': 15000 });
  const id = await enqueue(cluster, patient(), { guard: 1 });
  await cluster.waitFor(async () => (await run(cluster, id)).status === 'running', { timeout: 10000, interval: 50 });
  const attempt = async (sql) => {
    try {
      await cluster.query(sql, [id]);
      return 'ok';
    } catch (e) {
      return `${e.code}: ${e.message.replaceAll(id, '<id>')}`;
    }
  };
  // A superuser session is not the worker.
  const refusals = {
    "status = 'completed', completed_at = now()": '55000: only a pg_diagnosis worker may move run <id> from running to completed',
    "status = 'queued'": '55000: only a pg_diagnosis worker may move run <id> from running to queued',
    "status = 'failed', completed_at = now(), error_code = 'MCP_ERROR'": '55000: only a pg_diagnosis worker may move run <id> from running to failed',
    'priority = 7': '55000: only a pg_diagnosis worker may change running run <id>',
    'cancel_requested_at = now()': '55000: only a pg_diagnosis worker may change running run <id>',
    'cancel_requested_at = now(), cancel_requested_by = current_user, priority = 7': '55000: only a pg_diagnosis worker may change running run <id>',
    "inputs = '{}'": '55000: the identity of run <id> cannot change',
    "idempotency_key = 'k'": '55000: the identity of run <id> cannot change',
    "patient_id = '00000000-0000-4000-8000-000000000000'": '55000: the identity of run <id> cannot change',
  };
  for (const [set, expected] of Object.entries(refusals))
    assert.equal(await attempt(`UPDATE diagnosis.runs SET ${set} WHERE id = $1`), expected, set);
  assert.equal(await attempt('DELETE FROM diagnosis.runs WHERE id = $1'), '55000: run <id> cannot be deleted');
  // The one change allowed outside the worker, as cancel_diagnosis makes it (rolled back here).
  const client = await cluster.connect();
  try {
    await client.query('BEGIN');
    const r = await client.query('UPDATE diagnosis.runs SET cancel_requested_at = now(), cancel_requested_by = current_user WHERE id = $1', [id]);
    assert.equal(r.rowCount, 1);
    await client.query('ROLLBACK');
  } finally {
    await client.end();
  }
  await waitTerminal(cluster, [id], 20000);
  assert.equal((await run(cluster, id)).status, 'completed');
  assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'COMPLETED']);
  assert.equal((await run(cluster, id)).priority, 0);
  assert.equal(await attempt('UPDATE diagnosis.runs SET priority = 1 WHERE id = $1'), '55000: run <id> is completed: a terminal run cannot change');
  await server.configure({ latency_ms: 0 });
  await cluster.reload({ 'diagnosis.request_timeout_ms': 1500 });
});

test('worker_status counts finished runs and shows an idle worker; idle means no transaction', async () => {
  await cluster.waitFor(async () => (await cluster.query('SELECT state FROM diagnosis.worker_status()')).rows[0]?.state === 'idle',
    { what: 'an idle worker' });
  const s = (await cluster.query('SELECT * FROM diagnosis.worker_status()')).rows;
  assert.equal(s.length, 1);
  assert.equal(s[0].state, 'idle');
  assert.equal(s[0].inflight, 0);
  assert.ok(Number(s[0].runs_done) >= 15, `runs_done ${s[0].runs_done}`);
  const activity = (await cluster.query(`SELECT state, xact_start FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker'`)).rows;
  assert.equal(activity[0].xact_start, null);
  assert.equal(activity[0].state, 'idle');
});

test('every audit chain in the database is a legal path; nothing duplicated', async () => {
  const g = await checkGuarantees(cluster);
  assert.deepEqual(g, { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0, incomplete_artifact_sets: 0,
    diagnoses_on_unfinished_runs: 0 });
});
