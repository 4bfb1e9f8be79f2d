/* pg_diagnosis 0.2.0 -> 0.3.0 (ALTER EXTENSION pg_diagnosis UPDATE). Each feature in its own section, marked with
   its issue; the result must equal a fresh 0.3.0 install (test/integration/upgrade.test.mjs compares the catalogs).
   Sections: least-privilege worker (#25), the run's lifecycle functions (#26), bounds (#27), MCP in production
   (#28), clinical data and the clinician's day (#29). */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.3.0'" to load this file. \quit

-- ===========================================================================================================
-- The worker is not a superuser (#25): its role, its grants, no table lock for tenants, code of others with
-- their rights.
-- ===========================================================================================================



-- ===========================================================================================================
-- One home for a run's lifecycle (#26): the worker's statements as the extension's own functions.
-- ===========================================================================================================



-- ===========================================================================================================
-- Bounded against hostile peers and tenants (#27).
-- ===========================================================================================================



-- ===========================================================================================================
-- MCP in production (#28).
-- ===========================================================================================================



-- ===========================================================================================================
-- Real FHIR data, nothing silently dropped (#29).
-- ===========================================================================================================

-- A UCUM unit by its meaning: annotations in curly braces are unity, so {beats}/min and {Breaths}/min are /min
-- (and 1/min is /min), {score} is 1.
CREATE FUNCTION diagnosis._fhir_unit(unit text) RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN u = '' THEN '1' WHEN u ~ '^1/' THEN substr(u, 2) ELSE u END
    FROM (SELECT btrim(regexp_replace($1, '\{[^{}]*\}', '', 'g')) AS u) x
$$;
COMMENT ON FUNCTION diagnosis._fhir_unit(text) IS
    'A UCUM unit by its meaning: curly-brace annotations are unity ({beats}/min is /min).';

-- The patient's FHIR Observations (a jsonb array of resources) read as NEWS2 vital signs: {"observations": the
-- context-pack observations ({code, value, unit, observed_at, data}), newest first, at most 500; "not_used": every
-- resource, or vital sign within one, that gave no observation, with its reason} (README, "FHIR"). A resource's
-- vital sign is the first of its codings that the table below knows (LOINC or SNOMED CT, in any order); each of its
-- components with a known coding is one too (a blood pressure panel's systolic, US Core's inspired oxygen). Units
-- are compared by meaning and converted where the vital sign allows; a unit not understood is listed, never
-- guessed. Set-based, one call per patient (a call per resource costs far more than the mapping), and PL/pgSQL,
-- which keeps the plan for the session where an SQL function would plan it again at every call.
CREATE OR REPLACE FUNCTION diagnosis._fhir_observations(resources jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
    WITH vital (system, code, pack_code, kind) AS (
        VALUES ('http://loinc.org', '9279-1', '9279-1', 'rate'),
               ('http://snomed.info/sct', '86290005', '9279-1', 'rate'),
               ('http://loinc.org', '8867-4', '8867-4', 'rate'),
               ('http://snomed.info/sct', '364075005', '8867-4', 'rate'),
               ('http://snomed.info/sct', '78564009', '8867-4', 'rate'),
               ('http://snomed.info/sct', '444981005', '8867-4', 'rate'),
               ('http://loinc.org', '8310-5', '8310-5', 'temperature'),
               ('http://snomed.info/sct', '276885007', '8310-5', 'temperature'),
               ('http://snomed.info/sct', '386725007', '8310-5', 'temperature'),
               ('http://loinc.org', '59408-5', '59408-5', 'percent'),
               ('http://loinc.org', '2708-6', '2708-6', 'percent'),
               ('http://snomed.info/sct', '103228002', '59408-5', 'percent'),
               ('http://snomed.info/sct', '431314004', '59408-5', 'percent'),
               ('http://loinc.org', '8480-6', '8480-6', 'pressure'),
               ('http://snomed.info/sct', '72313002', '8480-6', 'pressure'),
               ('http://snomed.info/sct', '271649006', '8480-6', 'pressure'),
               ('http://loinc.org', '85354-9', '8480-6', 'pressure_panel'),
               ('http://loinc.org', '55284-4', '8480-6', 'pressure_panel'),
               ('http://snomed.info/sct', '75367002', '8480-6', 'pressure_panel'),
               ('http://loinc.org', '3151-8', '3151-8', 'flow'),
               ('http://loinc.org', '3150-0', '3150-0', 'percent'),
               ('http://snomed.info/sct', '250774007', '3150-0', 'percent'),
               ('http://snomed.info/sct', '722742002', 'supplemental_oxygen', 'room_air'),
               ('http://snomed.info/sct', '371825009', 'supplemental_oxygen', 'on_oxygen'),
               ('http://loinc.org', '80288-4', '80288-4', 'acvpu'),
               ('http://snomed.info/sct', '1104441000000107', '1104441000000107', 'acvpu')
    ), unit (kind, unit_in, factor, offset_by, unit_out, is_default) AS (
        -- UCUM codes (after _fhir_unit) first, then the display spellings read when a quantity has no code.
        VALUES ('rate', '/min', 1.0, 0.0, '/min', true), ('rate', 'breaths/min', 1.0, 0.0, '/min', false),
               ('rate', 'beats/min', 1.0, 0.0, '/min', false), ('rate', 'breaths/minute', 1.0, 0.0, '/min', false),
               ('rate', 'beats/minute', 1.0, 0.0, '/min', false), ('rate', 'per minute', 1.0, 0.0, '/min', false),
               ('rate', 'bpm', 1.0, 0.0, '/min', false),
               ('temperature', 'Cel', 1.0, 0.0, 'Cel', true), ('temperature', '°C', 1.0, 0.0, 'Cel', false),
               ('temperature', '[degF]', 5.0 / 9, -160.0 / 9, 'Cel', false),
               ('temperature', '°F', 5.0 / 9, -160.0 / 9, 'Cel', false),
               ('percent', '%', 1.0, 0.0, '%', true),
               ('pressure', 'mm[Hg]', 1.0, 0.0, 'mm[Hg]', true), ('pressure', 'mmHg', 1.0, 0.0, 'mm[Hg]', false),
               ('pressure', 'kPa', 7.500615, 0.0, 'mm[Hg]', false),
               ('flow', 'L/min', 1.0, 0.0, 'L/min', true), ('flow', 'l/min', 1.0, 0.0, 'L/min', false),
               ('flow', 'liter/min', 1.0, 0.0, 'L/min', false), ('flow', 'litre/min', 1.0, 0.0, 'L/min', false)
    ), resource AS (
        SELECT r.n, r.body, r.body ->> 'id' AS id, r.body ->> 'status' AS status,
               -- effective[x] of every kind R4 allows: dateTime, Period (its end, else its start), instant,
               -- Timing (its latest event).
               coalesce(diagnosis._fhir_instant(coalesce(r.body ->> 'effectiveDateTime',
                                                         r.body #>> '{effectivePeriod,end}',
                                                         r.body #>> '{effectivePeriod,start}',
                                                         r.body ->> 'effectiveInstant')),
                        (SELECT max(diagnosis._fhir_instant(e.at))
                         FROM jsonb_array_elements_text(CASE jsonb_typeof(r.body #> '{effectiveTiming,event}')
                                                        WHEN 'array' THEN r.body #> '{effectiveTiming,event}'
                                                        ELSE '[]' END) e(at))) AS at,
               left(coalesce(r.body ->> 'effectiveDateTime', r.body ->> 'effectivePeriod', r.body ->> 'effectiveInstant',
                             r.body ->> 'effectiveTiming'), 80) AS effective
        FROM jsonb_array_elements(CASE jsonb_typeof($1) WHEN 'array' THEN $1 ELSE '[]' END) WITH ORDINALITY r(body, n)
    ), coded AS (
        SELECT DISTINCT ON (r.n) r.n, v.pack_code, v.kind
        FROM resource r
        CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(r.body #> '{code,coding}')
                                                WHEN 'array' THEN r.body #> '{code,coding}' ELSE '[]' END)
             WITH ORDINALITY c(coding, ord)
        JOIN vital v ON v.system = c.coding ->> 'system' AND v.code = c.coding ->> 'code'
        ORDER BY r.n, c.ord
    ), component AS (
        SELECT DISTINCT ON (r.n, k.part) r.n, k.part, v.pack_code, v.kind, k.comp
        FROM resource r
        CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(r.body -> 'component')
                                                WHEN 'array' THEN r.body -> 'component' ELSE '[]' END)
             WITH ORDINALITY k(comp, part)
        CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(k.comp #> '{code,coding}')
                                                WHEN 'array' THEN k.comp #> '{code,coding}' ELSE '[]' END)
             WITH ORDINALITY c(coding, ord)
        JOIN vital v ON v.system = c.coding ->> 'system' AND v.code = c.coding ->> 'code' AND v.kind <> 'pressure_panel'
        ORDER BY r.n, k.part, c.ord
    ), reading AS (
        -- One per vital sign a resource holds (part 0 its own value, else the component's position): a panel is
        -- read through its systolic component, and is a reading without a value when it has none.
        SELECT c.n, 0::bigint AS part, c.pack_code, c.kind, r.body AS holder
        FROM coded c JOIN resource r ON r.n = c.n
        WHERE c.kind <> 'pressure_panel'
        UNION ALL
        SELECT c.n, 0, c.pack_code, 'pressure', NULL
        FROM coded c
        WHERE c.kind = 'pressure_panel' AND NOT EXISTS (SELECT 1 FROM component k WHERE k.n = c.n AND k.pack_code = '8480-6')
        UNION ALL
        SELECT k.n, k.part, k.pack_code, k.kind, k.comp
        FROM component k
        WHERE NOT EXISTS (SELECT 1 FROM coded c WHERE c.n = k.n AND c.pack_code = k.pack_code AND c.kind <> 'pressure_panel')
    ), parsed AS MATERIALIZED (
        -- Materialized so that each reading's functions run once, not once per use of their result.
        SELECT g.n, g.part, g.pack_code, g.kind, g.holder, q.quantity, q.unit_text,
               -- Only a unit with an annotation or a leading 1 needs the rule (a call costs more than the test).
               CASE WHEN strpos(q.unit_text, '{') > 0 OR q.unit_text LIKE '1/%' THEN diagnosis._fhir_unit(q.unit_text)
                    ELSE q.unit_text END AS unit_meant,
               CASE WHEN g.kind = 'acvpu' AND jsonb_typeof(g.holder) = 'object' THEN diagnosis._fhir_acvpu(g.holder) END AS acvpu,
               CASE WHEN jsonb_typeof(g.holder) IS DISTINCT FROM 'object' THEN false
                    WHEN q.quantity IS NOT NULL THEN true
                    ELSE EXISTS (SELECT 1 FROM jsonb_object_keys(g.holder) key WHERE key LIKE 'value%') END AS has_value
        FROM reading g
        CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(g.holder -> 'valueQuantity') = 'object'
                                        THEN g.holder -> 'valueQuantity' END AS quantity,
                                   coalesce(g.holder #>> '{valueQuantity,code}', g.holder #>> '{valueQuantity,unit}')
                                       AS unit_text) q
    ), valued AS (
        SELECT p.*, u.factor, u.offset_by, u.unit_out
        FROM parsed p
        -- The UCUM code decides; a quantity without one is read by its display unit, and one with neither is
        -- taken to be in the vital sign's UCUM unit.
        LEFT JOIN unit u
          ON u.kind = p.kind
         AND CASE WHEN p.unit_text IS NULL THEN u.is_default ELSE u.unit_in = p.unit_meant END
    ), outcome AS (
        SELECT v.n, v.part, v.pack_code, v.acvpu,
               CASE WHEN v.kind = 'room_air' THEN 0
                    WHEN v.kind = 'on_oxygen' THEN 1
                    WHEN v.kind = 'acvpu' OR v.factor IS NULL OR jsonb_typeof(v.quantity -> 'value') <> 'number' THEN NULL
                    WHEN v.factor = 1 AND v.offset_by = 0 THEN (v.quantity ->> 'value')::numeric
                    ELSE trim_scale(round((v.quantity ->> 'value')::numeric * v.factor + v.offset_by, 2)) END AS value,
               CASE WHEN v.kind NOT IN ('room_air', 'on_oxygen', 'acvpu') THEN v.unit_out END AS unit,
               CASE WHEN v.kind IN ('room_air', 'on_oxygen') THEN NULL
                    WHEN v.kind = 'acvpu' THEN CASE WHEN v.acvpu IS NOT NULL THEN NULL
                                                    WHEN v.has_value THEN 'value_not_understood' ELSE 'no_value' END
                    WHEN v.quantity IS NULL THEN CASE WHEN v.has_value THEN 'value_not_understood' ELSE 'no_value' END
                    WHEN v.quantity -> 'value' IS NULL THEN 'no_value'
                    WHEN jsonb_typeof(v.quantity -> 'value') <> 'number' THEN 'value_not_understood'
                    WHEN v.factor IS NULL THEN 'unit_not_understood' END AS problem,
               CASE WHEN v.kind IN ('room_air', 'on_oxygen') THEN NULL
                    WHEN v.kind <> 'acvpu' AND v.quantity IS NOT NULL AND v.factor IS NULL
                    THEN 'unit ' || coalesce(v.unit_text, '')
                    WHEN v.has_value AND v.acvpu IS NULL AND (v.kind = 'acvpu' OR v.quantity IS NULL)
                    THEN (SELECT key || ' ' || left(v.holder ->> key, 80) FROM jsonb_object_keys(v.holder) key
                          WHERE key LIKE 'value%' ORDER BY key LIMIT 1) END AS detail
        FROM valued v
    ), judged AS MATERIALIZED (
        SELECT o.n, o.part, o.pack_code, o.acvpu, o.value, o.unit, r.at, r.id,
               CASE WHEN r.status = 'entered-in-error' THEN 'entered_in_error'
                    WHEN r.status = 'cancelled' THEN 'cancelled'
                    WHEN o.problem IS NOT NULL THEN o.problem
                    WHEN r.at IS NULL THEN 'time_not_understood' END AS reason,
               CASE WHEN o.problem IS NULL AND r.at IS NULL THEN 'effective ' || coalesce(r.effective, 'missing')
                    ELSE o.detail END AS detail
        FROM outcome o JOIN resource r ON r.n = o.n
    ), ranked AS (
        -- The 500 newest readings make the pack (as build_context_pack does); older ones are superseded.
        SELECT j.*, CASE WHEN j.reason IS NULL
                         THEN row_number() OVER (PARTITION BY j.reason IS NULL ORDER BY j.at DESC, j.id, j.pack_code, j.part)
                    END AS rank
        FROM judged j
    ), not_used AS (
        SELECT k.at, k.id, k.pack_code AS code,
               coalesce(k.reason, 'superseded') AS reason, k.detail
        FROM ranked k
        WHERE k.reason IS NOT NULL OR k.rank > 500
        UNION ALL
        -- A resource with no vital sign this table knows: listed with its first coding (or its text).
        SELECT r.at, r.id, NULL,
               CASE r.status WHEN 'entered-in-error' THEN 'entered_in_error' WHEN 'cancelled' THEN 'cancelled'
                             ELSE 'unknown_code' END,
               coalesce(nullif(concat_ws('|', r.body #>> '{code,coding,0,system}', r.body #>> '{code,coding,0,code}'), ''),
                        r.body #>> '{code,text}')
        FROM resource r
        WHERE NOT EXISTS (SELECT 1 FROM reading g WHERE g.n = r.n)
    )
    SELECT jsonb_build_object(
        'observations', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                              'code', k.pack_code, 'value', k.value, 'unit', k.unit, 'observed_at', k.at,
                                              'data', jsonb_strip_nulls(jsonb_build_object(
                                                  'acvpu', k.acvpu, 'fhir_reference', 'Observation/' || k.id)))
                                          ORDER BY k.rank)
                                  FROM ranked k WHERE k.rank <= 500), '[]'::jsonb),
        'not_used', coalesce((SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                          'reference', 'Observation/' || u.id, 'reason', u.reason, 'code', u.code,
                                          'observed_at', u.at, 'detail', u.detail))
                                      ORDER BY u.at DESC NULLS LAST, u.id, u.code)
                              FROM not_used u), '[]'::jsonb)));
END;
$$;
COMMENT ON FUNCTION diagnosis._fhir_observations(jsonb) IS
    'FHIR R4 Observations (a jsonb array) as {observations (context-pack observations, newest first), not_used '
    '(every resource or vital sign not used, with its reason)} (README, FHIR).';

CREATE OR REPLACE FUNCTION diagnosis.fhir_context_pack(patient_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source     regclass;
    v_patient    diagnosis.patients;
    v_resources  jsonb;
    v_read       jsonb;
BEGIN
    IF fhir_context_pack.patient_id IS NULL THEN
        RAISE EXCEPTION 'patient_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_source := diagnosis._fhir_source();
    SELECT * INTO v_patient FROM diagnosis.patients p WHERE p.id = fhir_context_pack.patient_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'patient "%" does not exist', fhir_context_pack.patient_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The raw read, one statement: the patient's Observation resources of every status (the reading below lists
    -- the ones it does not use, with the reason). Bounded work per patient: an equality on the subject reference
    -- and the newest 2000 resources by their effective time as text, so the index README documents serves it as
    -- one ordered index scan.
    EXECUTE format($sql$
        SELECT coalesce(jsonb_agg(r.resource), '[]'::jsonb)
        FROM (SELECT s.resource
              FROM %s s
              WHERE (s.resource -> 'subject' ->> 'reference') = $1
                AND (s.resource ->> 'resourceType') = 'Observation'
              ORDER BY (coalesce(s.resource ->> 'effectiveDateTime', s.resource -> 'effectivePeriod' ->> 'end',
                                 s.resource -> 'effectivePeriod' ->> 'start', s.resource ->> 'effectiveInstant'))
                       DESC NULLS LAST
              LIMIT 2000) r
        $sql$, v_source)
      INTO v_resources
     USING 'Patient/' || fhir_context_pack.patient_id::text;
    v_read := diagnosis._fhir_observations(v_resources);
    RETURN jsonb_build_object(
        'schema', 'pg_diagnosis.context_pack.v1',
        'source', 'fhir:' || v_source::text,
        'patient', jsonb_build_object('id', v_patient.id, 'organization_id', v_patient.organization_id,
                                      'display_name', v_patient.display_name, 'data', v_patient.data),
        'observations', v_read -> 'observations',
        'not_used', v_read -> 'not_used',
        'inputs', '{}'::jsonb);
END;
$$;

-- A diagnosis as a FHIR R4 Observation in UK Core's NEWS2 shape: the aggregate under SNOMED CT 1104051000000101,
-- one component per sub-score with UK Core's SNOMED CT codes (SpO2 under the scale scored), derivedFrom the FHIR
-- observations scored. The scores come from the result's news2 property (the reference server's); a result without
-- it keeps the risk as interpretation and says the value is unknown. A parameter the result lists as not recorded
-- or not understood is a component without a value, its dataAbsentReason saying which (not-performed, unsupported).
CREATE OR REPLACE FUNCTION diagnosis._news2_fhir_resource(run_id uuid, patient_id uuid, risk_level text, result jsonb,
                                               diagnosed_at timestamptz) RETURNS jsonb
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH component_code AS (
        SELECT c.parameter, c.code, c.display
        FROM (VALUES ('respiration_rate', NULL, '1104301000000104', 'respiration rate score'),
                     ('spo2', 1, '1104311000000102', 'oxygen saturation scale 1 score'),
                     ('spo2', 2, '1104321000000108', 'oxygen saturation scale 2 score'),
                     ('air_or_oxygen', NULL, '1104331000000105', 'air or oxygen score'),
                     ('systolic_bp', NULL, '1104341000000101', 'systolic blood pressure score'),
                     ('pulse', NULL, '1104351000000103', 'pulse score'),
                     ('consciousness', NULL, '1104361000000100', 'consciousness score'),
                     ('temperature', NULL, '1104371000000107', 'temperature score'))
             c(parameter, scale, code, display)
        WHERE c.scale IS NULL OR c.scale = CASE WHEN $4 #> '{news2,spo2_scale}' = '2' THEN 2 ELSE 1 END
    ), sub AS (
        SELECT s.entry, s.ord, c.code, c.display
        FROM jsonb_array_elements(CASE jsonb_typeof($4 #> '{news2,subscores}')
                                  WHEN 'array' THEN $4 #> '{news2,subscores}' ELSE '[]' END)
             WITH ORDINALITY s(entry, ord)
        JOIN component_code c ON c.parameter = s.entry ->> 'parameter'
        WHERE jsonb_typeof(s.entry -> 'score') = 'number'
    ), absent AS (
        SELECT DISTINCT ON (a.parameter) a.parameter, a.ord, a.reason, a.text, c.code, c.display
        FROM (SELECT p.value #>> '{}' AS parameter, p.ord, 'not-performed' AS reason, 'Not recorded' AS text
              FROM jsonb_array_elements(CASE jsonb_typeof($4 #> '{news2,not_recorded}')
                                        WHEN 'array' THEN $4 #> '{news2,not_recorded}' ELSE '[]' END)
                   WITH ORDINALITY p(value, ord)
              WHERE jsonb_typeof(p.value) = 'string'
              UNION ALL
              SELECT p.value ->> 'parameter', 1000 + p.ord, 'unsupported', 'Recorded, not understood'
              FROM jsonb_array_elements(CASE jsonb_typeof($4 #> '{news2,not_understood}')
                                        WHEN 'array' THEN $4 #> '{news2,not_understood}' ELSE '[]' END)
                   WITH ORDINALITY p(value, ord)
              WHERE jsonb_typeof(p.value) = 'object') a
        JOIN component_code c ON c.parameter = a.parameter
        WHERE NOT EXISTS (SELECT 1 FROM sub WHERE sub.code = c.code)
        ORDER BY a.parameter, a.ord DESC
    ), score AS (SELECT jsonb_build_object('system', 'http://unitsofmeasure.org', 'code', '{score}', 'unit', 'score') AS q)
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'resourceType', 'Observation',
        'id', $1,
        'identifier', jsonb_build_array(jsonb_build_object('system', 'urn:ietf:rfc:3986', 'value', 'urn:uuid:' || $1)),
        'status', 'final',
        'category', jsonb_build_array(jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
            'system', 'http://terminology.hl7.org/CodeSystem/observation-category', 'code', 'survey',
            'display', 'Survey')))),
        'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
            'system', 'http://snomed.info/sct', 'code', '1104051000000101',
            'display', 'Royal College of Physicians NEWS2 (National Early Warning Score 2) total score'))),
        'subject', jsonb_build_object('reference', 'Patient/' || $2),
        'effectiveDateTime', diagnosis._fhir_datetime(coalesce(
            (SELECT max(diagnosis._fhir_instant(sub.entry ->> 'observed_at')) FROM sub), $5)),
        'issued', diagnosis._fhir_datetime($5),
        'valueQuantity', CASE WHEN jsonb_typeof($4 #> '{news2,aggregate}') = 'number'
                              THEN (SELECT q FROM score) || jsonb_build_object('value', $4 #> '{news2,aggregate}') END,
        'dataAbsentReason', CASE WHEN jsonb_typeof($4 #> '{news2,aggregate}') IS DISTINCT FROM 'number'
                                 THEN jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                                     'system', 'http://terminology.hl7.org/CodeSystem/data-absent-reason',
                                     'code', 'unknown', 'display', 'Unknown'))) END,
        'interpretation', jsonb_build_array(jsonb_build_object(
            'coding', jsonb_build_array(jsonb_build_object(
                'system', 'http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation',
                'code', CASE $3 WHEN 'low' THEN 'N' WHEN 'medium' THEN 'H' ELSE 'HH' END,
                'display', CASE $3 WHEN 'low' THEN 'Normal' WHEN 'medium' THEN 'High' ELSE 'Critical high' END)),
            'text', 'NEWS2 ' || $3 || ' clinical risk'
                    || CASE WHEN $3 = 'critical' THEN ' (high and worsening)' ELSE '' END)),
        'note', CASE WHEN $4 ->> 'summary' IS NOT NULL
                     THEN jsonb_build_array(jsonb_build_object('text', $4 ->> 'summary')) END,
        'derivedFrom', (SELECT jsonb_agg(jsonb_build_object('reference', ref) ORDER BY first_ord)
                        FROM (SELECT sub.entry ->> 'source' AS ref, min(sub.ord) AS first_ord FROM sub
                              WHERE jsonb_typeof(sub.entry -> 'source') = 'string' GROUP BY 1) d),
        'component', (SELECT jsonb_agg(c.component ORDER BY c.ord)
                      FROM (SELECT sub.ord, jsonb_build_object(
                                       'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                                           'system', 'http://snomed.info/sct', 'code', sub.code,
                                           'display', 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - '
                                                      || sub.display))),
                                       'valueQuantity', (SELECT q FROM score) || jsonb_build_object('value', sub.entry -> 'score'))
                                   AS component
                            FROM sub
                            UNION ALL
                            SELECT 100000 + absent.ord, jsonb_build_object(
                                       'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                                           'system', 'http://snomed.info/sct', 'code', absent.code,
                                           'display', 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - '
                                                      || absent.display))),
                                       'dataAbsentReason', jsonb_build_object(
                                           'coding', jsonb_build_array(jsonb_build_object(
                                               'system', 'http://terminology.hl7.org/CodeSystem/data-absent-reason',
                                               'code', absent.reason,
                                               'display', CASE absent.reason WHEN 'unsupported' THEN 'Unsupported'
                                                                              ELSE 'Not Performed' END)),
                                           'text', absent.text))
                            FROM absent) c)))
$$;



-- ===========================================================================================================
-- The clinician's day (#29): re-runs, sign-off, schema versions, reading runs at scale.
-- ===========================================================================================================

