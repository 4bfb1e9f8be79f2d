// NEWS2 scoring against the published bands (RCP 2017), both sides of every boundary (SpO2 on both scales), and the
// risk mapping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  scoreRespirationRate, scoreSpo2Scale1, scoreSpo2Scale2, spo2Scale, scoreAirOrOxygen, scoreSystolicBp, scorePulse, scoreConsciousness,
  scoreTemperature, riskLevel, confidence, diagnose, recommendations,
} from '../src/news2.js';

const bands = (fn, cases) => {
  for (const [value, score] of cases) assert.equal(fn(value), score, `${fn.name}(${value})`);
};

test('respiration rate bands', () => bands(scoreRespirationRate, [
  [4, 3], [8, 3], [9, 1], [11, 1], [12, 0], [20, 0], [21, 2], [24, 2], [25, 3], [40, 3], [20.4, 0], [20.5, 2],
]));
test('SpO2 scale 1 bands', () => bands(scoreSpo2Scale1, [
  [80, 3], [91, 3], [92, 2], [93, 2], [94, 1], [95, 1], [96, 0], [100, 0],
]));
// RCP 2017 chart, SpO2 scale 2: <=83 3, 84-85 2, 86-87 1, 88-92 0 (and >=93 on air 0); on oxygen 93-94 1,
// 95-96 2, >=97 3.
test('SpO2 scale 2 bands on air', () => bands((v) => scoreSpo2Scale2(v, false), [
  [70, 3], [83, 3], [84, 2], [85, 2], [86, 1], [87, 1], [88, 0], [92, 0], [93, 0], [94, 0], [96, 0], [97, 0], [100, 0],
  [83.4, 3], [83.5, 2], [92.4, 0],
]));
test('SpO2 scale 2 bands on oxygen', () => bands((v) => scoreSpo2Scale2(v, true), [
  [83, 3], [84, 2], [85, 2], [86, 1], [87, 1], [88, 0], [92, 0], [93, 1], [94, 1], [95, 2], [96, 2], [97, 3], [100, 3],
  [92.4, 0], [92.5, 1],
]));
test('the patient data selects the SpO2 scale; anything but 2 is scale 1', () => {
  assert.equal(spo2Scale({ spo2_scale: 2 }), 2);
  assert.equal(spo2Scale({ spo2_scale: '2' }), 2);
  for (const data of [{ spo2_scale: 1 }, {}, null, undefined, { spo2_scale: 3 }, { spo2_scale: 'two' }, 'x']) {
    assert.equal(spo2Scale(data), 1, JSON.stringify(data));
  }
});
test('air or oxygen', () => {
  assert.equal(scoreAirOrOxygen(true), 2);
  assert.equal(scoreAirOrOxygen(false), 0);
});
test('systolic blood pressure bands', () => bands(scoreSystolicBp, [
  [70, 3], [90, 3], [91, 2], [100, 2], [101, 1], [110, 1], [111, 0], [219, 0], [220, 3], [250, 3],
]));
test('pulse bands', () => bands(scorePulse, [
  [30, 3], [40, 3], [41, 1], [50, 1], [51, 0], [90, 0], [91, 1], [110, 1], [111, 2], [130, 2], [131, 3], [180, 3],
]));
test('consciousness (ACVPU)', () => {
  assert.equal(scoreConsciousness('A'), 0);
  for (const level of ['C', 'V', 'P', 'U']) assert.equal(scoreConsciousness(level), 3);
});
test('temperature bands on the 0.1 grid', () => bands(scoreTemperature, [
  [34.0, 3], [35.0, 3], [35.1, 1], [36.0, 1], [36.1, 0], [38.0, 0], [38.1, 1], [39.0, 1], [39.1, 2], [41, 2],
  [35.04, 3], [35.06, 1],
]));

test('risk mapping: aggregate bands, the single-3 rule, critical when worsening', () => {
  assert.equal(riskLevel(0, false, false), 'low');
  assert.equal(riskLevel(4, false, false), 'low');
  assert.equal(riskLevel(3, true, false), 'medium');
  assert.equal(riskLevel(5, false, false), 'medium');
  assert.equal(riskLevel(6, true, false), 'medium');
  assert.equal(riskLevel(7, false, false), 'high');
  assert.equal(riskLevel(7, false, true), 'critical');
  assert.equal(riskLevel(4, false, true), 'low');
  assert.equal(recommendations(0, false).length, 1);
  assert.ok(recommendations(7, false).some((r) => /critical-care/.test(r.text)));
});

test('confidence falls with missing parameters', () => {
  assert.equal(confidence(0), 0.95);
  assert.equal(confidence(1), 0.83);
  assert.equal(confidence(6), 0.23);
  assert.equal(confidence(7), 0.11);
});

const at = (hoursAgo) => new Date(Date.UTC(2026, 10, 24, 12 - hoursAgo)).toISOString();
const obs = (code, value, hoursAgo = 0, data = null) => ({ code, value, unit: null, observed_at: at(hoursAgo), data });

test('a full set of normal vitals (LOINC codes) is low risk with high confidence', () => {
  const d = diagnose({ observations: [
    obs('9279-1', 16), obs('59408-5', 98), obs('supplemental_oxygen', 0), obs('8480-6', 125), obs('8867-4', 72),
    obs('80288-4', null, 0, { acvpu: 'A' }), obs('8310-5', 36.8),
  ] });
  assert.equal(d.risk_level, 'low');
  assert.equal(d.confidence_score, 0.95);
  assert.ok(d.primary_findings.includes('NEWS2 aggregate score 0'));
  assert.equal(d.recommendations[0].text, 'Minimum 12-hourly observations');
});

test('the latest observation of each parameter counts, and a rising score is critical', () => {
  const d = diagnose({ observations: [
    obs('respiratory_rate', 18, 3), obs('respiratory_rate', 26, 0),
    obs('spo2', 97, 3), obs('spo2', 90, 0),
    obs('heart_rate', 80, 3), obs('heart_rate', 125, 0),
    obs('systolic_bp', 120, 0), obs('temperature', 38.5, 0),
  ] });
  // 3 (RR 26) + 3 (SpO2 90) + 2 (pulse 125) + 0 + 1 (38.5) = 9, previous 0 + 0 + 0 + 0 + 1 = 1
  assert.equal(d.risk_level, 'critical');
  assert.ok(d.primary_findings.includes('NEWS2 aggregate score 9 (previous 1)'));
  assert.ok(d.primary_findings.includes('Consciousness not recorded'));
  assert.ok(d.differential.some((x) => /Sepsis/.test(x.condition)));
});

test('high but not worsening stays high; a single 3 with a low aggregate is medium', () => {
  const high = diagnose({ observations: [obs('respiratory_rate', 26), obs('spo2', 91), obs('pulse', 112)] });
  assert.equal(high.risk_level, 'high');
  const single = diagnose({ observations: [obs('consciousness', null, 0, { acvpu: 'V' }), obs('pulse', 70)] });
  assert.equal(single.risk_level, 'medium');
  assert.match(single.summary, /single parameter scores 3/);
});

test('no vitals at all: low risk, floor confidence, says so', () => {
  const d = diagnose({ observations: [{ code: 'cholesterol', value: 5.2, observed_at: at(1) }] });
  assert.equal(d.risk_level, 'low');
  assert.equal(d.confidence_score, 0.05);
  assert.deepEqual(d.primary_findings, ['No vital signs recorded']);
  assert.equal(diagnose({}).risk_level, 'low');
});

test('deterministic: the same pack gives the same bytes, whatever the order of observations', () => {
  const observations = [obs('respiratory_rate', 22, 1), obs('spo2', 94, 0), obs('respiratory_rate', 19, 2)];
  const a = JSON.stringify(diagnose({ observations }));
  const b = JSON.stringify(diagnose({ observations: [...observations].reverse() }));
  assert.equal(a, b);
  assert.equal(a, JSON.stringify(diagnose({ observations })));
});

const pack = (observations, data = {}) => ({ patient: { data }, observations });

test('scale 2: an SpO2 of 90 % scores 0 for a hypercapnic patient and 3 on scale 1, and the findings say which', () => {
  const observations = [obs('spo2', 90), obs('respiratory_rate', 18), obs('supplemental_oxygen', 0)];
  const one = diagnose(pack(observations));
  const two = diagnose(pack(observations, { spo2_scale: 2 }));
  assert.ok(one.primary_findings.includes('SpO2 90 % (scale 1) scores 3'));
  assert.ok(one.primary_findings.includes('SpO2 scored on scale 1'));
  assert.equal(one.risk_level, 'medium'); // a single 3
  assert.ok(two.primary_findings.includes('SpO2 90 % (scale 2) scores 0'));
  assert.ok(two.primary_findings.some((f) => /^SpO2 scored on scale 2/.test(f)));
  assert.equal(two.risk_level, 'low');
  assert.equal(two.news2.spo2_scale, 2);
  assert.equal(two.news2.aggregate, 0);
});

test('scale 2 on oxygen: 97 % scores 3 and oxygen scores 2; the previous set is scored on the same scale', () => {
  const d = diagnose(pack([
    obs('spo2', 90, 2), obs('supplemental_oxygen', 0, 2),
    obs('spo2', 97, 0), obs('supplemental_oxygen', 1, 0),
  ], { spo2_scale: 2 }));
  assert.ok(d.primary_findings.includes('SpO2 97 % (scale 2) scores 3'));
  assert.ok(d.primary_findings.includes('NEWS2 aggregate score 5 (previous 0)'));
  assert.equal(d.risk_level, 'medium');
});

test('inspired oxygen: a flow above 0 (3151-8) or a concentration above 21 % (3150-0) is supplemental oxygen', () => {
  const score = (code, value) => diagnose(pack([obs(code, value)])).news2.subscores[0].score;
  assert.equal(score('3151-8', 2), 2);
  assert.equal(score('3151-8', 0), 0);
  assert.equal(score('3150-0', 21), 0);
  assert.equal(score('3150-0', 21.5), 2);
  assert.equal(score('3150-0', 28), 2);
});

test('ACVPU under its SNOMED CT code (1104441000000107) is consciousness', () => {
  const d = diagnose(pack([obs('1104441000000107', null, 0, { acvpu: 'V' })]));
  assert.ok(d.primary_findings.includes('Consciousness: responds to voice scores 3'));
});

test('news2: the aggregate and one sub-score per recorded parameter, with the FHIR source when the pack has one', () => {
  const d = diagnose(pack([
    obs('9279-1', 26, 0, { fhir_reference: 'Observation/rr-1' }), obs('9279-1', 18, 3, { fhir_reference: 'Observation/rr-0' }),
    obs('59408-5', 95), obs('8867-4', 112), obs('80288-4', null, 0, { acvpu: 'A' }),
  ]));
  assert.deepEqual(d.news2, {
    aggregate: 3 + 1 + 2 + 0,
    spo2_scale: 1,
    subscores: [
      { parameter: 'respiration_rate', score: 3, value: 26, observed_at: at(0), source: 'Observation/rr-1' },
      { parameter: 'spo2', score: 1, value: 95, observed_at: at(0) },
      { parameter: 'pulse', score: 2, value: 112, observed_at: at(0) },
      { parameter: 'consciousness', score: 0, value: 'A', observed_at: at(0) },
    ],
    not_recorded: ['air_or_oxygen', 'systolic_bp', 'temperature'],
    not_understood: [],
  });
  const sumOfScores = d.news2.subscores.reduce((s, x) => s + x.score, 0);
  assert.ok(d.primary_findings.includes(`NEWS2 aggregate score ${sumOfScores} (previous 3)`));
});

// A FHIR pack (diagnosis.fhir_context_pack) lists what it read and did not use: not_used [{reference, reason, code,
// observed_at, detail}]. The diagnosis tells "not recorded" from "recorded but not understood".
const unused = (reference, reason, code, hoursAgo, detail) =>
  ({ reference, reason, ...(code ? { code } : {}), observed_at: at(hoursAgo), ...(detail ? { detail } : {}) });

test('not understood: a parameter recorded in a unit not understood is not "not recorded", and sends the diagnosis to review', () => {
  const full = [obs('9279-1', 18), obs('59408-5', 97), obs('supplemental_oxygen', 0), obs('8480-6', 120), obs('8867-4', 70),
    obs('1104441000000107', null, 0, { acvpu: 'A' }), obs('8310-5', 37)];
  const clean = diagnose(pack(full));
  assert.equal(clean.confidence_score, 0.95);
  assert.deepEqual(clean.news2.not_understood, []);
  const withTemperatureInKelvin = {
    ...pack(full.filter((o) => o.code !== '8310-5')),
    not_used: [unused('Observation/t', 'unit_not_understood', '8310-5', 0, 'unit K'),
      unused('Observation/glucose', 'unknown_code', null, 1, 'http://loinc.org|15074-8'),
      unused('Observation/hr-err', 'entered_in_error', '8867-4', 0)],
  };
  const d = diagnose(withTemperatureInKelvin);
  assert.deepEqual(d.news2.not_recorded, []);
  assert.deepEqual(d.news2.not_understood,
    [{ parameter: 'temperature', reason: 'unit_not_understood', source: 'Observation/t', detail: 'unit K' }]);
  assert.equal(d.confidence_score, 0.05, 'below any min_confidence above the floor: needs review');
  assert.ok(d.primary_findings.includes('Temperature recorded but not understood (Observation/t: unit not understood: unit K)'));
  assert.ok(!d.primary_findings.includes('Temperature not recorded'));
  assert.ok(d.primary_findings.includes('Read from the record and not used: 1 unit not understood, 1 unknown code, 1 entered in error'));
  assert.match(d.summary, /1 parameter\(s\) recorded but not understood: review the record/);
  assert.doesNotMatch(d.summary, /not recorded/);
  // The same pack without the temperature at all: not recorded, a lower confidence but not review.
  const missing = diagnose(pack(full.filter((o) => o.code !== '8310-5')));
  assert.deepEqual(missing.news2.not_recorded, ['temperature']);
  assert.equal(missing.confidence_score, 0.83);
  assert.ok(missing.primary_findings.includes('Temperature not recorded'));
});

test('not understood: only what could change the score counts; entered in error, unknown codes, superseded do not', () => {
  const base = [obs('9279-1', 18, 1)];
  // Older than the reading scored: it cannot change the score.
  assert.deepEqual(diagnose({ ...pack(base), not_used: [unused('Observation/old', 'unit_not_understood', '9279-1', 3)] })
    .news2.not_understood, []);
  // Newer than the reading scored: it might.
  assert.equal(diagnose({ ...pack(base), not_used: [unused('Observation/new', 'value_not_understood', '9279-1', 0)] })
    .news2.not_understood.length, 1);
  // A time not understood cannot be placed: it counts.
  assert.equal(diagnose({ ...pack(base), not_used: [{ reference: 'Observation/x', reason: 'time_not_understood', code: '9279-1' }] })
    .confidence_score, 0.05);
  for (const reason of ['entered_in_error', 'cancelled', 'superseded', 'no_value', 'unknown_code']) {
    const d = diagnose({ ...pack(base), not_used: [unused('Observation/y', reason, '9279-1', 0)] });
    assert.deepEqual(d.news2.not_understood, [], reason);
    assert.equal(d.confidence_score, 0.23, reason); // six parameters not recorded
  }
  // Malformed lists are ignored, never a crash.
  for (const notUsed of [null, 'x', [null, 7, { reason: 'unit_not_understood' }, { reason: 'unit_not_understood', code: 'mood' }]]) {
    assert.deepEqual(diagnose({ ...pack(base), not_used: notUsed }).news2.not_understood, []);
  }
});

test('room air and supplemental oxygen as findings (the FHIR pack\'s supplemental_oxygen 0 or 1)', () => {
  assert.equal(diagnose(pack([obs('supplemental_oxygen', 0)])).news2.subscores[0].score, 0);
  assert.equal(diagnose(pack([obs('supplemental_oxygen', 1)])).news2.subscores[0].score, 2);
});

test('nothing scored but something not understood: says so, not "no vital signs recorded"', () => {
  const d = diagnose({ ...pack([]), not_used: [unused('Observation/rr', 'unit_not_understood', '9279-1', 0, 'unit /h')] });
  assert.equal(d.confidence_score, 0.05);
  assert.deepEqual(d.primary_findings.slice(0, 2),
    ['No vital sign understood', 'Respiration rate recorded but not understood (Observation/rr: unit not understood: unit /h)']);
  assert.deepEqual(d.news2.not_recorded, ['spo2', 'air_or_oxygen', 'systolic_bp', 'pulse', 'consciousness', 'temperature']);
});
