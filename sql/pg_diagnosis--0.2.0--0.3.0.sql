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



-- ===========================================================================================================
-- The clinician's day (#29): re-runs, sign-off, schema versions, reading runs at scale.
-- ===========================================================================================================

-- Runs: the re-run link, schema versions in in-flight coalescing, one re-run in flight per run, and the indexes
-- for a patient's history and a requester's runs.
ALTER TABLE diagnosis.runs ADD COLUMN rerun_of uuid;
DROP INDEX diagnosis.runs_inflight_inputs_idx;

CREATE UNIQUE INDEX runs_inflight_inputs_idx ON diagnosis.runs (patient_id, inputs_hash, schema_version)
    WHERE idempotency_key IS NULL AND status IN ('queued', 'running');
-- One re-run of a run in flight at a time (rerun_diagnosis returns it to a second caller).
CREATE UNIQUE INDEX runs_rerun_inflight_idx ON diagnosis.runs (rerun_of)
    WHERE rerun_of IS NOT NULL AND status IN ('queued', 'running');

CREATE INDEX runs_patient_history_idx ON diagnosis.runs (patient_id, created_at DESC);
CREATE INDEX runs_requester_idx ON diagnosis.runs (requested_by, created_at DESC);


-- Sign-off.
ALTER TABLE diagnosis.audit_log DROP CONSTRAINT audit_log_event_check;
ALTER TABLE diagnosis.audit_log ADD CONSTRAINT audit_log_event_check
    CHECK (event IN ('ENQUEUED', 'DEDUPLICATED', 'LOCKED', 'RETRY_SCHEDULED', 'RECOVERED', 'COMPLETED', 'FAILED',
                     'CANCELLED', 'PURGED', 'ACKNOWLEDGED'));


CREATE TABLE diagnosis.acknowledgements (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           uuid NOT NULL REFERENCES diagnosis.runs (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL,
    acknowledged_by  name NOT NULL DEFAULT current_user,
    note             text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT acknowledgements_once UNIQUE (run_id, acknowledged_by)
);
CREATE INDEX acknowledgements_organization_idx ON diagnosis.acknowledgements (organization_id);
COMMENT ON TABLE diagnosis.acknowledgements IS
    'Insert-only: clinicians'' sign-offs of completed diagnoses, written by diagnosis.acknowledge_diagnosis().';

CREATE TRIGGER acknowledgements_append_only BEFORE UPDATE OR DELETE ON diagnosis.acknowledgements
    FOR EACH ROW EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER acknowledgements_no_truncate BEFORE TRUNCATE ON diagnosis.acknowledgements
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._append_only_guard();

ALTER TABLE diagnosis.acknowledgements ENABLE ROW LEVEL SECURITY;

CREATE POLICY acknowledgements_read ON diagnosis.acknowledgements FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR run_id IN (SELECT r.id FROM diagnosis.runs r
                         WHERE r.patient_id IN (SELECT unnest(diagnosis._assigned_patients()))));

-- Read for everyone, as every table (row-level security decides the rows); rows enter through the function only.
GRANT SELECT ON diagnosis.acknowledgements TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('diagnosis.acknowledgements', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.acknowledgements_id_seq', '');

-- Schema versions at enqueue: new signatures (a trailing schema_version), so the old functions go.
DROP FUNCTION diagnosis.enqueue_diagnosis(uuid, jsonb, text, int, timestamptz, int);
DROP FUNCTION diagnosis._enqueue_diagnosis_impl(name, uuid, jsonb, text, int, timestamptz, int);
DROP FUNCTION diagnosis.enqueue_diagnoses(uuid[], jsonb[], int, timestamptz, int);
DROP FUNCTION diagnosis._enqueue_diagnoses_impl(name, uuid[], jsonb[], int, timestamptz, int);


-- The schema version a run is validated against: the one asked for, or diagnosis.default_schema_version; one that
-- result_schemas does not hold is bad input (the foreign key would say so with 23503, after the work).
CREATE FUNCTION diagnosis._schema_version(wanted text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_version  text := coalesce(wanted, current_setting('diagnosis.default_schema_version', true), 'v1');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM diagnosis.result_schemas s WHERE s.version = v_version) THEN
        RAISE EXCEPTION 'schema_version "%" is not in diagnosis.result_schemas%',
            CASE WHEN length(v_version) > 64 THEN left(v_version, 64) || '...' ELSE v_version END,
            CASE WHEN wanted IS NULL THEN ' (diagnosis.default_schema_version)' ELSE '' END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A superuser adds a version with INSERT INTO diagnosis.result_schemas (version, schema).';
    END IF;
    RETURN v_version;
END;
$$;

CREATE FUNCTION diagnosis._enqueue_diagnosis_impl(caller name, p_patient_id uuid, p_inputs jsonb,
        p_idempotency_key text, p_priority int, p_run_after timestamptz, p_max_retries int,
        p_schema_version text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_org          uuid;
    v_visible      boolean;
    v_hash         text;
    v_text         text;
    v_max_retries  int;
    v_version      text;
    v_run          diagnosis.runs;
    v_id           uuid;
BEGIN
    IF p_patient_id IS NULL THEN
        RAISE EXCEPTION 'patient_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_inputs IS NULL THEN
        RAISE EXCEPTION 'inputs must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass ''{}'' for a run without inputs.';
    END IF;
    IF jsonb_typeof(p_inputs) <> 'object' THEN
        RAISE EXCEPTION 'inputs must be a JSON object, not %', jsonb_typeof(p_inputs)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_text := p_inputs::text;
    IF octet_length(v_text) > pg_size_bytes(current_setting('diagnosis.max_inputs_bytes')) THEN
        RAISE EXCEPTION 'inputs are % bytes, more than diagnosis.max_inputs_bytes (%)',
            octet_length(v_text), current_setting('diagnosis.max_inputs_bytes')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_retries < 0 OR p_max_retries > 100 THEN
        RAISE EXCEPTION 'max_retries must be between 0 and 100, not %', p_max_retries
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_priority IS NULL THEN
        RAISE EXCEPTION 'priority must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_priority < -100 OR p_priority > 100 THEN
        RAISE EXCEPTION 'priority must be between -100 and 100, not %', p_priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_idempotency_key IS NOT NULL AND (length(p_idempotency_key) = 0 OR length(p_idempotency_key) > 200) THEN
        RAISE EXCEPTION 'idempotency_key must be 1 to 200 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_version := diagnosis._schema_version(p_schema_version);

    -- An unknown patient and one the caller may not see take the same path and get the same error: nothing leaks,
    -- not even through timing (the access check runs either way).
    SELECT p.organization_id, diagnosis._role_sees_patient(caller, coalesce(p.id, p_patient_id))
      INTO v_org, v_visible
      FROM (SELECT 1) AS one LEFT JOIN diagnosis.patients p ON p.id = p_patient_id;
    IF v_org IS NULL OR NOT v_visible THEN
        RAISE EXCEPTION 'patient "%" does not exist', p_patient_id USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_hash := encode(sha256(convert_to(v_text, 'UTF8')), 'hex');
    v_max_retries := coalesce(p_max_retries, least(current_setting('diagnosis.max_retries')::int, 100));

    LOOP
        IF p_idempotency_key IS NOT NULL THEN
            INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash, idempotency_key,
                                        schema_version, priority, run_after, max_retries)
            VALUES (p_patient_id, v_org, caller, p_inputs, v_hash, p_idempotency_key, v_version, p_priority,
                    coalesce(p_run_after, now()), v_max_retries)
            ON CONFLICT (patient_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_id;
        ELSE
            INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash,
                                        schema_version, priority, run_after, max_retries)
            VALUES (p_patient_id, v_org, caller, p_inputs, v_hash, v_version, p_priority, coalesce(p_run_after, now()),
                    v_max_retries)
            ON CONFLICT (patient_id, inputs_hash, schema_version)
                WHERE idempotency_key IS NULL AND status IN ('queued', 'running')
            DO NOTHING
            RETURNING id INTO v_id;
        END IF;

        IF v_id IS NOT NULL THEN
            INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                             details)
            VALUES (v_id, v_org, 'ENQUEUED', NULL, 'queued', 0, caller,
                    jsonb_strip_nulls(jsonb_build_object('idempotency_key', p_idempotency_key,
                                                         'priority', p_priority, 'inputs_hash', v_hash)));
            PERFORM diagnosis._wake_at_commit();
            RETURN v_id;
        END IF;

        -- Somebody else's run already holds this key or these inputs: return it. The keyless lookup compares what
        -- runs_inflight_inputs_idx does, or a conflict it cannot find would send this loop round for ever.
        IF p_idempotency_key IS NOT NULL THEN
            SELECT * INTO v_run FROM diagnosis.runs
            WHERE patient_id = p_patient_id AND idempotency_key = p_idempotency_key;
        ELSE
            SELECT * INTO v_run FROM diagnosis.runs
            WHERE patient_id = p_patient_id AND inputs_hash = v_hash AND schema_version = v_version
              AND idempotency_key IS NULL AND status IN ('queued', 'running');
        END IF;
        IF FOUND AND v_run.organization_id <> v_org THEN
            -- The patient moved here from another organization, whose run this is: never name or touch it.
            RAISE EXCEPTION 'the patient''s earlier organization holds a run for this %',
                CASE WHEN p_idempotency_key IS NULL THEN 'request' ELSE 'idempotency_key' END
                USING ERRCODE = CASE WHEN p_idempotency_key IS NULL THEN 'object_not_in_prerequisite_state'
                                     ELSE 'invalid_parameter_value' END,
                      HINT = CASE WHEN p_idempotency_key IS NULL THEN 'Try again when that run has finished.'
                                  ELSE 'Use a new idempotency key.' END;
        END IF;
        IF FOUND AND p_idempotency_key IS NOT NULL AND v_run.inputs_hash <> v_hash THEN
            RAISE EXCEPTION 'idempotency_key "%" was used for run % with different inputs',
                p_idempotency_key, v_run.id
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use a new idempotency key for different inputs.';
        END IF;
        IF FOUND AND p_idempotency_key IS NOT NULL AND v_run.schema_version <> v_version THEN
            RAISE EXCEPTION 'idempotency_key "%" was used for run % with schema version %, not %',
                p_idempotency_key, v_run.id, v_run.schema_version, v_version
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use a new idempotency key for another schema version.';
        END IF;
        IF FOUND THEN
            INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                             details)
            VALUES (v_run.id, v_run.organization_id, 'DEDUPLICATED', v_run.status, v_run.status, v_run.attempt,
                    caller, jsonb_strip_nulls(jsonb_build_object('idempotency_key', p_idempotency_key)));
            RETURN v_run.id;
        END IF;
        -- The run that conflicted finished (or was purged) between our insert and our read: try again.
    END LOOP;
END;
$$;

CREATE FUNCTION diagnosis.enqueue_diagnosis(patient_id uuid, inputs jsonb DEFAULT '{}', idempotency_key text DEFAULT NULL,
        priority int DEFAULT 0, run_after timestamptz DEFAULT NULL, max_retries int DEFAULT NULL,
        schema_version text DEFAULT NULL) RETURNS uuid
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.enqueue_diagnosis(uuid, jsonb, text, int, timestamptz, int, text) IS
    'Queues a diagnosis run for a patient the caller may see; idempotent by key, or by inputs and schema version '
    'while a run is in flight.';

-- ===========================================================================================================
-- Set-based enqueue (issue 17): many keyless runs in one statement, at what its SQL costs
-- ===========================================================================================================

-- The same checks, errors, coalescing and audit rows as enqueue_diagnosis, per element, with one INSERT for the
-- runs and one for their ENQUEUED rows instead of a function call and five statements per run (whose executor
-- start-up, CHECK constraints and foreign-key triggers are most of what a one-run enqueue costs). Elements whose
-- inputs are already in flight (in the table or earlier in the same array) take the one-run path, which returns
-- the run they coalesce with and writes its DEDUPLICATED row.
CREATE FUNCTION diagnosis._enqueue_diagnoses_impl(caller name, p_patient_ids uuid[], p_inputs jsonb[],
        p_priority int, p_run_after timestamptz, p_max_retries int, p_schema_version text) RETURNS uuid[]
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n            int := coalesce(cardinality(p_patient_ids), 0);
    v_limit        bigint := pg_size_bytes(current_setting('diagnosis.max_inputs_bytes'));
    v_max_retries  int;
    v_version      text;
    v_bad          record;
    v_ids          uuid[];
BEGIN
    IF p_patient_ids IS NULL THEN
        RAISE EXCEPTION 'patient_ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Subscripts from 1 whatever bounds (or dimensions) the caller's arrays had: elements are found by position.
    p_patient_ids := ARRAY(SELECT unnest(p_patient_ids));
    p_inputs := CASE WHEN p_inputs IS NOT NULL THEN ARRAY(SELECT unnest(p_inputs)) END;
    IF p_inputs IS NOT NULL AND coalesce(cardinality(p_inputs), 0) <> v_n THEN
        RAISE EXCEPTION 'inputs has % elements, patient_ids %: one inputs object per patient',
            coalesce(cardinality(p_inputs), 0), v_n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_retries < 0 OR p_max_retries > 100 THEN
        RAISE EXCEPTION 'max_retries must be between 0 and 100, not %', p_max_retries
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_priority IS NULL THEN
        RAISE EXCEPTION 'priority must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_priority < -100 OR p_priority > 100 THEN
        RAISE EXCEPTION 'priority must be between -100 and 100, not %', p_priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_version := diagnosis._schema_version(p_schema_version);
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;

    -- The first offending element raises what enqueue_diagnosis would raise for it.
    SELECT x.ord, x.patient_id, x.inputs, octet_length(x.inputs::text) AS bytes INTO v_bad
      FROM unnest(p_patient_ids, p_inputs) WITH ORDINALITY AS x(patient_id, inputs, ord)
     WHERE x.patient_id IS NULL OR (p_inputs IS NOT NULL AND (x.inputs IS NULL OR jsonb_typeof(x.inputs) <> 'object'
                                                              OR octet_length(x.inputs::text) > v_limit))
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        IF v_bad.patient_id IS NULL THEN
            RAISE EXCEPTION 'patient_id must not be null' USING ERRCODE = 'null_value_not_allowed';
        ELSIF v_bad.inputs IS NULL THEN
            RAISE EXCEPTION 'inputs must not be null' USING ERRCODE = 'null_value_not_allowed',
                HINT = 'Pass ''{}'' for a run without inputs.';
        ELSIF jsonb_typeof(v_bad.inputs) <> 'object' THEN
            RAISE EXCEPTION 'inputs must be a JSON object, not %', jsonb_typeof(v_bad.inputs)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE EXCEPTION 'inputs are % bytes, more than diagnosis.max_inputs_bytes (%)',
            v_bad.bytes, current_setting('diagnosis.max_inputs_bytes') USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Unknown and invisible patients: the same check for each distinct patient, the same error.
    SELECT x.patient_id INTO v_bad
      FROM (SELECT DISTINCT patient_id FROM unnest(p_patient_ids) AS u(patient_id)) x
      LEFT JOIN diagnosis.patients p ON p.id = x.patient_id
     WHERE NOT diagnosis._role_sees_patient(caller, x.patient_id) OR p.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'patient "%" does not exist', v_bad.patient_id USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_max_retries := coalesce(p_max_retries, least(current_setting('diagnosis.max_retries')::int, 100));
    WITH x AS (
        SELECT e.ord, e.patient_id, e.inputs, e.inputs_hash, p.organization_id,
               row_number() OVER (PARTITION BY e.patient_id, e.inputs_hash ORDER BY e.ord) = 1 AS first
          FROM (SELECT u.ord, u.patient_id, coalesce(u.inputs, '{}') AS inputs,
                       encode(sha256(convert_to(coalesce(u.inputs, '{}')::text, 'UTF8')), 'hex') AS inputs_hash
                  FROM unnest(p_patient_ids, p_inputs) WITH ORDINALITY AS u(patient_id, inputs, ord)) e
          JOIN diagnosis.patients p ON p.id = e.patient_id
    ), ins AS (
        INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash, schema_version,
                                    priority, run_after, max_retries)
        SELECT x.patient_id, x.organization_id, caller, x.inputs, x.inputs_hash, v_version, p_priority,
               coalesce(p_run_after, now()), v_max_retries
          FROM x WHERE x.first ORDER BY x.ord
        ON CONFLICT (patient_id, inputs_hash, schema_version)
            WHERE idempotency_key IS NULL AND status IN ('queued', 'running')
        DO NOTHING
        RETURNING id, patient_id, organization_id, inputs_hash
    ), audit AS (
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor, details)
        SELECT id, organization_id, 'ENQUEUED', NULL, 'queued', 0, caller,
               jsonb_build_object('priority', p_priority, 'inputs_hash', inputs_hash)
          FROM ins
    )
    SELECT array_agg(ins.id ORDER BY x.ord) INTO v_ids
      FROM x LEFT JOIN ins ON x.first AND ins.patient_id = x.patient_id AND ins.inputs_hash = x.inputs_hash;

    -- Coalesced elements: the one-run path finds their run (and the moved-patient cases) exactly as it would alone.
    FOR i IN 1 .. v_n LOOP
        IF v_ids[i] IS NULL THEN
            v_ids[i] := diagnosis._enqueue_diagnosis_impl(caller, p_patient_ids[i], coalesce(p_inputs[i], '{}'), NULL,
                                                          p_priority, p_run_after, p_max_retries, v_version);
        END IF;
    END LOOP;
    PERFORM diagnosis._wake_at_commit();
    RETURN v_ids;
END;
$$;

CREATE FUNCTION diagnosis.enqueue_diagnoses(patient_ids uuid[], inputs jsonb[] DEFAULT NULL, priority int DEFAULT 0,
        run_after timestamptz DEFAULT NULL, max_retries int DEFAULT NULL, schema_version text DEFAULT NULL) RETURNS uuid[]
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.enqueue_diagnoses(uuid[], jsonb[], int, timestamptz, int, text) IS
    'Queues one keyless run per element (inputs: one object per patient, default {}); returns their ids in order. '
    'Same checks, coalescing and audit rows as enqueue_diagnosis, one statement per batch.';
REVOKE ALL ON FUNCTION diagnosis._enqueue_diagnoses_impl(name, uuid[], jsonb[], int, timestamptz, int, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION diagnosis._schema_version(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._enqueue_diagnosis_impl(name, uuid, jsonb, text, int, timestamptz, int, text) FROM PUBLIC;


-- A re-run (0.3.0): a new run of a terminal run with the same request (patient, inputs, schema version, priority,
-- max_retries) and no idempotency key, so a keyed request whose run failed can be run again; the worker builds a
-- fresh context pack. Visibility as cancel_diagnosis: an invisible run is reported as an unknown one. A second
-- call while a re-run of the same run is in flight returns it (runs_rerun_inflight_idx); so does a call while a
-- keyless run of the same request is in flight (in-flight coalescing, as enqueue_diagnosis): either way a
-- DEDUPLICATED row records the reason.
CREATE FUNCTION diagnosis._rerun_diagnosis_impl(caller name, p_run_id uuid, p_reason text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_exists   boolean;
    v_visible  boolean;
    v_run      diagnosis.runs;
    v_found    diagnosis.runs;
    v_org      uuid;
    v_id       uuid;
BEGIN
    IF p_run_id IS NULL THEN
        RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_reason IS NULL THEN
        RAISE EXCEPTION 'reason must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Say why the run is repeated: its ENQUEUED audit row keeps the reason.';
    END IF;
    IF length(btrim(p_reason)) = 0 OR length(p_reason) > 1000 THEN
        RAISE EXCEPTION 'reason must be 1 to 1000 characters and not blank' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT r.id IS NOT NULL, diagnosis._role_sees_patient(caller, coalesce(r.patient_id, p_run_id))
      INTO v_exists, v_visible
      FROM (SELECT 1) AS one LEFT JOIN diagnosis.runs r ON r.id = p_run_id;
    IF v_exists AND v_visible THEN
        SELECT * INTO v_run FROM diagnosis.runs WHERE id = p_run_id;
    END IF;
    IF NOT v_exists OR NOT v_visible OR v_run.id IS NULL THEN
        RAISE EXCEPTION 'run "%" does not exist', p_run_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_run.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'run % is %: only a completed, failed or cancelled run can be re-run', p_run_id, v_run.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    SELECT p.organization_id INTO v_org FROM diagnosis.patients p WHERE p.id = v_run.patient_id;
    IF v_org IS DISTINCT FROM v_run.organization_id THEN
        -- The patient moved: the old organization's request is not the new one's to repeat.
        RAISE EXCEPTION 'run % belongs to the patient''s earlier organization', p_run_id
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Enqueue a new run.';
    END IF;

    LOOP
        INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash, schema_version,
                                    priority, run_after, max_retries, rerun_of)
        VALUES (v_run.patient_id, v_org, caller, v_run.inputs, v_run.inputs_hash, v_run.schema_version,
                v_run.priority, now(), v_run.max_retries, v_run.id)
        ON CONFLICT DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NOT NULL THEN
            INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                             details)
            VALUES (v_id, v_org, 'ENQUEUED', NULL, 'queued', 0, caller,
                    jsonb_build_object('rerun_of', v_run.id, 'reason', p_reason, 'priority', v_run.priority,
                                       'inputs_hash', v_run.inputs_hash));
            PERFORM diagnosis._wake_at_commit();
            RETURN v_id;
        END IF;
        -- The two unique indexes a re-run can meet: a re-run of this run in flight, or this request in flight.
        SELECT * INTO v_found FROM diagnosis.runs
         WHERE rerun_of = v_run.id AND status IN ('queued', 'running');
        IF NOT FOUND THEN
            SELECT * INTO v_found FROM diagnosis.runs
             WHERE patient_id = v_run.patient_id AND inputs_hash = v_run.inputs_hash
               AND schema_version = v_run.schema_version AND idempotency_key IS NULL
               AND status IN ('queued', 'running');
        END IF;
        IF FOUND THEN
            INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                             details)
            VALUES (v_found.id, v_found.organization_id, 'DEDUPLICATED', v_found.status, v_found.status,
                    v_found.attempt, caller, jsonb_build_object('rerun_of', v_run.id, 'reason', p_reason));
            RETURN v_found.id;
        END IF;
        -- The run that conflicted finished between our insert and our read: try again.
    END LOOP;
END;
$$;

CREATE FUNCTION diagnosis.rerun_diagnosis(run_id uuid, reason text) RETURNS uuid
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.rerun_diagnosis(uuid, text) IS
    'Queues a new run of a completed, failed or cancelled run (same patient, inputs, schema version, priority; no '
    'idempotency key; rerun_of set); returns the re-run already in flight, if any.';

-- A clinician's sign-off (0.3.0): one row per role and completed run; a second call returns the first row's id.
CREATE FUNCTION diagnosis._acknowledge_diagnosis_impl(caller name, p_run_id uuid, p_note text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_exists   boolean;
    v_visible  boolean;
    v_run      diagnosis.runs;
    v_id       bigint;
BEGIN
    IF p_run_id IS NULL THEN
        RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF length(p_note) > 4000 THEN
        RAISE EXCEPTION 'note must be at most 4000 characters, not %', length(p_note)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT r.id IS NOT NULL, diagnosis._role_sees_patient(caller, coalesce(r.patient_id, p_run_id))
      INTO v_exists, v_visible
      FROM (SELECT 1) AS one LEFT JOIN diagnosis.runs r ON r.id = p_run_id;
    IF v_exists AND v_visible THEN
        SELECT * INTO v_run FROM diagnosis.runs WHERE id = p_run_id;
    END IF;
    IF NOT v_exists OR NOT v_visible OR v_run.id IS NULL THEN
        RAISE EXCEPTION 'run "%" does not exist', p_run_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_run.status <> 'completed' THEN
        RAISE EXCEPTION 'run % is %: only a completed run has a diagnosis to acknowledge', p_run_id, v_run.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    INSERT INTO diagnosis.acknowledgements (run_id, organization_id, acknowledged_by, note)
    VALUES (v_run.id, v_run.organization_id, caller, p_note)
    ON CONFLICT (run_id, acknowledged_by) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT k.id INTO v_id FROM diagnosis.acknowledgements k WHERE k.run_id = v_run.id AND k.acknowledged_by = caller;
        IF v_id IS NULL THEN
            -- Purged between the insert and the read.
            RAISE EXCEPTION 'run "%" does not exist', p_run_id USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN v_id;
    END IF;
    INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor, details)
    VALUES (v_run.id, v_run.organization_id, 'ACKNOWLEDGED', 'completed', 'completed', v_run.attempt, caller,
            jsonb_build_object('acknowledgement_id', v_id));
    RETURN v_id;
END;
$$;

CREATE FUNCTION diagnosis.acknowledge_diagnosis(run_id uuid, note text DEFAULT NULL) RETURNS bigint
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.acknowledge_diagnosis(uuid, text) IS
    'Signs off a completed run''s diagnosis as the calling role (once per role and run: a second call returns the '
    'first acknowledgement''s id); acknowledged runs leave review_queue.';

REVOKE ALL ON FUNCTION diagnosis._rerun_diagnosis_impl(name, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._acknowledge_diagnosis_impl(name, uuid, text) FROM PUBLIC;


-- Urgency first (0.2): critical, high, medium, then the low-risk diagnoses that need review for low confidence;
-- newest first within each. urgency (1-4) lets a caller that filters or pages the view keep that order.
CREATE OR REPLACE VIEW diagnosis.review_queue WITH (security_invoker = true) AS
SELECT l.*,
       CASE l.risk_level WHEN 'critical' THEN 1 WHEN 'high' THEN 2 WHEN 'medium' THEN 3 ELSE 4 END AS urgency
FROM diagnosis.latest_diagnosis l
WHERE (l.needs_review OR l.risk_level IN ('medium', 'high', 'critical'))
  AND NOT EXISTS (SELECT 1 FROM diagnosis.acknowledgements k WHERE k.run_id = l.run_id)
ORDER BY urgency, l.diagnosed_at DESC, l.patient_id;
COMMENT ON VIEW diagnosis.review_queue IS
    'Latest diagnoses that need a clinician and nobody has acknowledged yet, most urgent first: critical, high, '
    'medium risk, then low confidence (needs_review); newest first within each (ORDER BY urgency, diagnosed_at DESC).';

