/* pg_diagnosis update script 0.1.0 -> 0.2.0. Each feature keeps its own section, as in sql/pg_diagnosis.sql. */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.2.0'" to load this file. \quit

-- ===========================================================================================================
-- review_queue by urgency (SPEC section 10)
-- ===========================================================================================================

-- Urgency first (0.2): critical, high, medium, then the low-risk diagnoses that need review for low confidence;
-- newest first within each. urgency (1-4) lets a caller that filters or pages the view keep that order.
CREATE OR REPLACE VIEW diagnosis.review_queue WITH (security_invoker = true) AS
SELECT l.*,
       CASE l.risk_level WHEN 'critical' THEN 1 WHEN 'high' THEN 2 WHEN 'medium' THEN 3 ELSE 4 END AS urgency
FROM diagnosis.latest_diagnosis l
WHERE l.needs_review OR l.risk_level IN ('medium', 'high', 'critical')
ORDER BY urgency, l.diagnosed_at DESC, l.patient_id;
COMMENT ON VIEW diagnosis.review_queue IS
    'Latest diagnoses that need a clinician, most urgent first: critical, high, medium risk, then low confidence '
    '(needs_review); newest first within each (ORDER BY urgency, diagnosed_at DESC).';

-- ===========================================================================================================
-- FHIR (SPEC section 10): context packs from FHIR R4 Observation resources, and each diagnosis back out as a
-- FHIR R4 Observation in UK Core's NEWS2 shape
-- ===========================================================================================================

-- The relation diagnosis.fhir_source names, checked on every call: a schema-qualified table, partitioned table,
-- materialized view or view with a jsonb column "resource". Reading a table runs no code of its owner's (a
-- superuser bypasses row-level security), but a view runs the functions it calls as the caller, who may be the
-- worker: so a view must belong to a superuser or to the caller.
CREATE FUNCTION diagnosis._fhir_source() RETURNS regclass
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_setting  text := nullif(btrim(current_setting('diagnosis.fhir_source', true)), '');
    v_name     text[];
    v_rel      regclass;
    v_kind     "char";
    v_owner    oid;
BEGIN
    IF v_setting IS NULL THEN
        RAISE EXCEPTION 'diagnosis.fhir_source is not set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Name the table or view of FHIR Observation resources in postgresql.conf, e.g. '
                         'diagnosis.fhir_source = ''fhir.observation'', and reload.';
    END IF;
    v_name := parse_ident(v_setting);
    IF cardinality(v_name) <> 2 THEN
        RAISE EXCEPTION 'diagnosis.fhir_source "%" must be a schema-qualified name (schema.relation)', v_setting
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_rel := to_regclass(quote_ident(v_name[1]) || '.' || quote_ident(v_name[2]));
    IF v_rel IS NULL THEN
        RAISE EXCEPTION 'diagnosis.fhir_source "%" does not exist', v_setting USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.relkind, c.relowner INTO v_kind, v_owner FROM pg_class c WHERE c.oid = v_rel;
    IF v_kind NOT IN ('r', 'p', 'v', 'm') THEN
        RAISE EXCEPTION 'diagnosis.fhir_source "%" must be a table or a view', v_setting
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                   WHERE a.attrelid = v_rel AND a.attname = 'resource' AND a.atttypid = 'jsonb'::regtype
                     AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'diagnosis.fhir_source "%" has no jsonb column "resource"', v_setting
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_kind = 'v' AND v_owner <> (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user)
       AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = v_owner) THEN
        RAISE EXCEPTION 'diagnosis.fhir_source "%" is a view owned by %, neither a superuser nor %', v_setting,
                        pg_get_userbyid(v_owner), current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The functions a view calls run as its reader; use a table, or a view a superuser owns.';
    END IF;
    RETURN v_rel;
END;
$$;
COMMENT ON FUNCTION diagnosis._fhir_source() IS
    'The relation diagnosis.fhir_source names, validated (qualified, a table or view with a jsonb column resource).';

-- A FHIR dateTime or instant as a timestamptz, or NULL when it is not one (a partial date such as "2018-10",
-- garbage): one malformed resource must not cost the patient their context pack.
CREATE FUNCTION diagnosis._fhir_instant(value text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value !~ '^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$' THEN
        RETURN NULL;
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END;
$$;

-- The ACVPU letter of a consciousness observation: UK Core's SNOMED CT value codes first, then free text.
CREATE FUNCTION diagnosis._fhir_acvpu(resource jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        (SELECT v.letter
         FROM jsonb_array_elements(CASE jsonb_typeof($1 #> '{valueCodeableConcept,coding}')
                                   WHEN 'array' THEN $1 #> '{valueCodeableConcept,coding}' ELSE '[]' END)
              WITH ORDINALITY c(coding, ord)
         JOIN (VALUES ('248234008', 'A'), ('130987000', 'C'), ('300202002', 'V'), ('450847001', 'P'),
                      ('422768004', 'U')) v(code, letter)
           ON c.coding ->> 'system' = 'http://snomed.info/sct' AND c.coding ->> 'code' = v.code
         ORDER BY c.ord LIMIT 1),
        (SELECT CASE
                    WHEN t ~ '^(a|alert|mentally alert)$' THEN 'A'
                    WHEN t ~ '^(c|confus|new confusion|acute confusion|new-onset confusion)' THEN 'C'
                    WHEN t ~ '^(v|voice)$' OR t ~ 'respon\w* to voice' THEN 'V'
                    WHEN t ~ '^(p|pain)$' OR t ~ 'respon\w* to pain' THEN 'P'
                    WHEN t ~ '^(u|unresponsive)$' THEN 'U'
                END
         FROM (SELECT lower(btrim(coalesce($1 #>> '{valueCodeableConcept,text}', $1 ->> 'valueString',
                                           $1 #>> '{valueCodeableConcept,coding,0,display}',
                                           $1 #>> '{valueCodeableConcept,coding,0,code}')))) x(t)))
$$;

-- FHIR Observations (a jsonb array of resources) as context-pack observations ({code, value, unit, observed_at,
-- data}), newest first, at most 500; a resource that holds no NEWS2 vital sign this mapping reads gives none
-- (README, "FHIR"). In each resource the first coding that maps decides the parameter; a blood pressure panel gives
-- its systolic component; inspired oxygen may also come as components (3151-8 flow, 3150-0 concentration, as on US
-- Core's pulse oximetry). Units must be the UCUM units listed (°F is converted): a quantity in another unit is left
-- out rather than guessed. Set-based, one call per patient (a call per resource costs far more than the mapping),
-- and PL/pgSQL, which keeps the plan for the session where an SQL function would plan it again at every call.
CREATE FUNCTION diagnosis._fhir_observations(resources jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
    WITH resource AS (
        SELECT r.n, r.body,
               diagnosis._fhir_instant(coalesce(r.body ->> 'effectiveDateTime', r.body #>> '{effectivePeriod,end}',
                                                r.body #>> '{effectivePeriod,start}', r.body ->> 'effectiveInstant')) AS at
        FROM jsonb_array_elements(CASE jsonb_typeof($1) WHEN 'array' THEN $1 ELSE '[]' END) WITH ORDINALITY r(body, n)
    ), component AS (
        SELECT r.n, c.comp
        FROM resource r
        CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(r.body -> 'component')
                                                WHEN 'array' THEN r.body -> 'component' ELSE '[]' END) c(comp)
    ), parameter AS (
        SELECT DISTINCT ON (r.n) r.n, m.pack_code, m.kind
        FROM resource r
        CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(r.body #> '{code,coding}')
                                                WHEN 'array' THEN r.body #> '{code,coding}' ELSE '[]' END)
             WITH ORDINALITY c(coding, ord)
        JOIN (VALUES ('http://loinc.org', '9279-1', '9279-1', 'rate'),
                     ('http://loinc.org', '8867-4', '8867-4', 'rate'),
                     ('http://loinc.org', '8310-5', '8310-5', 'temperature'),
                     ('http://loinc.org', '59408-5', '59408-5', 'percent'),
                     ('http://loinc.org', '2708-6', '2708-6', 'percent'),
                     ('http://loinc.org', '8480-6', '8480-6', 'pressure'),
                     ('http://loinc.org', '85354-9', '8480-6', 'pressure_panel'),
                     ('http://loinc.org', '3151-8', '3151-8', 'flow'),
                     ('http://loinc.org', '3150-0', '3150-0', 'percent'),
                     ('http://loinc.org', '80288-4', '80288-4', 'acvpu'),
                     ('http://snomed.info/sct', '1104441000000107', '1104441000000107', 'acvpu'))
             m(system, code, pack_code, kind)
          ON c.coding ->> 'system' = m.system AND c.coding ->> 'code' = m.code
        ORDER BY r.n, c.ord
    ), reading AS (
        SELECT p.n, p.pack_code, p.kind,
               CASE WHEN p.kind = 'pressure_panel'
                    THEN (SELECT c.comp -> 'valueQuantity' FROM component c
                          WHERE c.n = p.n
                            AND c.comp -> 'code' -> 'coding' @> '[{"system": "http://loinc.org", "code": "8480-6"}]'
                          LIMIT 1)
                    ELSE r.body -> 'valueQuantity' END AS quantity
        FROM parameter p JOIN resource r ON r.n = p.n
        UNION ALL
        SELECT c.n, o.pack_code, o.kind, c.comp -> 'valueQuantity'
        FROM component c
        JOIN (VALUES ('3151-8', 'flow'), ('3150-0', 'percent')) o(pack_code, kind)
          ON c.comp -> 'code' -> 'coding' @> jsonb_build_array(jsonb_build_object('system', 'http://loinc.org',
                                                                                   'code', o.pack_code))
        WHERE NOT EXISTS (SELECT 1 FROM parameter p WHERE p.n = c.n AND p.pack_code = o.pack_code)
    ), measured AS (
        SELECT r.n, r.pack_code AS code, u.unit_out AS unit,
               CASE WHEN jsonb_typeof(r.quantity -> 'value') <> 'number' THEN NULL
                    WHEN u.factor = 1 AND u.offset_by = 0 THEN (r.quantity ->> 'value')::numeric
                    ELSE trim_scale(round((r.quantity ->> 'value')::numeric * u.factor + u.offset_by, 2)) END AS value
        FROM reading r
        JOIN (VALUES ('rate', '/min', 1.0, 0.0, '/min', true), ('rate', '{breaths}/min', 1.0, 0.0, '/min', false),
                     ('rate', '{beats}/min', 1.0, 0.0, '/min', false), ('rate', 'breaths/min', 1.0, 0.0, '/min', false),
                     ('rate', 'beats/min', 1.0, 0.0, '/min', false), ('rate', 'bpm', 1.0, 0.0, '/min', false),
                     ('temperature', 'Cel', 1.0, 0.0, 'Cel', true), ('temperature', '°C', 1.0, 0.0, 'Cel', false),
                     ('temperature', '[degF]', 5.0 / 9, -160.0 / 9, 'Cel', false),
                     ('temperature', '°F', 5.0 / 9, -160.0 / 9, 'Cel', false),
                     ('percent', '%', 1.0, 0.0, '%', true),
                     ('pressure', 'mm[Hg]', 1.0, 0.0, 'mm[Hg]', true), ('pressure', 'mmHg', 1.0, 0.0, 'mm[Hg]', false),
                     ('pressure_panel', 'mm[Hg]', 1.0, 0.0, 'mm[Hg]', true),
                     ('pressure_panel', 'mmHg', 1.0, 0.0, 'mm[Hg]', false),
                     ('flow', 'L/min', 1.0, 0.0, 'L/min', true))
             u(kind, unit_in, factor, offset_by, unit_out, is_default)
          ON u.kind = r.kind
         -- The UCUM code decides; a quantity without one is read by its display unit, and one with neither
         -- is taken to be in the parameter's UCUM unit.
         AND CASE WHEN coalesce(r.quantity ->> 'code', r.quantity ->> 'unit') IS NULL THEN u.is_default
                  ELSE u.unit_in = coalesce(r.quantity ->> 'code', r.quantity ->> 'unit') END
    ), observation AS (
        SELECT m.n, m.code, m.value, m.unit, NULL::text AS acvpu FROM measured m WHERE m.value IS NOT NULL
        UNION ALL
        SELECT r.n, r.pack_code, NULL, NULL, diagnosis._fhir_acvpu(b.body)
        FROM reading r JOIN resource b ON b.n = r.n
        WHERE r.kind = 'acvpu'
    )
    SELECT coalesce(jsonb_agg(x.obs ORDER BY x.at DESC, x.id, x.code), '[]'::jsonb)
    FROM (SELECT jsonb_build_object('code', o.code, 'value', o.value, 'unit', o.unit, 'observed_at', r.at,
                                    'data', jsonb_strip_nulls(jsonb_build_object(
                                        'acvpu', o.acvpu, 'fhir_reference', 'Observation/' || (r.body ->> 'id'))))
                 AS obs, r.at, r.body ->> 'id' AS id, o.code
          FROM observation o JOIN resource r ON r.n = o.n
          WHERE r.at IS NOT NULL AND (o.code NOT IN ('80288-4', '1104441000000107') OR o.acvpu IS NOT NULL)
          ORDER BY r.at DESC, r.body ->> 'id', o.code
          LIMIT 500) x);
END;
$$;
COMMENT ON FUNCTION diagnosis._fhir_observations(jsonb) IS
    'FHIR R4 Observations (a jsonb array) as context-pack observations, newest first (README, FHIR).';

CREATE FUNCTION diagnosis.fhir_context_pack(patient_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source        regclass;
    v_patient       diagnosis.patients;
    v_observations  jsonb;
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
    -- Bounded work per patient: an equality on the subject reference and the newest 2000 resources by their
    -- effective time as text, so the index README documents serves it as one ordered index scan; the 500
    -- newest vital signs among them, ordered by their real time, make the pack (as build_context_pack does).
    EXECUTE format($sql$
        SELECT diagnosis._fhir_observations(coalesce(jsonb_agg(r.resource), '[]'::jsonb))
        FROM (SELECT s.resource
              FROM %s s
              WHERE (s.resource -> 'subject' ->> 'reference') = $1
                AND (s.resource ->> 'resourceType') = 'Observation'
                AND (s.resource ->> 'status') IS DISTINCT FROM 'entered-in-error'
                AND (s.resource ->> 'status') IS DISTINCT FROM 'cancelled'
              ORDER BY (coalesce(s.resource ->> 'effectiveDateTime', s.resource -> 'effectivePeriod' ->> 'end',
                                 s.resource -> 'effectivePeriod' ->> 'start', s.resource ->> 'effectiveInstant'))
                       DESC NULLS LAST
              LIMIT 2000) r
        $sql$, v_source)
      INTO v_observations
     USING 'Patient/' || fhir_context_pack.patient_id::text;
    RETURN jsonb_build_object(
        'schema', 'pg_diagnosis.context_pack.v1',
        'source', 'fhir:' || v_source::text,
        'patient', jsonb_build_object('id', v_patient.id, 'organization_id', v_patient.organization_id,
                                      'display_name', v_patient.display_name, 'data', v_patient.data),
        'observations', v_observations,
        'inputs', '{}'::jsonb);
END;
$$;
COMMENT ON FUNCTION diagnosis.fhir_context_pack(uuid) IS
    'A context pack built from the FHIR R4 Observation resources in diagnosis.fhir_source whose subject is '
    'Patient/<patient_id>; select it with diagnosis.context_pack_function. Index the source on '
    '((resource -> ''subject'' ->> ''reference''), (coalesce(resource ->> ''effectiveDateTime'', '
    'resource -> ''effectivePeriod'' ->> ''end'', resource -> ''effectivePeriod'' ->> ''start'', '
    'resource ->> ''effectiveInstant'')) DESC NULLS LAST) (README, FHIR).';

-- A FHIR instant (UTC) of a timestamptz, as the FHIR datatypes want it whatever the session's TimeZone.
CREATE FUNCTION diagnosis._fhir_datetime(at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

-- A diagnosis as a FHIR R4 Observation in UK Core's NEWS2 shape: the aggregate under SNOMED CT 1104051000000101,
-- one component per sub-score with UK Core's SNOMED CT codes (SpO2 under the scale scored), derivedFrom the FHIR
-- observations scored. The scores come from the result's news2 property (the reference server's); a result without
-- it keeps the risk as interpretation and says the value is unknown.
CREATE FUNCTION diagnosis._news2_fhir_resource(run_id uuid, patient_id uuid, risk_level text, result jsonb,
                                               diagnosed_at timestamptz) RETURNS jsonb
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH sub AS (
        SELECT s.entry, s.ord, c.code, c.display
        FROM jsonb_array_elements(CASE jsonb_typeof($4 #> '{news2,subscores}')
                                  WHEN 'array' THEN $4 #> '{news2,subscores}' ELSE '[]' END)
             WITH ORDINALITY s(entry, ord)
        JOIN (VALUES ('respiration_rate', NULL, '1104301000000104', 'respiration rate score'),
                     ('spo2', 1, '1104311000000102', 'oxygen saturation scale 1 score'),
                     ('spo2', 2, '1104321000000108', 'oxygen saturation scale 2 score'),
                     ('air_or_oxygen', NULL, '1104331000000105', 'air or oxygen score'),
                     ('systolic_bp', NULL, '1104341000000101', 'systolic blood pressure score'),
                     ('pulse', NULL, '1104351000000103', 'pulse score'),
                     ('consciousness', NULL, '1104361000000100', 'consciousness score'),
                     ('temperature', NULL, '1104371000000107', 'temperature score'))
             c(parameter, scale, code, display)
          ON c.parameter = s.entry ->> 'parameter'
         AND (c.scale IS NULL OR c.scale = CASE WHEN $4 #> '{news2,spo2_scale}' = '2' THEN 2 ELSE 1 END)
        WHERE jsonb_typeof(s.entry -> 'score') = 'number'
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
        'component', (SELECT jsonb_agg(jsonb_build_object(
                                 'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                                     'system', 'http://snomed.info/sct', 'code', sub.code,
                                     'display', 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - '
                                                || sub.display))),
                                 'valueQuantity', (SELECT q FROM score) || jsonb_build_object('value', sub.entry -> 'score'))
                             ORDER BY sub.ord)
                      FROM sub)))
$$;

CREATE VIEW diagnosis.news2_fhir WITH (security_invoker = true) AS
SELECT a.run_id, a.patient_id, a.organization_id, a.risk_level, a.created_at AS diagnosed_at,
       diagnosis._news2_fhir_resource(a.run_id, a.patient_id, a.risk_level, a.artifact_data, a.created_at) AS resource
FROM diagnosis.artifacts a
WHERE a.artifact_type = 'diagnosis_json';
COMMENT ON VIEW diagnosis.news2_fhir IS
    'Each diagnosis as a FHIR R4 Observation (UK Core NEWS2 shape) in resource; the rows of artifacts the caller may see.';

GRANT SELECT ON diagnosis.news2_fhir TO PUBLIC;
