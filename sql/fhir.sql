-- FHIR (SPEC section 10): diagnosis.fhir_context_pack over FHIR R4 Observation resources of every shape it reads,
-- its bad settings, diagnosis.news2_fhir (UK Core NEWS2 shape) under row-level security, review_queue's order.
-- The resources are FHIR R4's vital-signs examples (respiratory-rate, heart-rate, body-temperature, satO2,
-- blood-pressure) as the specification writes them, US Core's pulse oximetry with inspired oxygen components,
-- and UK Core's ACVPU observation; only their subject points at our patient.
CREATE ROLE pgd_fhir_admin;
CREATE ROLE pgd_fhir_clin;
CREATE ROLE pgd_fhir_other_admin;
CREATE ROLE pgd_fhir_view_owner;
INSERT INTO diagnosis.organizations (id, name) VALUES
    ('f0000000-0000-4000-8000-00000000000a', 'FHIR Hospital'),
    ('f0000000-0000-4000-8000-00000000000b', 'Other Hospital');
INSERT INTO diagnosis.members (role_name, organization_id, member_role) VALUES
    ('pgd_fhir_admin', 'f0000000-0000-4000-8000-00000000000a', 'admin'),
    ('pgd_fhir_clin', 'f0000000-0000-4000-8000-00000000000a', 'clinician'),
    ('pgd_fhir_other_admin', 'f0000000-0000-4000-8000-00000000000b', 'admin');
INSERT INTO diagnosis.patients (id, organization_id, display_name, data)
SELECT ('f0000000-0000-4000-8000-0000000000' || n)::uuid, 'f0000000-0000-4000-8000-00000000000a', 'Patient ' || n,
       CASE WHEN n = '02' THEN '{"spo2_scale": 2}' ELSE '{}' END::jsonb
FROM unnest(ARRAY['01', '02', '03', '04', '05', '06', '07']) n;
INSERT INTO diagnosis.patient_assignments VALUES ('f0000000-0000-4000-8000-000000000001', 'pgd_fhir_clin');

CREATE SCHEMA fhir;
CREATE TABLE fhir.observation (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, resource jsonb NOT NULL);
GRANT USAGE ON SCHEMA fhir TO PUBLIC;
GRANT SELECT ON fhir.observation TO PUBLIC;
-- The index README recommends: the subject reference, then the effective time, newest first.
CREATE INDEX observation_subject_effective_idx ON fhir.observation
    ((resource -> 'subject' ->> 'reference'),
     (coalesce(resource ->> 'effectiveDateTime', resource -> 'effectivePeriod' ->> 'end',
               resource -> 'effectivePeriod' ->> 'start', resource ->> 'effectiveInstant')) DESC NULLS LAST);

INSERT INTO fhir.observation (resource) VALUES
($${"resourceType": "Observation", "id": "respiratory-rate",
  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"}],
           "text": "Respiratory rate"},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "1999-07-02",
  "valueQuantity": {"value": 26, "unit": "breaths/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "heart-rate",
  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "1999-07-02",
  "valueQuantity": {"value": 44, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "body-temperature",
  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}],
           "text": "Body temperature"},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "1999-07-02",
  "valueQuantity": {"value": 36.5, "unit": "C", "system": "http://unitsofmeasure.org", "code": "Cel"}}$$),
($${"resourceType": "Observation", "id": "satO2",
  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
  "identifier": [{"system": "http://goodcare.org/observation/id", "value": "o1223435-10"}],
  "partOf": [{"reference": "Procedure/ob"}],
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
                      {"system": "http://loinc.org", "code": "59408-5",
                       "display": "Oxygen saturation in Arterial blood by Pulse oximetry"},
                      {"system": "urn:iso:std:iso:11073:10101", "code": "150456", "display": "MDC_PULS_OXIM_SAT_O2"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2014-12-05T09:30:10+01:00",
  "valueQuantity": {"value": 95, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
  "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                  "code": "N", "display": "Normal"}], "text": "Normal (applies to non-numeric results)"}],
  "device": {"reference": "DeviceMetric/example"},
  "referenceRange": [{"low": {"value": 90, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
                      "high": {"value": 99, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}]}$$),
($${"resourceType": "Observation", "id": "blood-pressure",
  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
  "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"}],
  "basedOn": [{"identifier": {"system": "https://acme.org/identifiers", "value": "1234"}}],
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                       "display": "Blood pressure panel with all children optional"}],
           "text": "Blood pressure systolic & diastolic"},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2012-09-17",
  "performer": [{"reference": "Practitioner/example"}],
  "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                  "code": "L", "display": "low"}], "text": "Below low normal"}],
  "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003", "display": "Right arm"}]},
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"},
                         {"system": "http://snomed.info/sct", "code": "271649006", "display": "Systolic blood pressure"},
                         {"system": "http://acme.org/devices/clinical-codes", "code": "bp-s",
                          "display": "Systolic Blood pressure"}]},
     "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
     "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                     "code": "N", "display": "normal"}], "text": "Normal"}]},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
     "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
     "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                     "code": "L", "display": "low"}], "text": "Below low normal"}]}]}$$),
-- US Core pulse oximetry: SpO2 with the inspired oxygen flow and concentration as components.
($${"resourceType": "Observation", "id": "satO2-fiO2",
  "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-pulse-oximetry"]},
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
                      {"system": "http://loinc.org", "code": "59408-5",
                       "display": "Oxygen saturation in Arterial blood by Pulse oximetry"}],
           "text": "oxygen_saturation"},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2014-12-05T09:30:10+01:00",
  "valueQuantity": {"value": 95, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "3151-8", "display": "Inhaled oxygen flow rate"}],
              "text": "Inhaled oxygen flow rate"},
     "valueQuantity": {"value": 6, "unit": "liter/min", "system": "http://unitsofmeasure.org", "code": "L/min"}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "3150-0", "display": "Inhaled oxygen concentration"}],
              "text": "Inhaled oxygen concentration"},
     "valueQuantity": {"value": 40, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}]}$$),
-- UK Core ACVPU: SNOMED CT observable 1104441000000107 with a coded value, and one recorded as free text.
($${"resourceType": "Observation", "id": "acvpu",
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "survey", "display": "Survey"}]}],
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1104441000000107",
                       "display": "ACVPU (Alert Confusion Voice Pain Unresponsive) scale score"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2018-10-04T14:17:59+01:00",
  "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "300202002",
                                       "display": "Responds to voice"}]}}$$),
($${"resourceType": "Observation", "id": "acvpu-text", "status": "amended",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1104441000000107"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2018-10-04T15:00:00+01:00",
  "valueCodeableConcept": {"text": "New confusion"}}$$),
-- Body temperature in °F over a period (read at its end), and an inspired oxygen concentration on its own.
($${"resourceType": "Observation", "id": "temperature-f", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectivePeriod": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T10:05:00Z"},
  "valueQuantity": {"value": 101.3, "unit": "degF", "system": "http://unitsofmeasure.org", "code": "[degF]"}}$$),
($${"resourceType": "Observation", "id": "fio2", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "3150-0", "display": "Inhaled oxygen concentration"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2020-01-01T10:05:00Z",
  "valueQuantity": {"value": 21, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}$$),
-- Left out: entered in error, cancelled, a unit that is not the parameter's, a partial date, a day or an offset
-- that does not exist, a value absent,
-- not a vital sign, not an Observation, another patient.
($${"resourceType": "Observation", "id": "hr-error", "status": "entered-in-error",
  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 150, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "hr-cancelled", "status": "cancelled",
  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 151, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "temp-kelvin", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 310, "code": "K"}}$$),
($${"resourceType": "Observation", "id": "rr-partial-date", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01", "valueQuantity": {"value": 30, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "rr-no-such-day", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-02-30T10:00:00Z", "valueQuantity": {"value": 30, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "rr-bad-offset", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-03-01T10:00:00+99:00", "valueQuantity": {"value": 30, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "rr-absent", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z",
  "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}}$$),
($${"resourceType": "Observation", "id": "glucose", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8", "display": "Glucose [Moles/volume] in Blood"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 6.3, "code": "mmol/L"}}$$),
($${"resourceType": "Condition", "id": "copd",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000001"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 40, "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "someone-else", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000002"},
  "effectiveDateTime": "2021-01-01T00:00:00Z", "valueQuantity": {"value": 12, "code": "/min"}}$$);

-- Unset: 55000 with a hint.
SELECT pgd_try($$SELECT diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001')$$) AS unset;

-- Every shape read, in the pack's order (newest first); the left-out resources are absent.
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.observation';
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
\c
SHOW diagnosis.fhir_source;
SELECT o.code, o.value, o.unit, o.observed_at, o.data ->> 'acvpu' AS acvpu, o.data ->> 'fhir_reference' AS reference
FROM jsonb_to_recordset(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001') -> 'observations')
     AS o(code text, value numeric, unit text, observed_at timestamptz, data jsonb);
SELECT jsonb_pretty(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000002') - 'observations') AS pack;
-- Nothing dropped without a word: every resource read and not used is listed with its reason (the Condition and
-- the other patient's observation are not this patient's Observations, so they are not read).
SELECT u.reference, u.reason, u.code, u.observed_at, u.detail
FROM jsonb_to_recordset(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001') -> 'not_used')
     AS u(reference text, reason text, code text, observed_at timestamptz, detail text);

-- Observations as national profiles publish them (UK Core lists SNOMED CT first): SNOMED-only codes, UCUM
-- annotations ({Breaths}/min), room air and oxygen as findings without a value, kPa, effectiveInstant and
-- effectiveTiming; and what cannot be read: a value as text, a bound (> 40), an ACVPU text nobody charts, a panel
-- without its systolic component, a rate per hour.
INSERT INTO fhir.observation (resource) VALUES
($${"resourceType": "Observation", "id": "uk-rr", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86290005", "display": "Respiratory rate"},
                      {"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T10:00:00Z",
  "valueQuantity": {"value": 21, "unit": "Breaths / minute", "system": "http://unitsofmeasure.org", "code": "{Breaths}/min"}}$$),
($${"resourceType": "Observation", "id": "uk-hr-snomed-only", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "78564009", "display": "Pulse rate"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveInstant": "2024-05-01T10:00:00.250Z",
  "valueQuantity": {"value": 95, "system": "http://unitsofmeasure.org", "code": "{beats}/min"}}$$),
($${"resourceType": "Observation", "id": "uk-room-air", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "722742002", "display": "Breathing room air"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T10:00:00Z"}$$),
($${"resourceType": "Observation", "id": "uk-on-oxygen", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "371825009", "display": "Patient on oxygen"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:00:00Z",
  "valueQuantity": {"value": 2, "unit": "litre per minute", "system": "http://unitsofmeasure.org", "code": "l/min"}}$$),
($${"resourceType": "Observation", "id": "bp-kpa", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "75367002", "display": "Blood pressure"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveTiming": {"event": ["2024-05-01T09:55:00Z", "2024-05-01T09:58:00Z"]},
  "component": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "72313002"}]},
                 "valueQuantity": {"value": 16, "unit": "kPa", "system": "http://unitsofmeasure.org", "code": "kPa"}}]}$$),
($${"resourceType": "Observation", "id": "bp-no-systolic", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:50:00Z",
  "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "code": "mm[Hg]"}}]}$$),
($${"resourceType": "Observation", "id": "rr-as-text", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:40:00Z", "valueString": "twenty"}$$),
($${"resourceType": "Observation", "id": "rr-per-hour", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:30:00Z", "valueQuantity": {"value": 1200, "code": "/h"}}$$),
($${"resourceType": "Observation", "id": "rr-above", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:25:00Z", "valueQuantity": {"value": 40, "comparator": ">", "code": "/min"}}$$),
($${"resourceType": "Observation", "id": "acvpu-drowsy", "status": "final",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1104441000000107"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectiveDateTime": "2024-05-01T09:20:00Z", "valueCodeableConcept": {"text": "drowsy"}}$$),
($${"resourceType": "Observation", "id": "temp-period-start", "status": "preliminary",
  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "276885007"}]},
  "subject": {"reference": "Patient/f0000000-0000-4000-8000-000000000003"},
  "effectivePeriod": {"start": "2024-05-01T09:10:00Z"},
  "valueQuantity": {"value": 37.5, "code": "Cel"}}$$);
SELECT o.code, o.value, o.unit, o.observed_at, o.data ->> 'fhir_reference' AS reference
FROM jsonb_to_recordset(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000003') -> 'observations')
     AS o(code text, value numeric, unit text, observed_at timestamptz, data jsonb);
SELECT u.reference, u.reason, u.code, u.observed_at, u.detail
FROM jsonb_to_recordset(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000003') -> 'not_used')
     AS u(reference text, reason text, code text, observed_at timestamptz, detail text);
-- More readings than a pack holds: the 500 newest make it, the older ones are listed as superseded.
INSERT INTO fhir.observation (resource)
SELECT jsonb_build_object('resourceType', 'Observation', 'id', 'hr-' || i, 'status', 'final',
           'code', '{"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}'::jsonb,
           'subject', '{"reference": "Patient/f0000000-0000-4000-8000-000000000004"}'::jsonb,
           'effectiveDateTime', to_char((timestamptz '2024-01-01 00:00Z' + i * interval '1 minute') AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'valueQuantity', jsonb_build_object('value', 60 + i % 30, 'code', '/min'))
FROM generate_series(1, 502) i;
SELECT jsonb_array_length(p -> 'observations') AS used, p -> 'observations' -> 0 -> 'data' AS newest,
       jsonb_path_query_array(p, '$.not_used[*].reference') AS superseded,
       jsonb_path_query_array(p, '$.not_used[*].reason') AS reasons
FROM diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000004') p;

-- The UCUM annotation rule on its own.
SELECT u, diagnosis._fhir_unit(u) FROM unnest(ARRAY['{Breaths}/min', '{beats}/min', '1/min', '{score}', 'mm[Hg]', 'kPa']) u;

-- The pack's query uses the index (index scans counted in this transaction).
BEGIN;
SET LOCAL enable_seqscan = off;
SELECT jsonb_array_length(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001') -> 'observations') AS n;
SELECT idx_scan > 0 AS used_index FROM pg_stat_xact_user_tables WHERE relid = 'fhir.observation'::regclass;
COMMIT;

-- Bad calls: NULL, an unknown patient, a patient the caller may not see (the same answer), no access to the source.
SELECT pgd_try($$SELECT diagnosis.fhir_context_pack(NULL)$$) AS null_patient;
SELECT pgd_try($$SELECT diagnosis.fhir_context_pack('f0000000-0000-4000-8000-0000000000ff')$$) AS unknown_patient;
SET ROLE pgd_fhir_clin;
SELECT jsonb_array_length(diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001') -> 'observations') AS assigned;
SELECT pgd_try($$SELECT diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000002')$$) AS not_assigned;
RESET ROLE;
REVOKE SELECT ON fhir.observation FROM PUBLIC;
SET ROLE pgd_fhir_clin;
SELECT pgd_try($$SELECT diagnosis.fhir_context_pack('f0000000-0000-4000-8000-000000000001')$$) AS no_select_on_source;
RESET ROLE;
GRANT SELECT ON fhir.observation TO PUBLIC;

-- Bad settings, each a clear error: unqualified, unknown, not a relation of rows, no jsonb resource column. A view
-- is read as its owner (0.3), whoever that is: one of another role is accepted like one a superuser owns.
CREATE TABLE fhir.no_resource (id int, body jsonb);
CREATE TABLE fhir.text_resource (resource text);
CREATE SEQUENCE fhir.seq;
CREATE VIEW fhir.observation_view AS SELECT resource FROM fhir.observation;
CREATE VIEW fhir.foreign_view AS SELECT resource FROM fhir.observation;
ALTER VIEW fhir.foreign_view OWNER TO pgd_fhir_view_owner;
\set pack 'SELECT diagnosis.fhir_context_pack(''f0000000-0000-4000-8000-000000000001'')'
ALTER SYSTEM SET diagnosis.fhir_source = 'observation';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS unqualified;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.observation.extra';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS three_parts;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.observation; DROP TABLE fhir.observation';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS not_a_name;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.missing';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS unknown;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.seq';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS sequence;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.no_resource';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS no_resource_column;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.text_resource';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS text_resource_column;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.foreign_view';
SELECT pg_reload_conf();
\c
SELECT pgd_try(:'pack') AS view_of_another_role;
SET ROLE pgd_fhir_view_owner;
-- Its owner may read it (and then sees no patient: pgd_fhir_view_owner is no member).
SELECT pgd_try(:'pack') AS view_read_by_its_owner;
RESET ROLE;
ALTER SYSTEM SET diagnosis.fhir_source = '"fhir"."observation_view"';
SELECT pg_reload_conf();
\c
SELECT jsonb_array_length((:pack) -> 'observations') AS superuser_view_quoted_name;
ALTER SYSTEM SET diagnosis.fhir_source = 'fhir.observation';
SELECT pg_reload_conf();
\c

-- Diagnoses as the worker commits them (written here with triggers off, as only a worker may write artifacts;
-- test/integration/fhir.test.mjs has the worker do it for real). Results in the reference server's shape.
SET session_replication_role = replica;
INSERT INTO diagnosis.runs (id, patient_id, organization_id, status, inputs_hash, max_retries, attempt, created_at,
                            started_at, completed_at)
SELECT ('f1000000-0000-4000-8000-0000000000' || n)::uuid, ('f0000000-0000-4000-8000-0000000000' || n)::uuid,
       'f0000000-0000-4000-8000-00000000000a', 'completed', 'h' || n, 0, 1, at, at, at
FROM (VALUES ('01', timestamptz '2026-11-24 10:00+00'), ('02', '2026-11-24 09:00+00'), ('03', '2026-11-24 11:00+00'),
             ('04', '2026-11-24 12:00+00'), ('05', '2026-11-24 08:00+00'), ('06', '2026-11-24 07:00+00'),
             ('07', '2026-11-24 06:00+00')) v(n, at);
INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256,
                                 risk_level, confidence_score, primary_findings, recommendations_count, needs_review,
                                 sequence_order, created_at)
SELECT r.id, r.patient_id, r.organization_id, 'diagnosis_json', d.result, encode(sha256(convert_to(d.result::text, 'UTF8')), 'hex'),
       d.result ->> 'risk_level', (d.result ->> 'confidence_score')::real, '{}', 1, d.review, 3, r.completed_at
FROM diagnosis.runs r
JOIN (VALUES
    ('01', false, $${"risk_level": "high", "confidence_score": 0.95, "summary": "NEWS2 aggregate score 10: high clinical risk.",
       "primary_findings": [], "recommendations": [{"text": "Continuous monitoring of vital signs", "priority": "urgent"}],
       "news2": {"aggregate": 10, "spo2_scale": 1, "subscores": [
         {"parameter": "respiration_rate", "score": 3, "value": 26, "observed_at": "1999-07-02T00:00:00+00:00", "source": "Observation/respiratory-rate"},
         {"parameter": "spo2", "score": 1, "value": 95, "observed_at": "2014-12-05T08:30:10+00:00", "source": "Observation/satO2-fiO2"},
         {"parameter": "air_or_oxygen", "score": 2, "value": true, "observed_at": "2014-12-05T08:30:10+00:00", "source": "Observation/satO2-fiO2"},
         {"parameter": "systolic_bp", "score": 1, "value": 107, "observed_at": "2012-09-17T00:00:00+00:00", "source": "Observation/blood-pressure"},
         {"parameter": "pulse", "score": 1, "value": 44, "observed_at": "1999-07-02T00:00:00+00:00", "source": "Observation/heart-rate"},
         {"parameter": "consciousness", "score": 3, "value": "C", "observed_at": "2018-10-04T14:00:00+00:00", "source": "Observation/acvpu-text"},
         {"parameter": "temperature", "score": 1, "value": 38.5, "observed_at": "2020-01-01T10:05:00+00:00", "source": "Observation/temperature-f"}]}}$$::jsonb),
    ('02', false, $${"risk_level": "medium", "confidence_score": 0.83, "summary": "s", "primary_findings": [], "recommendations": [],
       "news2": {"aggregate": 5, "spo2_scale": 2, "subscores": [{"parameter": "respiration_rate", "score": 0, "value": 16},
                                                               {"parameter": "spo2", "score": 3, "value": 97},
                                                               {"parameter": "air_or_oxygen", "score": 2, "value": true}],
                 "not_recorded": ["systolic_bp", "pulse", 7, "mood"],
                 "not_understood": [{"parameter": "temperature", "reason": "unit_not_understood", "source": "Observation/t"},
                                    {"parameter": "pulse", "reason": "value_not_understood"},
                                    {"parameter": "spo2", "reason": "unit_not_understood"}, "x", null]}}$$),
    ('03', false, $${"risk_level": "high", "confidence_score": 0.9, "summary": "s", "primary_findings": [], "recommendations": []}$$),
    ('04', true, $${"risk_level": "low", "confidence_score": 0.35, "summary": "s", "primary_findings": [], "recommendations": []}$$),
    ('05', false, $${"risk_level": "critical", "confidence_score": 0.95, "summary": "s", "primary_findings": [], "recommendations": []}$$),
    ('06', false, $${"risk_level": "low", "confidence_score": 0.95, "summary": "No vital signs recorded: NEWS2 cannot be scored.",
       "primary_findings": [], "recommendations": []}$$),
    -- A server's news2 of the wrong shapes: rendered without what is malformed, never an error for the reader.
    ('07', false, $${"risk_level": "low", "confidence_score": 0.9, "summary": "s", "primary_findings": [], "recommendations": [],
       "news2": {"aggregate": "7", "spo2_scale": "two", "subscores": [{"parameter": "pulse", "score": "1"},
         {"parameter": "spo2", "score": 1, "observed_at": "yesterday", "source": 42}, {"parameter": "mood", "score": 3}, 7, null]}}$$)) d(n, review, result)
  ON r.id = ('f1000000-0000-4000-8000-0000000000' || d.n)::uuid;
RESET session_replication_role;

-- The NEWS2 Observation of a FHIR-sourced diagnosis: aggregate, one component per sub-score, derivedFrom, subject,
-- effectiveDateTime (the newest input), interpretation.
SELECT jsonb_pretty(resource) FROM diagnosis.news2_fhir WHERE patient_id = 'f0000000-0000-4000-8000-000000000001';
-- SpO2 scale 2 under its own code; a parameter not recorded or not understood is a component without a value
-- that says which (not understood wins; a parameter scored, an unknown one or a malformed entry adds none); a
-- result without scores says its value is unknown.
SELECT c -> 'code' -> 'coding' -> 0 ->> 'code' AS component, c -> 'valueQuantity' ->> 'value' AS score,
       c -> 'dataAbsentReason' -> 'coding' -> 0 ->> 'code' AS absent, c -> 'dataAbsentReason' ->> 'text' AS why
FROM diagnosis.news2_fhir, jsonb_array_elements(resource -> 'component') c
WHERE patient_id = 'f0000000-0000-4000-8000-000000000002';
SELECT resource -> 'dataAbsentReason' -> 'coding' -> 0 ->> 'code' AS absent, resource ? 'component' AS has_components,
       resource -> 'interpretation' -> 0 ->> 'text' AS interpretation, resource ->> 'effectiveDateTime' AS effective
FROM diagnosis.news2_fhir WHERE patient_id = 'f0000000-0000-4000-8000-000000000006';

SELECT resource -> 'valueQuantity' AS value, resource -> 'dataAbsentReason' -> 'coding' -> 0 ->> 'code' AS absent,
       resource -> 'component' AS components, resource ->> 'effectiveDateTime' AS effective
FROM diagnosis.news2_fhir WHERE patient_id = 'f0000000-0000-4000-8000-000000000007';

-- The same row-level security as artifacts: the organization's admin, the assigned clinician, another
-- organization's admin, an outsider.
CREATE FUNCTION pg_temp.seen_as(r text) RETURNS TABLE (role text, news2_fhir bigint, artifacts bigint, patients text)
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SET ROLE %I', r);
    RETURN QUERY SELECT r, (SELECT count(*) FROM diagnosis.news2_fhir),
                        (SELECT count(*) FROM diagnosis.artifacts WHERE artifact_type = 'diagnosis_json'),
                        (SELECT string_agg(right(patient_id::text, 2), ',' ORDER BY patient_id) FROM diagnosis.news2_fhir);
    RESET ROLE;
END;
$$;
SELECT s.* FROM unnest(ARRAY['pgd_fhir_admin', 'pgd_fhir_clin', 'pgd_fhir_other_admin', 'pgd_fhir_view_owner']) r,
     pg_temp.seen_as(r) s;

-- review_queue: critical, high, medium, then needs-review; newest first within each; low risk with good
-- confidence is not in it.
SELECT right(patient_id::text, 2) AS patient, risk_level, needs_review, urgency, diagnosed_at
FROM diagnosis.review_queue WHERE organization_id = 'f0000000-0000-4000-8000-00000000000a';

DROP SCHEMA fhir CASCADE;
ALTER SYSTEM RESET diagnosis.fhir_source;
SELECT pg_reload_conf();
DROP ROLE pgd_fhir_admin, pgd_fhir_clin, pgd_fhir_other_admin, pgd_fhir_view_owner;
