/* pg_diagnosis 0.1.0 -> 0.2.0 (every schema change of 0.2.0; the upgrade test compares the result with a fresh
 * 0.2.0 install). */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.2.0'" to load this file. \quit

-- ===========================================================================================================
-- Security and liveness: bounded tenant numbers, worker tokens, cancel of running runs, task-backed calls,
-- fair claims, worker_status for monitors only
-- ===========================================================================================================

-- Values a tenant chose before 0.2.0 may be out of the new bounds: clamp the runs that can still run (terminal
-- runs never change; they get the constraint checked as they are, so clamp them too, with the guard set aside).
ALTER TABLE diagnosis.runs DISABLE TRIGGER runs_state_machine;
UPDATE diagnosis.runs SET priority = greatest(-100, least(100, priority)), max_retries = least(max_retries, 100)
 WHERE priority NOT BETWEEN -100 AND 100 OR max_retries > 100;
ALTER TABLE diagnosis.runs ENABLE TRIGGER runs_state_machine;

ALTER TABLE diagnosis.runs DROP CONSTRAINT runs_max_retries_check;
ALTER TABLE diagnosis.runs ADD CONSTRAINT runs_priority_check CHECK (priority BETWEEN -100 AND 100);
ALTER TABLE diagnosis.runs ADD CONSTRAINT runs_max_retries_check CHECK (max_retries BETWEEN 0 AND 100);
ALTER TABLE diagnosis.runs ADD COLUMN worker_token bigint;
ALTER TABLE diagnosis.runs ADD COLUMN mcp_task_id text;
ALTER TABLE diagnosis.runs ADD COLUMN mcp_task_expires_at timestamptz;
ALTER TABLE diagnosis.runs ADD COLUMN cancel_requested_at timestamptz;
ALTER TABLE diagnosis.runs ADD COLUMN cancel_requested_by name;

DROP INDEX diagnosis.runs_claim_idx;
CREATE INDEX runs_claim_idx ON diagnosis.runs (organization_id, priority DESC, run_after) WHERE status = 'queued';
DROP INDEX diagnosis.runs_running_idx;
CREATE INDEX runs_running_idx ON diagnosis.runs (organization_id, worker_token) WHERE status = 'running';

CREATE OR REPLACE FUNCTION diagnosis._runs_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cancel_only diagnosis.runs;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF diagnosis._purging() AND OLD.status IN ('completed', 'failed', 'cancelled') THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'run % cannot be deleted', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Terminal runs are deleted by diagnosis.purge_runs().';
    END IF;
    IF OLD.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'run % is %: a terminal run cannot change', OLD.id, OLD.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NEW.id <> OLD.id OR NEW.patient_id <> OLD.patient_id OR NEW.organization_id <> OLD.organization_id
       OR NEW.inputs_hash <> OLD.inputs_hash OR NEW.inputs <> OLD.inputs
       OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key OR NEW.requested_by <> OLD.requested_by
       OR NEW.created_at <> OLD.created_at OR NEW.schema_version <> OLD.schema_version THEN
        RAISE EXCEPTION 'the identity of run % cannot change', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NEW.status = OLD.status THEN
        IF OLD.status = 'running' AND NOT diagnosis._is_worker() THEN
            -- cancel_diagnosis records a cancel request, and changes nothing else; the worker ends the call.
            v_cancel_only := OLD;
            v_cancel_only.cancel_requested_at := NEW.cancel_requested_at;
            v_cancel_only.cancel_requested_by := NEW.cancel_requested_by;
            IF OLD.cancel_requested_at IS NULL AND NEW.cancel_requested_at IS NOT NULL
               AND NEW.cancel_requested_by IS NOT NULL AND v_cancel_only IS NOT DISTINCT FROM NEW THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'only a pg_diagnosis worker may change running run %', OLD.id
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RETURN NEW;
    END IF;
    IF (OLD.status = 'queued' AND NEW.status = 'running')
       OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'queued', 'cancelled')) THEN
        IF NOT diagnosis._is_worker() THEN
            RAISE EXCEPTION 'only a pg_diagnosis worker may move run % from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.status = 'queued' AND NEW.status = 'cancelled' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run % cannot move from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'object_not_in_prerequisite_state';
END;
$$;

CREATE OR REPLACE FUNCTION diagnosis._enqueue_diagnosis_impl(caller name, p_patient_id uuid, p_inputs jsonb,
        p_idempotency_key text, p_priority int, p_run_after timestamptz, p_max_retries int) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_org          uuid;
    v_visible      boolean;
    v_hash         text;
    v_text         text;
    v_max_retries  int;
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
                                        priority, run_after, max_retries)
            VALUES (p_patient_id, v_org, caller, p_inputs, v_hash, p_idempotency_key, p_priority,
                    coalesce(p_run_after, now()), v_max_retries)
            ON CONFLICT (patient_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_id;
        ELSE
            INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash,
                                        priority, run_after, max_retries)
            VALUES (p_patient_id, v_org, caller, p_inputs, v_hash, p_priority, coalesce(p_run_after, now()),
                    v_max_retries)
            ON CONFLICT (patient_id, inputs_hash) WHERE idempotency_key IS NULL AND status IN ('queued', 'running')
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

        -- Somebody else's run already holds this key or these inputs: return it.
        IF p_idempotency_key IS NOT NULL THEN
            SELECT * INTO v_run FROM diagnosis.runs
            WHERE patient_id = p_patient_id AND idempotency_key = p_idempotency_key;
        ELSE
            SELECT * INTO v_run FROM diagnosis.runs
            WHERE patient_id = p_patient_id AND inputs_hash = v_hash AND idempotency_key IS NULL
              AND status IN ('queued', 'running') AND schema_version = 'v1';
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

CREATE OR REPLACE FUNCTION diagnosis._cancel_diagnosis_impl(caller name, p_run_id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run      diagnosis.runs;
    v_exists   boolean;
    v_visible  boolean;
BEGIN
    IF p_run_id IS NULL THEN
        RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Visibility and status first, without a row lock: a run the caller may not see is reported exactly like an
    -- unknown one, by the same path (the access check runs either way), and no caller's open transaction can
    -- hold a lock on a run the worker has in flight.
    SELECT r.id IS NOT NULL, diagnosis._role_sees_patient(caller, coalesce(r.patient_id, p_run_id))
      INTO v_exists, v_visible
      FROM (SELECT 1) AS one LEFT JOIN diagnosis.runs r ON r.id = p_run_id;
    IF v_exists AND v_visible THEN
        SELECT * INTO v_run FROM diagnosis.runs WHERE id = p_run_id;
    END IF;
    IF NOT v_exists OR NOT v_visible OR v_run.id IS NULL THEN
        RAISE EXCEPTION 'run "%" does not exist', p_run_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_run.requested_by <> caller AND NOT diagnosis._is_superuser(caller)
       AND NOT v_run.organization_id = ANY (diagnosis._member_orgs_impl(caller, 'admin')) THEN
        RAISE EXCEPTION 'permission denied to cancel run %', p_run_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the role that requested the run and the organization''s admins may cancel it.';
    END IF;
    IF v_run.status IN ('completed', 'failed', 'cancelled') THEN
        RETURN false;
    END IF;
    -- Queued: cancelled at once. A claim in progress holds the row for the length of its short transaction; the
    -- update then sees the run running and the request path below takes over.
    UPDATE diagnosis.runs SET status = 'cancelled', completed_at = now(), updated_at = now()
     WHERE id = p_run_id AND status = 'queued';
    IF FOUND THEN
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor)
        VALUES (p_run_id, v_run.organization_id, 'CANCELLED', 'queued', 'cancelled', v_run.attempt, caller);
        RETURN true;
    END IF;
    -- Running: record the request; the worker stops the call and writes CANCELLED. The worker never waits for this
    -- row lock (its writes skip locked rows and come back to them).
    UPDATE diagnosis.runs SET cancel_requested_at = now(), cancel_requested_by = caller
     WHERE id = p_run_id AND status = 'running' AND cancel_requested_at IS NULL;
    IF FOUND THEN
        PERFORM diagnosis._wake_at_commit();
        RETURN true;
    END IF;
    -- Asked before (the first request stands), or finished meanwhile.
    RETURN EXISTS (SELECT 1 FROM diagnosis.runs WHERE id = p_run_id AND status = 'running');
END;
$$;

COMMENT ON FUNCTION diagnosis.cancel_diagnosis(uuid) IS
    'Cancels a queued run at once, or asks the worker to stop a running one (requester or organization admin); '
    'false when the run is already terminal.';

DROP FUNCTION diagnosis.worker_status();
CREATE FUNCTION diagnosis.worker_status()
    RETURNS TABLE (pid int, state text, inflight int, runs_done bigint, last_error text, started_at timestamptz,
                   mcp_era text, mcp_protocol_version text, call_limit int, fd_limit int)
    LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'pgdiag_worker_status';
COMMENT ON FUNCTION diagnosis.worker_status() IS
    'One row per live pg_diagnosis worker: its state, calls in flight, the endpoint''s protocol era and version, '
    'and its call limit from the file descriptors it may open; for superusers and members of pg_monitor.';

CREATE FUNCTION diagnosis._warn_outside_worker_database() RETURNS void
    LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'pgdiag_warn_outside_worker_database';
COMMENT ON FUNCTION diagnosis._warn_outside_worker_database() IS
    'Warns when the extension is created in a database the workers do not serve (diagnosis.database).';

REVOKE ALL ON FUNCTION diagnosis._warn_outside_worker_database() FROM PUBLIC;


-- ===========================================================================================================
-- Performance (issue 17): the access helpers on enqueue's path become plpgsql (plans kept per session)
-- ===========================================================================================================

-- A sql function with a SET clause is never inlined, and is parsed and planned again on every call (about half of
-- enqueue's CPU in 0.1.0); plpgsql keeps its plans for the session. Same bodies, same results.
CREATE OR REPLACE FUNCTION diagnosis._is_superuser(role name) RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = role), false);
END;
$$;

CREATE OR REPLACE FUNCTION diagnosis._role_sees_patient(role name, patient uuid) RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN diagnosis._is_superuser($1)
        OR EXISTS (SELECT 1
                   FROM diagnosis.patients p
                   JOIN diagnosis.members m ON m.organization_id = p.organization_id AND m.role_name = $1
                   WHERE p.id = $2
                     AND (m.member_role = 'admin'
                          OR EXISTS (SELECT 1 FROM diagnosis.patient_assignments a
                                     WHERE a.patient_id = p.id AND a.role_name = $1)));
END;
$$;

-- ===========================================================================================================
-- Performance (issue 17): the index set of runs, each index on one stage of a run's life (see pg_diagnosis.sql)
-- ===========================================================================================================

ALTER TABLE diagnosis.runs DROP CONSTRAINT runs_patient_idempotency_key;
CREATE UNIQUE INDEX runs_idempotency_key_idx ON diagnosis.runs (patient_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX diagnosis.runs_completed_idx;
DROP INDEX diagnosis.runs_organization_idx;
CREATE INDEX runs_finished_idx ON diagnosis.runs (organization_id, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- ===========================================================================================================
-- Set-based enqueue (issue 17): many keyless runs in one statement, at what its SQL costs
-- ===========================================================================================================

-- The same checks, errors, coalescing and audit rows as enqueue_diagnosis, per element, with one INSERT for the
-- runs and one for their ENQUEUED rows instead of a function call and five statements per run (whose executor
-- start-up, CHECK constraints and foreign-key triggers are most of what a one-run enqueue costs). Elements whose
-- inputs are already in flight (in the table or earlier in the same array) take the one-run path, which returns
-- the run they coalesce with and writes its DEDUPLICATED row.
CREATE FUNCTION diagnosis._enqueue_diagnoses_impl(caller name, p_patient_ids uuid[], p_inputs jsonb[],
        p_priority int, p_run_after timestamptz, p_max_retries int) RETURNS uuid[]
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n            int := coalesce(cardinality(p_patient_ids), 0);
    v_limit        bigint := pg_size_bytes(current_setting('diagnosis.max_inputs_bytes'));
    v_max_retries  int;
    v_bad          record;
    v_ids          uuid[];
BEGIN
    IF p_patient_ids IS NULL THEN
        RAISE EXCEPTION 'patient_ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
        INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, inputs, inputs_hash, priority, run_after,
                                    max_retries)
        SELECT x.patient_id, x.organization_id, caller, x.inputs, x.inputs_hash, p_priority,
               coalesce(p_run_after, now()), v_max_retries
          FROM x WHERE x.first ORDER BY x.ord
        ON CONFLICT (patient_id, inputs_hash) WHERE idempotency_key IS NULL AND status IN ('queued', 'running')
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
                                                          p_priority, p_run_after, p_max_retries);
        END IF;
    END LOOP;
    PERFORM diagnosis._wake_at_commit();
    RETURN v_ids;
END;
$$;

CREATE FUNCTION diagnosis.enqueue_diagnoses(patient_ids uuid[], inputs jsonb[] DEFAULT NULL, priority int DEFAULT 0,
        run_after timestamptz DEFAULT NULL, max_retries int DEFAULT NULL) RETURNS uuid[]
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.enqueue_diagnoses(uuid[], jsonb[], int, timestamptz, int) IS
    'Queues one keyless run per element (inputs: one object per patient, default {}); returns their ids in order. '
    'Same checks, coalescing and audit rows as enqueue_diagnosis, one statement per batch.';
REVOKE ALL ON FUNCTION diagnosis._enqueue_diagnoses_impl(name, uuid[], jsonb[], int, timestamptz, int) FROM PUBLIC;
