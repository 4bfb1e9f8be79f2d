// NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017), as pure functions.
// Scores each parameter from its latest observation in a pg_diagnosis context pack, maps the aggregate to a risk
// level and NEWS2's clinical response. SpO2 is scored on scale 1, or on scale 2 when the patient's data says
// {"spo2_scale": 2} (hypercapnic respiratory failure: a clinician's decision, as the chart requires).
// Deterministic: no clocks, no randomness.

// Observation codes accepted for each parameter (LOINC or plain names).
export const CODES = {
  respiration_rate: ['9279-1', 'respiratory_rate', 'respiration_rate'],
  spo2: ['59408-5', '2708-6', 'spo2'],
  air_or_oxygen: ['supplemental_oxygen', '3151-8', '3150-0'],
  systolic_bp: ['8480-6', 'systolic_bp'],
  pulse: ['8867-4', 'heart_rate', 'pulse'],
  consciousness: ['80288-4', '1104441000000107', 'consciousness'],
  temperature: ['8310-5', 'temperature'],
};

export const LABELS = {
  respiration_rate: ['Respiration rate', '/min'],
  spo2: ['SpO2', '%'],
  air_or_oxygen: ['Air or oxygen', ''],
  systolic_bp: ['Systolic blood pressure', 'mmHg'],
  pulse: ['Pulse', '/min'],
  consciousness: ['Consciousness', ''],
  temperature: ['Temperature', '°C'],
};

const PARAMETERS = Object.keys(CODES);
const codeToParameter = new Map(PARAMETERS.flatMap((p) => CODES[p].map((c) => [c, p])));

// Rates, SpO2 and pressure are charted as whole numbers: a fractional value is rounded to the nearest integer
// before banding (20.5 breaths/min counts as 21). Temperature is charted to 0.1 °C and banded on that grid.
const round1 = (x) => Math.round(x * 10) / 10;

export function scoreRespirationRate(v) {
  const x = Math.round(v);
  if (x <= 8) return 3;
  if (x <= 11) return 1;
  if (x <= 20) return 0;
  if (x <= 24) return 2;
  return 3;
}

export function scoreSpo2Scale1(v) {
  const x = Math.round(v);
  if (x <= 91) return 3;
  if (x <= 93) return 2;
  if (x <= 95) return 1;
  return 0;
}

/** SpO2 scale 2, for a target range of 88-92 %: low saturations score as on scale 1 shifted down, and on oxygen
 * a saturation above the target range scores too (93-94 scores 1, 95-96 scores 2, 97+ scores 3). On air, 93 % and
 * above scores 0. */
export function scoreSpo2Scale2(v, onOxygen) {
  const x = Math.round(v);
  if (x <= 83) return 3;
  if (x <= 85) return 2;
  if (x <= 87) return 1;
  if (x <= 92 || !onOxygen) return 0;
  if (x <= 94) return 1;
  if (x <= 96) return 2;
  return 3;
}

/** The SpO2 scale the patient's data selects: 2 for {"spo2_scale": 2} (number or string), otherwise 1. */
export function spo2Scale(patientData) {
  const chosen = patientData && typeof patientData === 'object' ? patientData.spo2_scale : undefined;
  return chosen === 2 || chosen === '2' ? 2 : 1;
}

export function scoreAirOrOxygen(onOxygen) {
  return onOxygen ? 2 : 0;
}

export function scoreSystolicBp(v) {
  const x = Math.round(v);
  if (x <= 90) return 3;
  if (x <= 100) return 2;
  if (x <= 110) return 1;
  if (x <= 219) return 0;
  return 3;
}

export function scorePulse(v) {
  const x = Math.round(v);
  if (x <= 40) return 3;
  if (x <= 50) return 1;
  if (x <= 90) return 0;
  if (x <= 110) return 1;
  if (x <= 130) return 2;
  return 3;
}

export function scoreConsciousness(acvpu) {
  return acvpu === 'A' ? 0 : 3;
}

export function scoreTemperature(v) {
  const x = round1(v);
  if (x <= 35.0) return 3;
  if (x <= 36.0) return 1;
  if (x <= 38.0) return 0;
  if (x <= 39.0) return 1;
  return 2;
}

/** The value of an observation for its parameter, or undefined when it carries none. */
function observationValue(parameter, obs) {
  const numeric = obs.value === null || obs.value === undefined ? undefined : Number(obs.value);
  if (parameter === 'consciousness') {
    const letter = obs.data && typeof obs.data === 'object' ? (obs.data.acvpu ?? obs.data.value) : undefined;
    if (typeof letter === 'string' && /^[ACVPU]$/i.test(letter.trim())) return letter.trim().toUpperCase();
    if (numeric !== undefined && Number.isFinite(numeric)) return numeric === 0 ? 'A' : 'U';
    return undefined;
  }
  if (numeric === undefined || !Number.isFinite(numeric)) return undefined;
  // Inspired oxygen concentration (3150-0) above room air's 21 % means supplemental oxygen; any other code
  // (a flag, or a flow rate 3151-8) means oxygen when above 0.
  if (parameter === 'air_or_oxygen') return String(obs.code).trim() === '3150-0' ? numeric > 21 : numeric > 0;
  return numeric;
}

const SCORERS = {
  respiration_rate: scoreRespirationRate,
  spo2: scoreSpo2Scale1,
  air_or_oxygen: scoreAirOrOxygen,
  systolic_bp: scoreSystolicBp,
  pulse: scorePulse,
  consciousness: scoreConsciousness,
  temperature: scoreTemperature,
};

/** The score of one parameter's value; SpO2 on scale 2 needs to know whether the patient is on oxygen. */
function scoreOf(parameter, value, scale, onOxygen) {
  if (parameter === 'spo2' && scale === 2) return scoreSpo2Scale2(value, onOxygen === true);
  return SCORERS[parameter](value);
}

/** For each parameter, its readings ({value, obs}) newest first (by observed_at, then by position in the pack). */
export function readingsByParameter(observations = []) {
  const indexed = observations.map((obs, i) => ({ obs, i, t: Date.parse(obs?.observed_at ?? '') }));
  indexed.sort((a, b) => {
    const ta = Number.isNaN(a.t) ? -Infinity : a.t;
    const tb = Number.isNaN(b.t) ? -Infinity : b.t;
    return tb - ta || a.i - b.i;
  });
  const readings = Object.fromEntries(PARAMETERS.map((p) => [p, []]));
  for (const { obs } of indexed) {
    if (!obs || typeof obs !== 'object') continue;
    const parameter = codeToParameter.get(String(obs.code ?? '').trim());
    if (!parameter) continue;
    const value = observationValue(parameter, obs);
    if (value !== undefined) readings[parameter].push({ value, obs });
  }
  return readings;
}

/** For each parameter, its values newest first. */
export function valuesByParameter(observations = []) {
  const readings = readingsByParameter(observations);
  return Object.fromEntries(PARAMETERS.map((p) => [p, readings[p].map((r) => r.value)]));
}

function describe(parameter, value, scale) {
  const [label, unit] = LABELS[parameter];
  if (parameter === 'spo2') return `${label} ${value} ${unit} (scale ${scale})`;
  if (parameter === 'air_or_oxygen') return `${label}: ${value ? 'supplemental oxygen' : 'room air'}`;
  if (parameter === 'consciousness') return `${label}: ${{ A: 'alert', C: 'new confusion', V: 'responds to voice', P: 'responds to pain', U: 'unresponsive' }[value]}`;
  return `${label} ${value}${unit ? ` ${unit}` : ''}`;
}

/** The score of each parameter that has a value in `pick` (missing parameters are left out), on the given scale. */
function scoresOf(pick, scale) {
  const onOxygen = pick('air_or_oxygen');
  const scores = {};
  for (const p of PARAMETERS) {
    const v = pick(p);
    if (v !== undefined) scores[p] = scoreOf(p, v, scale, onOxygen);
  }
  return scores;
}

const sum = (scores) => Object.values(scores).reduce((a, b) => a + b, 0);

export function riskLevel(total, anySingleThree, worsening) {
  if (total >= 7) return worsening ? 'critical' : 'high';
  if (total >= 5) return 'medium';
  if (anySingleThree) return 'medium';
  return 'low';
}

export function recommendations(total, anySingleThree) {
  if (total >= 7) {
    return [
      { text: 'Continuous monitoring of vital signs', priority: 'urgent' },
      { text: 'Registered nurse to inform the medical team immediately', priority: 'urgent' },
      { text: 'Emergency assessment by a clinical team with critical-care competencies', priority: 'urgent' },
      { text: 'Consider transfer to a higher level of care (HDU/ICU)', priority: 'urgent' },
    ];
  }
  if (total >= 5) {
    return [
      { text: 'Minimum 1-hourly observations', priority: 'urgent' },
      { text: 'Registered nurse to inform the medical team immediately', priority: 'urgent' },
      { text: 'Urgent assessment by a clinician with competencies in acute illness', priority: 'urgent' },
      { text: 'Provide clinical care in an environment with monitoring facilities', priority: 'soon' },
    ];
  }
  if (anySingleThree) {
    return [
      { text: 'Minimum 1-hourly observations', priority: 'soon' },
      { text: 'Registered nurse to inform the medical team', priority: 'soon' },
      { text: 'Medical team to assess and decide whether escalation of care is needed', priority: 'soon' },
    ];
  }
  if (total >= 1) {
    return [
      { text: 'Minimum 4-6 hourly observations', priority: 'routine' },
      { text: 'Registered nurse to assess the patient', priority: 'routine' },
      { text: 'Registered nurse to decide whether increased monitoring or escalation is needed', priority: 'routine' },
    ];
  }
  return [{ text: 'Minimum 12-hourly observations', priority: 'routine' }];
}

export const CONFIDENCE_FLOOR = 0.05;

/** The reasons, in a FHIR pack's not_used, for a recorded reading that could not be read: such a reading may
 * change the score, so the diagnosis needs a clinician's review. */
export const NOT_UNDERSTOOD = new Set(['unit_not_understood', 'value_not_understood', 'time_not_understood']);

/** The readings of NEWS2 parameters that the pack lists as recorded but not understood (pg_diagnosis's FHIR pack,
 * not_used), and that could change the score: of a parameter without a reading, or not older than the reading
 * scored (a reading whose time is not understood always counts). */
export function notUnderstood(notUsed, readings) {
  const found = [];
  for (const entry of Array.isArray(notUsed) ? notUsed : []) {
    if (!entry || typeof entry !== 'object' || !NOT_UNDERSTOOD.has(entry.reason)) continue;
    const parameter = codeToParameter.get(String(entry.code ?? '').trim());
    if (!parameter) continue;
    const scored = readings[parameter][0];
    const at = Date.parse(entry.observed_at ?? '');
    const scoredAt = Date.parse(scored?.obs.observed_at ?? '');
    if (scored && !Number.isNaN(at) && !Number.isNaN(scoredAt) && at < scoredAt) continue;
    const item = { parameter, reason: entry.reason };
    if (typeof entry.reference === 'string') item.source = entry.reference;
    if (typeof entry.detail === 'string') item.detail = entry.detail;
    found.push(item);
  }
  return found;
}

/** "2 unknown code, 1 entered in error": what the pack read and did not use, by reason. */
function notUsedCounts(notUsed) {
  const counts = new Map();
  for (const entry of Array.isArray(notUsed) ? notUsed : []) {
    if (entry && typeof entry.reason === 'string') counts.set(entry.reason, (counts.get(entry.reason) ?? 0) + 1);
  }
  return [...counts].map(([reason, n]) => `${n} ${reason.replaceAll('_', ' ')}`).join(', ');
}

function describeNotUnderstood({ parameter, reason, source, detail }) {
  const what = [source, reason.replaceAll('_', ' '), detail].filter(Boolean).join(': ');
  return `${LABELS[parameter][0]} recorded but not understood (${what})`;
}

/** Confidence falls by 0.12 for each of the seven parameters not recorded, from 0.95 (0.11 with all seven
 * missing); a pack with no vital sign at all gets the floor, 0.05. */
export function confidence(missingCount) {
  return Math.max(CONFIDENCE_FLOOR, Math.round((0.95 - 0.12 * missingCount) * 100) / 100);
}

/** The full NEWS2 diagnosis (a result schema v1 object) of a context pack. */
export function diagnose(contextPack) {
  const observations = Array.isArray(contextPack?.observations) ? contextPack.observations : [];
  const scale = spo2Scale(contextPack?.patient?.data);
  const readings = readingsByParameter(observations);
  const values = Object.fromEntries(PARAMETERS.map((p) => [p, readings[p].map((r) => r.value)]));
  const present = PARAMETERS.filter((p) => values[p].length > 0);
  const missing = PARAMETERS.filter((p) => values[p].length === 0);
  // A parameter is missing because it was not recorded or because what was recorded was not understood; anything
  // not understood that could change the score sends the diagnosis to review (confidence at the floor, below any
  // diagnosis.min_confidence above it).
  const unread = notUnderstood(contextPack?.not_used, readings);
  const notRecorded = missing.filter((p) => !unread.some((u) => u.parameter === p));
  const unreadFindings = unread.map(describeNotUnderstood);
  const notUsed = notUsedCounts(contextPack?.not_used);
  if (notUsed) unreadFindings.push(`Read from the record and not used: ${notUsed}`);
  const review = unread.length > 0
    ? `; ${new Set(unread.map((u) => u.parameter)).size} parameter(s) recorded but not understood: review the record` : '';

  if (present.length === 0) {
    return {
      risk_level: 'low',
      confidence_score: CONFIDENCE_FLOOR, /* nothing to score at all */
      summary: `No vital signs ${unread.length ? 'understood' : 'recorded'}: NEWS2 cannot be scored${review}. ` +
        'Record a full set of observations.',
      primary_findings: [unread.length ? 'No vital sign understood' : 'No vital signs recorded', ...unreadFindings],
      recommendations: [{ text: 'Record a full set of vital signs to calculate NEWS2', priority: 'soon' }],
      news2: { spo2_scale: scale, subscores: [], not_recorded: notRecorded, not_understood: unread },
    };
  }

  const scores = scoresOf((p) => values[p][0], scale);
  const total = sum(scores);
  const anySingleThree = Object.values(scores).some((s) => s === 3);
  const hasPrevious = PARAMETERS.some((p) => values[p].length > 1);
  const previousTotal = sum(scoresOf((p) => (values[p].length > 1 ? values[p][1] : values[p][0]), scale));
  const worsening = hasPrevious && total > previousTotal;
  const risk = riskLevel(total, anySingleThree, worsening);

  const findings = present.map((p) => `${describe(p, values[p][0], scale)} scores ${scores[p]}`);
  findings.push(`NEWS2 aggregate score ${total}` + (hasPrevious ? ` (previous ${previousTotal})` : ''));
  findings.push(scale === 2 ? 'SpO2 scored on scale 2 (hypercapnic respiratory failure, target 88-92 %)'
    : 'SpO2 scored on scale 1');
  for (const p of notRecorded) findings.push(`${LABELS[p][0]} not recorded`);
  findings.push(...unreadFindings);

  const differential = [];
  if ((scores.temperature ?? 0) >= 1 && (scores.pulse ?? 0) >= 1 && (scores.respiration_rate ?? 0) >= 2) {
    differential.push({ condition: 'Sepsis (screen with local sepsis protocol)', probability: total >= 7 ? 0.6 : 0.35 });
  }
  if ((scores.spo2 ?? 0) >= 2 && (scores.respiration_rate ?? 0) >= 2) {
    differential.push({ condition: 'Acute respiratory deterioration', probability: 0.4 });
  }

  const result = {
    risk_level: risk,
    confidence_score: unread.length ? CONFIDENCE_FLOOR : confidence(missing.length),
    summary: `NEWS2 aggregate score ${total}: ${risk} clinical risk` +
      (anySingleThree && total < 5 ? ' (a single parameter scores 3)' : '') +
      (worsening ? `, worsening from ${previousTotal}` : '') +
      (notRecorded.length ? `; ${notRecorded.length} of 7 parameters not recorded` : '') + review + '.',
    primary_findings: findings,
    recommendations: recommendations(total, anySingleThree),
    news2: {
      ...news2Detail(total, scale, present.map((p) => ({ parameter: p, score: scores[p], reading: readings[p][0] }))),
      not_recorded: notRecorded,
      not_understood: unread,
    },
  };
  if (differential.length) result.differential = differential;
  return result;
}

/** The scores behind the result, for consumers that render NEWS2 itself (pg_diagnosis's news2_fhir view): an extra
 * property, which result schema v1 allows. `source` is the FHIR reference of the observation scored, when the pack
 * came from FHIR (its data.fhir_reference). diagnose adds not_recorded (parameters) and not_understood
 * ({parameter, reason, source, detail}). */
function news2Detail(total, scale, scored) {
  return {
    aggregate: total,
    spo2_scale: scale,
    subscores: scored.map(({ parameter, score, reading }) => {
      const entry = { parameter, score, value: reading.value };
      if (reading.obs.observed_at !== undefined && reading.obs.observed_at !== null) entry.observed_at = reading.obs.observed_at;
      const source = reading.obs.data?.fhir_reference;
      if (typeof source === 'string') entry.source = source;
      return entry;
    }),
  };
}
