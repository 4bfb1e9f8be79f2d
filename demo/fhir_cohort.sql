-- The demo cohort as FHIR (demo --fhir): every vital sign cohort.sql charted becomes a FHIR R4 Observation in
-- fhir.observation, in the shapes hospitals keep (vital-signs profile LOINC codes, the blood pressure panel,
-- inspired oxygen as flow or concentration, ACVPU under SNOMED CT, some temperatures in °F, a few resources entered
-- in error), and the flat rows are removed, so every context pack comes from diagnosis.fhir_context_pack.
-- Stable patients charted at SpO2 91 % with an even number get SpO2 scale 2 (hypercapnic respiratory failure).
CREATE SCHEMA fhir;
CREATE TABLE fhir.observation (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, resource jsonb NOT NULL);
GRANT USAGE ON SCHEMA fhir TO PUBLIC;
GRANT SELECT ON fhir.observation TO PUBLIC;

CREATE FUNCTION pg_temp.coding(system text, code text, display text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('system', system, 'code', code, 'display', display)
$$;
CREATE FUNCTION pg_temp.quantity(value numeric, unit text, code text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('value', value, 'unit', unit, 'system', 'http://unitsofmeasure.org', 'code', code)
$$;

CREATE TEMP TABLE demo_vitals AS
SELECT o.id, o.patient_id, o.code, o.value, o.observed_at, o.data,
       right(p.display_name, 5)::int AS n,
       to_char(o.observed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at
FROM diagnosis.observations o JOIN diagnosis.patients p ON p.id = o.patient_id;

INSERT INTO fhir.observation (resource)
SELECT jsonb_strip_nulls(jsonb_build_object(
           'resourceType', 'Observation', 'id', 'demo-' || v.id, 'status', 'final',
           'category', jsonb_build_array(jsonb_build_object('coding', jsonb_build_array(pg_temp.coding(
               'http://terminology.hl7.org/CodeSystem/observation-category',
               CASE WHEN v.code = '80288-4' THEN 'survey' ELSE 'vital-signs' END, NULL)))),
           'subject', jsonb_build_object('reference', 'Patient/' || v.patient_id),
           'effectiveDateTime', v.at) || r.body)
FROM demo_vitals v
CROSS JOIN LATERAL (SELECT CASE v.code
    WHEN '9279-1' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '9279-1', 'Respiratory rate'))),
        'valueQuantity', pg_temp.quantity(v.value, 'breaths/minute', '/min'))
    WHEN '8867-4' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '8867-4', 'Heart rate'))),
        'valueQuantity', pg_temp.quantity(v.value, 'beats/minute', '/min'))
    WHEN '59408-5' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(
            pg_temp.coding('http://loinc.org', '2708-6', 'Oxygen saturation in Arterial blood'),
            pg_temp.coding('http://loinc.org', '59408-5', 'Oxygen saturation in Arterial blood by Pulse oximetry'))),
        'valueQuantity', pg_temp.quantity(v.value, '%', '%'))
    WHEN '8480-6' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(
            pg_temp.coding('http://loinc.org', '85354-9', 'Blood pressure panel with all children optional'))),
        'component', jsonb_build_array(
            jsonb_build_object('code', jsonb_build_object('coding', jsonb_build_array(
                                   pg_temp.coding('http://loinc.org', '8480-6', 'Systolic blood pressure'))),
                               'valueQuantity', pg_temp.quantity(v.value, 'mmHg', 'mm[Hg]')),
            jsonb_build_object('code', jsonb_build_object('coding', jsonb_build_array(
                                   pg_temp.coding('http://loinc.org', '8462-4', 'Diastolic blood pressure'))),
                               'valueQuantity', pg_temp.quantity(round(v.value * 0.62), 'mmHg', 'mm[Hg]'))))
    -- Oxygen as a flow for even patients, as an inspired concentration for odd ones; room air as 21 %.
    WHEN 'supplemental_oxygen' THEN CASE WHEN v.value > 0 AND v.n % 2 = 0 THEN jsonb_build_object(
            'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '3151-8', 'Inhaled oxygen flow rate'))),
            'valueQuantity', pg_temp.quantity(2, 'liter/min', 'L/min'))
        ELSE jsonb_build_object(
            'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '3150-0', 'Inhaled oxygen concentration'))),
            'valueQuantity', pg_temp.quantity(CASE WHEN v.value > 0 THEN 28 ELSE 21 END, '%', '%')) END
    WHEN '80288-4' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://snomed.info/sct', '1104441000000107',
                                                                              'ACVPU (Alert Confusion Voice Pain Unresponsive) scale score'))),
        'valueCodeableConcept', jsonb_build_object('coding', jsonb_build_array(CASE v.data ->> 'acvpu'
            WHEN 'A' THEN pg_temp.coding('http://snomed.info/sct', '248234008', 'Mentally alert')
            WHEN 'C' THEN pg_temp.coding('http://snomed.info/sct', '130987000', 'Acute confusion')
            WHEN 'V' THEN pg_temp.coding('http://snomed.info/sct', '300202002', 'Responds to voice')
            WHEN 'P' THEN pg_temp.coding('http://snomed.info/sct', '450847001', 'Responds to pain')
            ELSE pg_temp.coding('http://snomed.info/sct', '422768004', 'Unresponsive') END)))
    -- Every fourth patient's thermometer reads in °F.
    WHEN '8310-5' THEN jsonb_build_object(
        'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '8310-5', 'Body temperature'))),
        'valueQuantity', CASE WHEN v.n % 4 = 0 THEN pg_temp.quantity(round(v.value * 9 / 5 + 32, 2), 'degF', '[degF]')
                              ELSE pg_temp.quantity(v.value, 'C', 'Cel') END)
    END AS body) r
WHERE r.body IS NOT NULL;

-- One patient in twenty also has a heart rate of 180 entered in error, after the last real one: ignored.
INSERT INTO fhir.observation (resource)
SELECT jsonb_build_object('resourceType', 'Observation', 'id', 'demo-error-' || v.id, 'status', 'entered-in-error',
           'code', jsonb_build_object('coding', jsonb_build_array(pg_temp.coding('http://loinc.org', '8867-4', 'Heart rate'))),
           'subject', jsonb_build_object('reference', 'Patient/' || v.patient_id),
           'effectiveDateTime', to_char((v.observed_at + interval '10 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'valueQuantity', pg_temp.quantity(180, 'beats/minute', '/min'))
FROM demo_vitals v
WHERE v.code = '8867-4' AND v.n % 20 = 0
  AND v.observed_at = (SELECT max(w.observed_at) FROM demo_vitals w WHERE w.patient_id = v.patient_id);

-- The index README recommends for a FHIR source.
CREATE INDEX observation_subject_effective_idx ON fhir.observation
    ((resource -> 'subject' ->> 'reference'),
     (coalesce(resource ->> 'effectiveDateTime', resource -> 'effectivePeriod' ->> 'end',
               resource -> 'effectivePeriod' ->> 'start', resource ->> 'effectiveInstant')) DESC NULLS LAST);
ANALYZE fhir.observation;

UPDATE diagnosis.patients p
SET data = p.data || '{"spo2_scale": 2, "condition": "COPD with hypercapnic respiratory failure"}'
WHERE p.data ->> 'trajectory' = 'stable' AND right(p.display_name, 5)::int % 2 = 0
  AND EXISTS (SELECT 1 FROM demo_vitals v WHERE v.patient_id = p.id AND v.code = '59408-5' AND v.value = 91);

DELETE FROM diagnosis.observations;
DROP TABLE demo_vitals;
SELECT count(*) AS resources, count(DISTINCT resource -> 'subject' ->> 'reference') AS patients,
       (SELECT count(*) FROM diagnosis.patients WHERE data ->> 'spo2_scale' = '2') AS spo2_scale_2
FROM fhir.observation;
