// NEWS2 scoring against the published bands (RCP 2017), both sides of every boundary, and the risk mapping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  scoreRespirationRate, scoreSpo2Scale1, scoreAirOrOxygen, scoreSystolicBp, scorePulse, scoreConsciousness,
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
