// FHIR R4 Observation resources in the shapes of the specification's vital-signs examples (respiratory-rate,
// heart-rate, body-temperature, satO2, blood-pressure), US Core's pulse oximetry (inspired oxygen as components)
// and UK Core's ACVPU observation, for a patient and a time of our choosing; and the source table they live in.

const LOINC = 'http://loinc.org';
const SNOMED = 'http://snomed.info/sct';
const UCUM = 'http://unitsofmeasure.org';
const VITAL_SIGNS = [{
  coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs', display: 'Vital Signs' }],
  text: 'Vital Signs',
}];

function vital(id, patient, at, coding, rest) {
  return {
    resourceType: 'Observation', id, meta: { profile: ['http://hl7.org/fhir/StructureDefinition/vitalsigns'] },
    status: 'final', category: VITAL_SIGNS, code: { coding }, subject: { reference: `Patient/${patient}` },
    effectiveDateTime: at, ...rest,
  };
}
const quantity = (value, unit, code) => ({ value, unit, system: UCUM, code });

export const respiratoryRate = (id, patient, at, value) => vital(id, patient, at,
  [{ system: LOINC, code: '9279-1', display: 'Respiratory rate' }], { valueQuantity: quantity(value, 'breaths/minute', '/min') });

export const heartRate = (id, patient, at, value) => vital(id, patient, at,
  [{ system: LOINC, code: '8867-4', display: 'Heart rate' }], { valueQuantity: quantity(value, 'beats/minute', '/min') });

/** unit: 'Cel' or '[degF]'. */
export const bodyTemperature = (id, patient, at, value, unit = 'Cel') => vital(id, patient, at,
  [{ system: LOINC, code: '8310-5', display: 'Body temperature' }],
  { valueQuantity: quantity(value, unit === 'Cel' ? 'C' : 'degF', unit) });

/** SpO2 as the satO2 example codes it; flow (L/min) and concentration (%) add US Core's inspired oxygen components. */
export function oxygenSaturation(id, patient, at, value, { flow, concentration } = {}) {
  const component = [];
  if (flow !== undefined) {
    component.push({ code: { coding: [{ system: LOINC, code: '3151-8', display: 'Inhaled oxygen flow rate' }] },
      valueQuantity: quantity(flow, 'liter/min', 'L/min') });
  }
  if (concentration !== undefined) {
    component.push({ code: { coding: [{ system: LOINC, code: '3150-0', display: 'Inhaled oxygen concentration' }] },
      valueQuantity: quantity(concentration, '%', '%') });
  }
  return vital(id, patient, at, [
    { system: LOINC, code: '2708-6', display: 'Oxygen saturation in Arterial blood' },
    { system: LOINC, code: '59408-5', display: 'Oxygen saturation in Arterial blood by Pulse oximetry' },
    { system: 'urn:iso:std:iso:11073:10101', code: '150456', display: 'MDC_PULS_OXIM_SAT_O2' },
  ], { valueQuantity: quantity(value, '%', '%'), ...(component.length ? { component } : {}) });
}

export const inspiredOxygen = (id, patient, at, concentration) => vital(id, patient, at,
  [{ system: LOINC, code: '3150-0', display: 'Inhaled oxygen concentration' }],
  { valueQuantity: quantity(concentration, '%', '%') });

export const bloodPressure = (id, patient, at, systolic, diastolic) => vital(id, patient, at,
  [{ system: LOINC, code: '85354-9', display: 'Blood pressure panel with all children optional' }], {
    component: [
      { code: { coding: [{ system: LOINC, code: '8480-6', display: 'Systolic blood pressure' }] },
        valueQuantity: quantity(systolic, 'mmHg', 'mm[Hg]') },
      { code: { coding: [{ system: LOINC, code: '8462-4', display: 'Diastolic blood pressure' }] },
        valueQuantity: quantity(diastolic, 'mmHg', 'mm[Hg]') },
    ],
  });

const ACVPU_CODES = {
  A: ['248234008', 'Mentally alert'], C: ['130987000', 'Acute confusion'], V: ['300202002', 'Responds to voice'],
  P: ['450847001', 'Responds to pain'], U: ['422768004', 'Unresponsive'],
};

/** UK Core's ACVPU: SNOMED CT 1104441000000107 with a coded value (letter), or free text ({ text }). */
export function acvpu(id, patient, at, value) {
  const valueCodeableConcept = typeof value === 'string'
    ? { coding: [{ system: SNOMED, code: ACVPU_CODES[value][0], display: ACVPU_CODES[value][1] }] }
    : { text: value.text };
  return {
    resourceType: 'Observation', id, status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'survey', display: 'Survey' }] }],
    code: { coding: [{ system: SNOMED, code: '1104441000000107', display: 'ACVPU (Alert Confusion Voice Pain Unresponsive) scale score' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: at, valueCodeableConcept,
  };
}

/** The FHIR store: one resource per row, with the index README recommends; named by diagnosis.fhir_source. */
export const SOURCE_SQL = `
  CREATE SCHEMA IF NOT EXISTS fhir;
  CREATE TABLE IF NOT EXISTS fhir.observation (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, resource jsonb NOT NULL);
  CREATE INDEX IF NOT EXISTS observation_subject_effective_idx ON fhir.observation
      ((resource -> 'subject' ->> 'reference'),
       (coalesce(resource ->> 'effectiveDateTime', resource -> 'effectivePeriod' ->> 'end',
                 resource -> 'effectivePeriod' ->> 'start', resource ->> 'effectiveInstant')) DESC NULLS LAST);`;

export async function loadResources(cluster, resources) {
  await cluster.query('INSERT INTO fhir.observation (resource) SELECT r FROM jsonb_array_elements($1::jsonb) r',
    [JSON.stringify(resources)]);
}
