// A generated corpus of bad input against every SQL function: deep, huge and odd JSON, invalid Unicode escapes and
// bytes, NULLs, wrong types, oversized values and SQL-injection-shaped strings in every text argument. Each call
// must end in a clear ERROR with a SQLSTATE of PostgreSQL's standard classes for bad input (22 data exception,
// 42 access or call, 54 program limit, 55 state), never P0001 or an internal XX error; a failed call must change no
// table; the backend must never crash.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';
import { createOrganization } from '../lib/fixtures.mjs';

let cluster;
let patient;
let cancelled; // a terminal run: re-run and acknowledge take it
const ALLOWED = /^(22|42|54|55)/;

before(async () => {
  cluster = await startCluster({ settings: { 'diagnosis.max_inputs_bytes': '64kB' } });
  ({ patients: [patient] } = await createOrganization(cluster, { patients: 2 }));
  await cluster.query('CREATE ROLE pgd_corpus_clin LOGIN');
  await cluster.query(`INSERT INTO diagnosis.members SELECT 'pgd_corpus_clin', organization_id, 'clinician' FROM diagnosis.patients WHERE id = $1`, [patient]);
  await cluster.query(`INSERT INTO diagnosis.patient_assignments VALUES ($1, 'pgd_corpus_clin')`, [patient]);
  cancelled = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"corpus":"terminal"}') AS id`, [patient])).rows[0].id;
  await cluster.query('SELECT diagnosis.cancel_diagnosis($1)', [cancelled]);
});
after(() => cluster?.destroy());

const INJECTIONS = ["'; DROP TABLE diagnosis.runs; --", "\"; DELETE FROM diagnosis.audit_log; --", "$$; SELECT pg_sleep(10); $$",
  "' OR '1'='1", "\\x00\\'", "Robert'); DROP TABLE students;--", "%s%s%s%n", '${jndi:ldap://x}', '<script>alert(1)</script>',
  'é'.repeat(300), '𝕏'.repeat(100), ' ', '\t\n'];
const deep = (n) => '['.repeat(n) + ']'.repeat(n);
const JSONS = ['{}', '[]', '"x"', '1', 'null', 'true', '{"a":', '{oops}', '', ' ', '{"a":"\\u0000"}', '{"a":"\\ud800"}',
  '{"a":"\\udc00\\ud800"}', '{"a":1e400}', '{"a":-0}', '{"a":"' + 'x'.repeat(70000) + '"}', `{"deep":${deep(5000)}}`,
  `{"deep":${deep(200000)}}`, '{"a":1,"a":2}', '{"😀":"🎉"}', '{"k":"' + INJECTIONS[0].replace(/"/g, '\\"') + '"}',
  Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]).toString('latin1')];
const UUIDS = [null, 'not-a-uuid', '', '00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  "00000000-0000-0000-0000-00000000000'", ...INJECTIONS.slice(0, 4)];
const INTERVALS = [null, '-1 second', '1 ms', 'garbage', '1000000000 years', '178000000 years', '-infinity', '0', '1 day',
  ...INJECTIONS.slice(0, 3)];

/** [function, sql, params] for every case. */
function corpus() {
  const cases = [];
  const enq = 'SELECT diagnosis.enqueue_diagnosis($1::uuid, $2::jsonb, $3, $4::int, $5::timestamptz, $6::int)';
  for (const u of UUIDS) cases.push(['enqueue_diagnosis', enq, [u, '{}', null, '0', null, null]]);
  for (const j of JSONS) cases.push(['enqueue_diagnosis', enq, [patient, j, null, '0', null, null]]);
  for (const k of [...INJECTIONS, '', 'k'.repeat(201), 'ok-key']) cases.push(['enqueue_diagnosis', enq, [patient, '{"k":1}', k, '0', null, null]]);
  for (const p of [null, '-2147483648', '2147483647', '2147483648', '1.5', 'high', INJECTIONS[0]]) cases.push(['enqueue_diagnosis', enq, [patient, '{"p":1}', null, p, null, null]]);
  for (const t of ['infinity', '-infinity', 'yesterday', 'not a date', '294277-01-01', INJECTIONS[3]]) cases.push(['enqueue_diagnosis', enq, [patient, '{"t":1}', null, '0', t, null]]);
  for (const m of ['-1', '0', '2147483647', 'many', null]) cases.push(['enqueue_diagnosis', enq, [patient, '{"m":1}', null, '0', null, m]]);
  cases.push(['enqueue_diagnosis', 'SELECT diagnosis.enqueue_diagnosis(42)', []]);
  for (const v of [null, '', 'v9', 'v1', 'V1', 'v1 ', 'x'.repeat(10000), ...INJECTIONS]) {
    cases.push(['enqueue_diagnosis', 'SELECT diagnosis.enqueue_diagnosis($1::uuid, $2::jsonb, schema_version => $3)', [patient, '{"sv":1}', v]]);
    cases.push(['enqueue_diagnoses', 'SELECT diagnosis.enqueue_diagnoses(ARRAY[$1::uuid], schema_version => $2)', [patient, v]]);
  }
  for (const u of UUIDS) cases.push(['rerun_diagnosis', `SELECT diagnosis.rerun_diagnosis($1::uuid, 'corpus')`, [u]]);
  for (const r of [null, '', ' ', 'r'.repeat(1001), ...INJECTIONS]) cases.push(['rerun_diagnosis', 'SELECT diagnosis.rerun_diagnosis($1::uuid, $2)', [cancelled, r]]);
  for (const u of UUIDS) cases.push(['acknowledge_diagnosis', 'SELECT diagnosis.acknowledge_diagnosis($1::uuid)', [u]]);
  for (const n of [null, '', 'n'.repeat(4001), ...INJECTIONS]) cases.push(['acknowledge_diagnosis', 'SELECT diagnosis.acknowledge_diagnosis($1::uuid, $2)', [cancelled, n]]);
  cases.push(['enqueue_diagnosis', 'SELECT diagnosis.enqueue_diagnosis($1::uuid, $2::jsonb)', [patient, JSON.stringify({ a: 'x'.repeat(1000) })]]);
  for (const u of UUIDS) cases.push(['cancel_diagnosis', 'SELECT diagnosis.cancel_diagnosis($1::uuid)', [u]]);
  for (const u of UUIDS) cases.push(['wait_for_run', `SELECT diagnosis.wait_for_run($1::uuid, '10 ms')`, [u]]);
  for (const i of INTERVALS) cases.push(['wait_for_run', `SELECT diagnosis.wait_for_run('00000000-0000-0000-0000-000000000000', $1::interval)`, [i]]);
  for (const u of UUIDS) cases.push(['build_context_pack', 'SELECT diagnosis.build_context_pack($1::uuid)', [u]]);
  // diagnosis.fhir_source is unset here: 55000 for a valid patient, the argument's own error otherwise.
  for (const u of [...UUIDS, patient]) cases.push(['fhir_context_pack', 'SELECT diagnosis.fhir_context_pack($1::uuid)', [u]]);
  for (const i of INTERVALS) cases.push(['purge_runs', 'SELECT diagnosis.purge_runs($1::interval)', [i]]);
  cases.push(['worker_status', 'SELECT * FROM diagnosis.worker_status()', []]);
  cases.push(['queue_stats', 'SELECT * FROM diagnosis.queue_stats', []]);
  return cases;
}

async function fingerprint(client) {
  const r = await client.query(`
    SELECT (SELECT count(*) FROM diagnosis.runs) AS runs, (SELECT count(*) FROM diagnosis.audit_log) AS audit,
           (SELECT count(*) FROM diagnosis.artifacts) AS artifacts,
           (SELECT coalesce(sum(hashtext(r::text)), 0) FROM diagnosis.runs r WHERE status <> 'queued') AS terminal_hash`);
  return JSON.stringify(r.rows[0]);
}

for (const role of ['postgres', 'pgd_corpus_clin']) {
  test(`bad-input corpus as ${role}: clear SQLSTATEs, nothing changed on failure, no crash`, async () => {
    const client = await cluster.connect(role);
    const admin = await cluster.connect();
    const counts = {};
    const codes = {};
    try {
      for (const [fn, sql, params] of corpus()) {
        counts[fn] = (counts[fn] ?? 0) + 1;
        const before = await fingerprint(admin);
        let result;
        try {
          result = await client.query(sql, params);
        } catch (error) {
          assert.ok(error.code, `${fn} ${JSON.stringify(params).slice(0, 120)}: no SQLSTATE (${error.message})`);
          assert.match(error.code, ALLOWED, `${fn} ${JSON.stringify(params).slice(0, 120)}: ${error.code} ${error.message}`);
          assert.ok(error.message.length > 0 && error.message.length < 400, error.message.slice(0, 400));
          assert.equal(await fingerprint(admin), before, `${fn} changed tables although it failed: ${error.message}`);
          codes[error.code] = (codes[error.code] ?? 0) + 1;
          continue;
        }
        // A successful enqueue returns a run that exists with exactly the given inputs.
        if (fn === 'enqueue_diagnosis' && params.length) {
          const id = result.rows[0].enqueue_diagnosis;
          const stored = (await admin.query('SELECT inputs = $2::jsonb AS same FROM diagnosis.runs WHERE id = $1', [id, params[1]])).rows[0];
          assert.ok(stored, `${fn} returned ${id}, which does not exist`);
          assert.equal(stored.same, true, `${fn} stored other inputs than ${params[1].slice(0, 80)}`);
        }
        codes.ok = (codes.ok ?? 0) + 1;
      }
      // The backend is alive and no process crashed.
      assert.equal((await client.query('SELECT 1 AS one')).rows[0].one, 1);
      assert.doesNotMatch(cluster.log(), /terminated by signal|server process .* was terminated/);
      console.log(`# ${role}: cases per function ${JSON.stringify(counts)}; outcomes ${JSON.stringify(codes)}`);
    } finally {
      await client.end();
      await admin.end();
    }
  });
}
