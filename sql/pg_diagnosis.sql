/* pg_diagnosis install script (the only hand-edited one; each release adds pg_diagnosis--A--B.sql). */
\echo Use "CREATE EXTENSION pg_diagnosis" to load this file. \quit

-- ===========================================================================================================
-- Functions of the library (src/sql_api.cpp)
-- ===========================================================================================================

CREATE FUNCTION diagnosis._is_worker() RETURNS boolean
    LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'pgdiag_is_worker';
COMMENT ON FUNCTION diagnosis._is_worker() IS
    'True only in a pg_diagnosis background worker''s own statements, acting as diagnosis.worker_role (never in code '
    'run under SECURITY_RESTRICTED_OPERATION): the state machine lets only workers move runs out of running.';

CREATE FUNCTION diagnosis._wake_at_commit() RETURNS void
    LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'pgdiag_wake_at_commit';
COMMENT ON FUNCTION diagnosis._wake_at_commit() IS 'Wakes the workers when the current transaction commits.';

CREATE FUNCTION diagnosis._begin_purge() RETURNS void
    LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'pgdiag_begin_purge';
COMMENT ON FUNCTION diagnosis._begin_purge() IS
    'Lets the insert-only guards accept deletes until the end of the transaction; superuser only (purge_runs).';

CREATE FUNCTION diagnosis._purging() RETURNS boolean
    LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'pgdiag_purging';
COMMENT ON FUNCTION diagnosis._purging() IS 'True while diagnosis.purge_runs() runs in this transaction.';

-- ===========================================================================================================
-- Tenancy and clinical data
-- ===========================================================================================================

CREATE TABLE diagnosis.organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE diagnosis.organizations IS 'Tenants. Created by a DBA; admins may rename their own.';

CREATE TABLE diagnosis.members (
    role_name        name NOT NULL,
    organization_id  uuid NOT NULL REFERENCES diagnosis.organizations (id) ON DELETE CASCADE,
    member_role      text NOT NULL CHECK (member_role IN ('clinician', 'admin')),
    PRIMARY KEY (role_name, organization_id)
);
CREATE INDEX members_organization_idx ON diagnosis.members (organization_id);
COMMENT ON TABLE diagnosis.members IS
    'Which PostgreSQL role is a clinician or an admin of which organization (identity is current_user).';

CREATE TABLE diagnosis.patients (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES diagnosis.organizations (id),
    display_name     text,
    data             jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_organization_idx ON diagnosis.patients (organization_id);
COMMENT ON TABLE diagnosis.patients IS 'Patients of an organization; data is free-form demographic and clinical context.';

CREATE TABLE diagnosis.patient_assignments (
    patient_id  uuid NOT NULL REFERENCES diagnosis.patients (id) ON DELETE CASCADE,
    role_name   name NOT NULL,
    PRIMARY KEY (patient_id, role_name)
);
CREATE INDEX patient_assignments_role_idx ON diagnosis.patient_assignments (role_name);
COMMENT ON TABLE diagnosis.patient_assignments IS 'Patients assigned to clinicians; a clinician sees only these.';

CREATE TABLE diagnosis.observations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id   uuid NOT NULL REFERENCES diagnosis.patients (id) ON DELETE CASCADE,
    code         text NOT NULL,
    value        numeric,
    unit         text,
    observed_at  timestamptz NOT NULL,
    data         jsonb
);
CREATE INDEX observations_patient_time_idx ON diagnosis.observations (patient_id, observed_at DESC, id DESC);
COMMENT ON TABLE diagnosis.observations IS
    'Clinical facts (LOINC or plain codes) that context packs are built from.';

-- ===========================================================================================================
-- Runs, artifacts, audit
-- ===========================================================================================================

CREATE TABLE diagnosis.result_schemas (
    version  text PRIMARY KEY,
    schema   jsonb NOT NULL CHECK (jsonb_typeof(schema) = 'object')
);
COMMENT ON TABLE diagnosis.result_schemas IS
    'The JSON Schema each schema_version is validated against (RapidJSON). Readable by everyone, writable by superusers.';

INSERT INTO diagnosis.result_schemas (version, schema) VALUES ('v1', $schema$
{"type":"object","required":["risk_level","confidence_score","summary","primary_findings","recommendations"],
 "properties":{
  "risk_level":{"enum":["low","medium","high","critical"]},
  "confidence_score":{"type":"number","minimum":0,"maximum":1},
  "summary":{"type":"string","maxLength":4000},
  "primary_findings":{"type":"array","items":{"type":"string"},"maxItems":50},
  "recommendations":{"type":"array","maxItems":50,"items":{"type":"object","required":["text"],
     "properties":{"text":{"type":"string"},"priority":{"enum":["routine","soon","urgent"]}}}},
  "differential":{"type":"array","items":{"type":"object","required":["condition"],
     "properties":{"condition":{"type":"string"},"probability":{"type":"number","minimum":0,"maximum":1}}}}}}
$schema$);

CREATE TABLE diagnosis.runs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id          uuid NOT NULL REFERENCES diagnosis.patients (id) ON DELETE RESTRICT,
    organization_id     uuid NOT NULL REFERENCES diagnosis.organizations (id),
    requested_by        name NOT NULL DEFAULT current_user,
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    inputs              jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(inputs) = 'object'),
    inputs_hash         text NOT NULL,
    idempotency_key     text,
    schema_version      text NOT NULL DEFAULT 'v1' REFERENCES diagnosis.result_schemas (version),
    -- Bounded where they enter (a tenant chooses them): no arithmetic on them can overflow.
    priority            int NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    run_after           timestamptz NOT NULL DEFAULT now(),
    attempt             int NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_retries         int NOT NULL CHECK (max_retries BETWEEN 0 AND 100),
    lease_expires_at    timestamptz,
    worker_pid          int,
    error_code          text CHECK (error_code IN ('VALIDATION_ERROR', 'LLM_ERROR', 'CONTEXT_PACK_ERROR', 'MCP_ERROR',
                                                   'NETWORK_ERROR', 'TIMEOUT_ERROR', 'UNKNOWN_ERROR')),
    error_message       text,
    error_details       jsonb,
    mcp_run_id          text,
    processing_time_ms  int,
    progress            real CHECK (progress BETWEEN 0 AND 1),
    progress_message    text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    completed_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- 0.2.0 (appended, as the update script adds them):
    -- the claiming worker's per-start token: pids repeat (a fresh pid namespace, a restart), tokens do not;
    worker_token        bigint,
    -- a task-backed call (the MCP tasks extension): polled again, not called again, after a crash;
    mcp_task_id         text,
    mcp_task_expires_at timestamptz,
    -- a cancel of a running run, recorded without a lock the worker waits on; the worker ends the call.
    cancel_requested_at timestamptz,
    cancel_requested_by name,
    -- 0.3.0 (appended, as the update script adds them):
    -- server-to-client requests of the run's calls that were ignored and counted instead of answered (NULL until
    -- a call of the run finished; no default, which the update script's ADD COLUMN would store as a missing value).
    ignored_server_requests int CHECK (ignored_server_requests >= 0),
    -- the run this run re-runs (rerun_diagnosis). No foreign key: retention may purge the original first, and
    -- a re-run is never updated once terminal (ON DELETE SET NULL would be refused by the state machine).
    rerun_of            uuid,
    CONSTRAINT runs_status_timestamps CHECK (CASE status
        WHEN 'queued'    THEN completed_at IS NULL
        WHEN 'running'   THEN started_at IS NOT NULL AND completed_at IS NULL
        WHEN 'completed' THEN completed_at IS NOT NULL
        WHEN 'failed'    THEN completed_at IS NOT NULL AND error_code IS NOT NULL
        WHEN 'cancelled' THEN completed_at IS NOT NULL
    END)
);
-- The index set (issue 17). A status change is never a HOT update (status is in the predicates), so it inserts into
-- every index without a predicate and every one whose predicate the new status meets: each index below is partial,
-- on one stage of a run's life, and the primary key is the only one a run's three versions all enter.
-- Idempotency keys (most runs have none).
CREATE UNIQUE INDEX runs_idempotency_key_idx ON diagnosis.runs (patient_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- In-flight coalescing of keyless enqueues: one queued or running run per patient, inputs and schema version (the
-- lookup that finds the run a conflicting enqueue returns compares the same three).
CREATE UNIQUE INDEX runs_inflight_inputs_idx ON diagnosis.runs (patient_id, inputs_hash, schema_version)
    WHERE idempotency_key IS NULL AND status IN ('queued', 'running');
-- One re-run of a run in flight at a time (rerun_diagnosis returns it to a second caller).
CREATE UNIQUE INDEX runs_rerun_inflight_idx ON diagnosis.runs (rerun_of)
    WHERE rerun_of IS NOT NULL AND status IN ('queued', 'running');
-- The worker's claim and its next-due probe (turns between organizations; within one, priority then run_after),
-- every probe with organization and priority fixed. The only index on queued runs: with a second one ordered by
-- run_after alone, generic plans on stale statistics walked every due run of every organization.
CREATE INDEX runs_claim_idx ON diagnosis.runs (organization_id, priority DESC, run_after) WHERE status = 'queued';
-- Runs in flight: recovery, cancel requests, and the per-organization cap of the claim.
CREATE INDEX runs_running_idx ON diagnosis.runs (organization_id, worker_token) WHERE status = 'running';
-- Finished runs: retention (purge_runs, per organization) and per-organization reads of history.
CREATE INDEX runs_finished_idx ON diagnosis.runs (organization_id, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
-- Reading runs at scale (0.3.0): a patient's history and a requester's runs, newest first, whatever their status.
-- Every run version enters them (a status change is not a HOT update), the price of not scanning the table.
CREATE INDEX runs_patient_history_idx ON diagnosis.runs (patient_id, created_at DESC);
CREATE INDEX runs_requester_idx ON diagnosis.runs (requested_by, created_at DESC);
COMMENT ON TABLE diagnosis.runs IS
    'Diagnosis runs. Enter only through diagnosis.enqueue_diagnosis(); only a pg_diagnosis worker moves one out of running.';

CREATE TABLE diagnosis.artifacts (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id                 uuid NOT NULL REFERENCES diagnosis.runs (id) ON DELETE CASCADE,
    patient_id             uuid NOT NULL,
    organization_id        uuid NOT NULL,
    artifact_type          text NOT NULL CHECK (artifact_type IN ('context_pack', 'mcp_response', 'diagnosis_json')),
    artifact_data          jsonb NOT NULL,
    content_sha256         text NOT NULL,
    risk_level             text CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    confidence_score       real CHECK (confidence_score BETWEEN 0 AND 1),
    primary_findings       text[],
    recommendations_count  int,
    needs_review           bool,
    sequence_order         int,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT artifacts_run_type UNIQUE (run_id, artifact_type),
    CONSTRAINT artifacts_diagnosis_columns CHECK (artifact_type = 'diagnosis_json' OR
        (risk_level IS NULL AND confidence_score IS NULL AND primary_findings IS NULL))
);
CREATE INDEX artifacts_patient_idx ON diagnosis.artifacts (patient_id, created_at DESC) WHERE artifact_type = 'diagnosis_json';
CREATE INDEX artifacts_organization_idx ON diagnosis.artifacts (organization_id);
COMMENT ON TABLE diagnosis.artifacts IS
    'Insert-only: context_pack, mcp_response and diagnosis_json of each run, written by the worker at finalize.';

CREATE TABLE diagnosis.audit_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           uuid REFERENCES diagnosis.runs (id) ON DELETE CASCADE,
    organization_id  uuid,
    event            text NOT NULL CHECK (event IN ('ENQUEUED', 'DEDUPLICATED', 'LOCKED', 'RETRY_SCHEDULED', 'RECOVERED',
                                                    'COMPLETED', 'FAILED', 'CANCELLED', 'PURGED', 'ACKNOWLEDGED')),
    status_from      text,
    status_to        text,
    attempt          int,
    actor            name NOT NULL DEFAULT current_user,
    worker_pid       int,
    details          jsonb,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_log_run_idx ON diagnosis.audit_log (run_id, id);
CREATE INDEX audit_log_organization_idx ON diagnosis.audit_log (organization_id, created_at);
COMMENT ON TABLE diagnosis.audit_log IS 'Append-only: every step of every run, with the role that caused it.';

-- A clinician's sign-off of a completed diagnosis (0.3.0): once per role and run, through acknowledge_diagnosis.
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

-- ===========================================================================================================
-- Guards: the state machine (SPEC section 3) and insert-only tables, for every role, superuser included
-- ===========================================================================================================

-- In C (src/runs_guard.cpp): every claim, progress report and finalize passes through it row by row, and a
-- plpgsql guard cost a plpgsql call and a GUC nest level (its pinned search_path) per row.
CREATE FUNCTION diagnosis._runs_guard() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'pgdiag_runs_guard';
COMMENT ON FUNCTION diagnosis._runs_guard() IS 'The state machine of runs: every other transition raises 55000.';

CREATE TRIGGER runs_state_machine BEFORE UPDATE OR DELETE ON diagnosis.runs
    FOR EACH ROW EXECUTE FUNCTION diagnosis._runs_guard();

CREATE FUNCTION diagnosis._append_only_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND diagnosis._purging() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'diagnosis.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Retention goes through diagnosis.purge_runs().';
END;
$$;
COMMENT ON FUNCTION diagnosis._append_only_guard() IS 'Refuses UPDATE, DELETE and TRUNCATE outside purge_runs.';

CREATE TRIGGER artifacts_append_only BEFORE UPDATE OR DELETE ON diagnosis.artifacts
    FOR EACH ROW EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER artifacts_no_truncate BEFORE TRUNCATE ON diagnosis.artifacts
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON diagnosis.audit_log
    FOR EACH ROW EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON diagnosis.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER runs_no_truncate BEFORE TRUNCATE ON diagnosis.runs
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER acknowledgements_append_only BEFORE UPDATE OR DELETE ON diagnosis.acknowledgements
    FOR EACH ROW EXECUTE FUNCTION diagnosis._append_only_guard();
CREATE TRIGGER acknowledgements_no_truncate BEFORE TRUNCATE ON diagnosis.acknowledgements
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._append_only_guard();

CREATE FUNCTION diagnosis._artifacts_writer_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A restore (diagnosis._restoring, section "Backup and restore") reloads the rows pg_dump carried.
    IF NOT diagnosis._is_worker() AND NOT diagnosis._restoring(TG_RELID) THEN
        RAISE EXCEPTION 'only a pg_diagnosis worker writes artifacts'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION diagnosis._artifacts_writer_guard() IS
    'The worker is the only writer of artifacts; a restore of a dump reloads them.';
CREATE TRIGGER artifacts_writer BEFORE INSERT ON diagnosis.artifacts
    FOR EACH STATEMENT EXECUTE FUNCTION diagnosis._artifacts_writer_guard();

-- ===========================================================================================================
-- A run's lifecycle (SPEC sections 3-5): the worker's statements, as the extension's own functions (#26)
-- ===========================================================================================================
-- The worker calls each of these in one line and touches the tables in no other way. They are SECURITY DEFINER
-- (the extension's owner) with search_path pinned, so the worker's role needs EXECUTE on them and no table
-- privilege; they touch only the extension's own tables and never read a tenant's or a hospital's objects (the
-- worker builds context packs outside them, as the pack function's owner). Moving a run out of running is still
-- the worker process's alone (diagnosis._is_worker(), the guard above), whoever calls them. plpgsql keeps each
-- plan for the session and plan_cache_mode pins the generic one: every probe is written to be an index or TID scan
-- whatever the parameters and the table's size, and a custom plan would plan the claim's CTEs at every claim.
-- The audit rows name session_user: the worker's own role, not the owner these functions run as.

-- The retry rule, the one place SQL says it: attempt counts claims, and a run gets at most 1 + max_retries.
-- Inlined where it is used (no SET clause, which would stop that): it names nothing but pg_catalog's operators.
CREATE FUNCTION diagnosis._attempts_spent(attempt int, max_retries int) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT attempt OPERATOR(pg_catalog.>=) (1 OPERATOR(pg_catalog.+) max_retries) $$;
COMMENT ON FUNCTION diagnosis._attempts_spent(int, int) IS
    'The retry rule: true when a run has had all its 1 + max_retries attempts.';

-- The result schemas the worker compiles (at start, at reload, and when a claim meets an unknown version).
CREATE FUNCTION diagnosis._result_schemas() RETURNS TABLE (version text, schema jsonb)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.version, s.schema FROM diagnosis.result_schemas s
$$;
COMMENT ON FUNCTION diagnosis._result_schemas() IS 'The worker''s read of diagnosis.result_schemas.';

-- The claim takes turns between organizations: a backlog of one organization never delays another's due run by
-- more than one claim. It walks the distinct (organization, priority) pairs that have queued runs (a recursive
-- CTE, each step one probe of runs_claim_idx), takes each pair's due runs in run_after order from the same index
-- (so a million runs scheduled for later cost nothing), gives each organization an equal share of the free slots
-- (less what diagnosis.max_inflight_per_organization leaves it), and picks round by round: every organization's
-- best run, then every organization's second best, and so on. The picked rows are updated by ctid (a TID scan
-- whatever the statistics say): they are locked, so their versions cannot move. Rows another transaction holds
-- are skipped (SKIP LOCKED), never waited for.
CREATE FUNCTION diagnosis._claim_runs(p_max_runs int, p_lease_ms bigint, p_worker_pid int,
                                      p_max_inflight_per_organization int, p_worker_token bigint)
    RETURNS TABLE (id uuid, patient_id uuid, attempt int, max_retries int, schema_version text, inputs jsonb,
                   traceparent text, resume_task_id text, organization_id uuid)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE pairs AS (
        (SELECT organization_id, priority FROM diagnosis.runs WHERE status = 'queued'
          ORDER BY organization_id, priority DESC LIMIT 1)
        UNION ALL
        SELECT n.organization_id, n.priority FROM pairs p CROSS JOIN LATERAL (
            (SELECT r.organization_id, r.priority FROM diagnosis.runs r
              WHERE r.status = 'queued' AND r.organization_id = p.organization_id AND r.priority < p.priority
              ORDER BY r.organization_id, r.priority DESC LIMIT 1)
            UNION ALL
            (SELECT r.organization_id, r.priority FROM diagnosis.runs r
              WHERE r.status = 'queued' AND r.organization_id > p.organization_id
              ORDER BY r.organization_id, r.priority DESC LIMIT 1)
            LIMIT 1) n
    ), orgs AS (
        SELECT o.organization_id,
               CASE WHEN p_max_inflight_per_organization > 0
                    THEN greatest(0, p_max_inflight_per_organization
                                     - (SELECT count(*) FROM diagnosis.runs x
                                         WHERE x.status = 'running' AND x.organization_id = o.organization_id))
                    ELSE p_max_runs END AS room
        FROM (SELECT DISTINCT pr.organization_id FROM pairs pr
               CROSS JOIN LATERAL (SELECT 1 FROM diagnosis.runs d WHERE d.status = 'queued'
                                     AND d.organization_id = pr.organization_id AND d.priority = pr.priority
                                     AND d.run_after <= now() ORDER BY d.run_after LIMIT 1) due) o
    ), share AS (
        SELECT greatest(1, ceil(p_max_runs::numeric / greatest(1, count(*))))::int AS per_org
        FROM orgs WHERE room > 0
    ), candidates AS (
        SELECT due.row_id, pr.organization_id, pr.priority, due.run_after, o.room
        FROM pairs pr JOIN orgs o ON o.organization_id = pr.organization_id AND o.room > 0 CROSS JOIN share
        CROSS JOIN LATERAL (SELECT r.ctid AS row_id, r.run_after FROM diagnosis.runs r
                            WHERE r.status = 'queued' AND r.organization_id = pr.organization_id
                              AND r.priority = pr.priority AND r.run_after <= now()
                            ORDER BY r.run_after LIMIT least(share.per_org, o.room)
                            FOR NO KEY UPDATE SKIP LOCKED) due
    ), picked AS (
        SELECT row_id FROM (SELECT row_id, run_after, room,
                                   row_number() OVER (PARTITION BY organization_id
                                                      ORDER BY priority DESC, run_after) AS turn
                            FROM candidates) c
        WHERE turn <= room ORDER BY turn, run_after LIMIT p_max_runs
    ), claimed AS (
        UPDATE diagnosis.runs r SET status = 'running', attempt = r.attempt + 1, started_at = now(),
               lease_expires_at = now() + p_lease_ms * interval '1 millisecond', worker_pid = p_worker_pid,
               worker_token = p_worker_token, progress = NULL, progress_message = NULL, updated_at = now()
        WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM picked))
        RETURNING r.id, r.patient_id, r.organization_id, r.attempt, r.max_retries, r.schema_version, r.inputs,
                  '00-' || replace(r.id::text, '-', '') || '-' || lpad(to_hex(r.attempt), 16, '0') || '-01'
                    AS traceparent,
                  CASE WHEN r.mcp_task_expires_at IS NULL OR r.mcp_task_expires_at > now() THEN r.mcp_task_id END
                    AS resume_task_id
    ), locked AS (
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                         worker_pid, details)
        SELECT c.id, c.organization_id, 'LOCKED', 'queued', 'running', c.attempt, session_user, p_worker_pid,
               jsonb_build_object('traceparent', c.traceparent) FROM claimed c
    )
    SELECT c.id, c.patient_id, c.attempt, c.max_retries, c.schema_version, c.inputs, c.traceparent,
           c.resume_task_id, c.organization_id FROM claimed c;
END;
$$;
COMMENT ON FUNCTION diagnosis._claim_runs(int, bigint, int, int, bigint) IS
    'The worker''s claim: up to p_max_runs due runs, turns between organizations, each LOCKED in the audit log.';

-- The earliest run_after of a queued run (NULL: none): the first entry of each pair in runs_claim_idx.
CREATE FUNCTION diagnosis._next_due() RETURNS timestamptz
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_next timestamptz;
BEGIN
    WITH RECURSIVE pairs AS (
        (SELECT organization_id, priority FROM diagnosis.runs WHERE status = 'queued'
          ORDER BY organization_id, priority DESC LIMIT 1)
        UNION ALL
        SELECT n.organization_id, n.priority FROM pairs p CROSS JOIN LATERAL (
            (SELECT r.organization_id, r.priority FROM diagnosis.runs r
              WHERE r.status = 'queued' AND r.organization_id = p.organization_id AND r.priority < p.priority
              ORDER BY r.organization_id, r.priority DESC LIMIT 1)
            UNION ALL
            (SELECT r.organization_id, r.priority FROM diagnosis.runs r
              WHERE r.status = 'queued' AND r.organization_id > p.organization_id
              ORDER BY r.organization_id, r.priority DESC LIMIT 1)
            LIMIT 1) n
    )
    SELECT min(f.run_after) INTO v_next FROM pairs p
      CROSS JOIN LATERAL (SELECT r.run_after FROM diagnosis.runs r
                           WHERE r.status = 'queued' AND r.organization_id = p.organization_id
                             AND r.priority = p.priority ORDER BY r.run_after LIMIT 1) f;
    RETURN v_next;
END;
$$;
COMMENT ON FUNCTION diagnosis._next_due() IS 'The earliest run_after of a queued run, or NULL when none is queued.';

-- What the worker hands finalize for one finished call (worker_store.cpp fills one per run, field by field).
CREATE TYPE diagnosis.finished_run AS (
    id                      uuid,
    attempt                 int,     -- the attempt the call belonged to: a later claim's row is not touched
    outcome                 text,    -- completed, failed, or queued (a retry)
    error_code              text,
    error_message           text,
    error_details           jsonb,
    context_pack            jsonb,
    mcp_response            jsonb,   -- NULL when no answer arrived
    diagnosis               jsonb,   -- the validated result of a completed run
    processing_ms           int,
    mcp_run_id              text,
    retry_delay_ms          bigint,  -- queued: how long to wait
    refund_attempt          boolean, -- queued for a cause not the run's own: the attempt is given back
    task_lost               boolean, -- the server no longer knows the run's task: forget it
    ignored_server_requests int      -- server-to-client requests of this call beyond what is answered
);
COMMENT ON TYPE diagnosis.finished_run IS 'Internal: one finished call, as the worker hands it to diagnosis._finalize_runs.';

-- One statement finalizes a batch. Rows another transaction holds locked (a cancel_diagnosis still open) are
-- skipped, never waited for, and come back in `deferred` to be tried again; a run whose cancel was requested ends
-- cancelled whatever the call's outcome (an answer that still arrived is kept as its mcp_response only). A retry
-- whose attempts are spent fails instead (the retry rule, diagnosis._attempts_spent). The locking and updating
-- joins use `slim`, the input without its three documents: the executor copies every joined row whole (for
-- rechecks under concurrent updates), and copying the documents cost more than writing them. Each run is looked up
-- by its id alone (LIMIT 1 keeps the status test outside the lookup): with `status = 'running'` inside, a plan made
-- on a small table probed runs_running_idx, which holds an entry for every run that ever ran until vacuum. A
-- confidence_score is stored in the real column only when it is a number between 0 and 1 (a value below real's
-- range is stored as 0): a schema that allows 1e300, or an answer of 1e-50, never fails the storage.
CREATE FUNCTION diagnosis._finalize_runs(p_runs diagnosis.finished_run[], p_min_confidence float8, p_worker_pid int,
                                         OUT terminal int, OUT deferred uuid[])
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    WITH input AS (
        SELECT * FROM unnest(p_runs)
    ), slim AS MATERIALIZED (
        SELECT i.id, i.attempt, i.outcome, i.error_code, i.error_message, i.error_details, i.processing_ms,
               i.mcp_run_id, i.retry_delay_ms, i.refund_attempt, i.task_lost, i.ignored_server_requests,
               i.mcp_response IS NOT NULL AS answered
        FROM input i
    ), target AS (
        SELECT r.id, r.row_id, r.cancel_requested_at, r.cancel_requested_by,
               CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled'
                    WHEN i.outcome = 'queued' AND NOT i.refund_attempt
                         AND diagnosis._attempts_spent(r.attempt, r.max_retries) THEN 'failed'
                    ELSE i.outcome END AS outcome
        FROM slim i CROSS JOIN LATERAL (SELECT r.id, r.ctid AS row_id, r.status, r.attempt, r.max_retries,
                                               r.cancel_requested_at, r.cancel_requested_by
                                        FROM diagnosis.runs r WHERE r.id = i.id LIMIT 1
                                        FOR NO KEY UPDATE SKIP LOCKED) r
        WHERE r.status = 'running' AND r.attempt = i.attempt
    ), upd AS (
        UPDATE diagnosis.runs r SET
            status = t.outcome,
            attempt = CASE WHEN t.outcome = 'queued' AND i.refund_attempt THEN r.attempt - 1 ELSE r.attempt END,
            completed_at = CASE WHEN t.outcome = 'queued' THEN NULL ELSE now() END,
            run_after = CASE WHEN t.outcome = 'queued' THEN now() + i.retry_delay_ms * interval '1 millisecond'
                             ELSE r.run_after END,
            worker_pid = CASE WHEN t.outcome = 'queued' THEN NULL ELSE r.worker_pid END,
            worker_token = CASE WHEN t.outcome = 'queued' THEN NULL ELSE r.worker_token END,
            lease_expires_at = NULL,
            error_code = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_code END,
            error_message = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_message END,
            error_details = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_details END,
            mcp_run_id = coalesce(i.mcp_run_id, r.mcp_run_id),
            mcp_task_id = CASE WHEN i.task_lost THEN NULL ELSE r.mcp_task_id END,
            mcp_task_expires_at = CASE WHEN i.task_lost THEN NULL ELSE r.mcp_task_expires_at END,
            processing_time_ms = i.processing_ms,
            progress = CASE WHEN t.outcome = 'completed' THEN 1 ELSE r.progress END,
            ignored_server_requests = coalesce(r.ignored_server_requests, 0) + coalesce(i.ignored_server_requests, 0),
            updated_at = now()
        FROM slim i JOIN target t ON t.id = i.id
        WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM target)) AND r.id = t.id
        RETURNING r.id, r.patient_id, r.organization_id, i.attempt, t.outcome, i.error_code, i.retry_delay_ms,
                  i.refund_attempt, i.answered, t.cancel_requested_at, t.cancel_requested_by
    ), art AS (
        INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data,
               content_sha256, risk_level, confidence_score, primary_findings, recommendations_count,
               needs_review, sequence_order)
        SELECT u.id, u.patient_id, u.organization_id, a.artifact_type, a.data,
               encode(sha256(convert_to(a.data::text, 'UTF8')), 'hex'),
               CASE WHEN a.seq = 3 THEN a.data->>'risk_level' END,
               CASE WHEN s.score BETWEEN 0 AND 1 THEN (CASE WHEN s.score < 1e-30 THEN 0 ELSE s.score END)::real END,
               CASE WHEN a.seq = 3 THEN ARRAY(SELECT jsonb_array_elements_text(a.data->'primary_findings')) END,
               CASE WHEN a.seq = 3 THEN jsonb_array_length(a.data->'recommendations') END,
               CASE WHEN a.seq = 3 THEN s.score < p_min_confidence::numeric END,
               a.seq
        FROM upd u JOIN input i ON i.id = u.id
             CROSS JOIN LATERAL (VALUES ('context_pack', i.context_pack, 1), ('mcp_response', i.mcp_response, 2),
                                        ('diagnosis_json', i.diagnosis, 3)) AS a(artifact_type, data, seq)
             CROSS JOIN LATERAL (SELECT CASE WHEN a.seq = 3 AND jsonb_typeof(a.data->'confidence_score') = 'number'
                                             THEN (a.data->'confidence_score')::numeric END AS score) s
        WHERE u.outcome <> 'queued' AND a.data IS NOT NULL AND NOT (u.outcome = 'cancelled' AND a.seq = 3)
    ), aud AS (
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                         worker_pid, details)
        SELECT u.id, u.organization_id,
               CASE u.outcome WHEN 'completed' THEN 'COMPLETED' WHEN 'failed' THEN 'FAILED'
                              WHEN 'cancelled' THEN 'CANCELLED' ELSE 'RETRY_SCHEDULED' END,
               'running', u.outcome, u.attempt,
               CASE WHEN u.outcome = 'cancelled' THEN u.cancel_requested_by ELSE session_user END, p_worker_pid,
               jsonb_strip_nulls(jsonb_build_object(
                   'error_code', CASE WHEN u.outcome <> 'cancelled' THEN u.error_code END,
                   'retry_delay_ms', CASE WHEN u.outcome = 'queued' THEN u.retry_delay_ms END,
                   'attempt_kept', CASE WHEN u.outcome = 'queued' AND u.refund_attempt THEN true END,
                   'cancel_requested_at', u.cancel_requested_at,
                   'answer_arrived', CASE WHEN u.outcome = 'cancelled' THEN u.answered END))
        FROM upd u
    )
    SELECT (SELECT count(*) FROM upd WHERE outcome <> 'queued'),
           (SELECT array_agg(i.id) FROM slim i
             WHERE i.id NOT IN (SELECT id FROM target)
               AND EXISTS (SELECT 1 FROM (SELECT r.status, r.attempt FROM diagnosis.runs r WHERE r.id = i.id LIMIT 1) r
                            WHERE r.status = 'running' AND r.attempt = i.attempt))
      INTO terminal, deferred;
END;
$$;
COMMENT ON FUNCTION diagnosis._finalize_runs(diagnosis.finished_run[], float8, int) IS
    'The worker''s finalize: status, artifacts and audit row of each finished call; locked rows come back deferred.';

-- Runs held by a worker that is gone (its token is not one of p_live_tokens), or whose lease expired, are put
-- back (RECOVERED) or, with their attempts spent, failed; a run whose cancel was requested is cancelled instead.
-- A hand-back (p_hand_back: this worker's own runs at a clean shutdown) gives the attempt back: the run did not
-- fail. running_left says whether any run is still running anywhere (the worker then looks again later).
CREATE FUNCTION diagnosis._recover_runs(p_live_tokens bigint[], p_own_token bigint, p_hand_back boolean,
                                        p_worker_pid int, OUT moved int, OUT running_left boolean)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH orphans AS (
        SELECT r.id, r.worker_pid AS old_pid, r.attempt AS old_attempt, r.cancel_requested_by,
               CASE WHEN p_hand_back THEN 'worker shut down'
                    WHEN r.worker_token = ANY (p_live_tokens) THEN 'lease expired' ELSE 'worker exited' END AS reason,
               CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled'
                    WHEN NOT p_hand_back AND diagnosis._attempts_spent(r.attempt, r.max_retries) THEN 'failed'
                    ELSE 'queued' END AS new_status
        FROM diagnosis.runs r
        WHERE r.status = 'running'
          AND CASE WHEN p_hand_back THEN r.worker_token = p_own_token
                   ELSE r.worker_token IS NULL OR r.worker_token <> ALL (p_live_tokens)
                        OR r.lease_expires_at < now() END
        FOR NO KEY UPDATE SKIP LOCKED
    ), put_back AS (
        UPDATE diagnosis.runs r SET
            status = o.new_status,
            attempt = CASE WHEN p_hand_back AND o.new_status = 'queued' THEN r.attempt - 1 ELSE r.attempt END,
            completed_at = CASE WHEN o.new_status <> 'queued' THEN now() END,
            error_code = CASE WHEN o.new_status = 'failed' THEN 'UNKNOWN_ERROR' ELSE r.error_code END,
            error_message = CASE WHEN o.new_status = 'failed'
                            THEN 'the run was interrupted (' || o.reason || ') and its attempts are spent'
                            ELSE r.error_message END,
            run_after = now(), worker_pid = NULL, worker_token = NULL, lease_expires_at = NULL, updated_at = now()
        FROM orphans o WHERE r.id = o.id
        RETURNING r.id, r.organization_id, o.old_attempt, o.new_status, o.old_pid, o.reason, o.cancel_requested_by
    ), audit AS (
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,
                                         worker_pid, details)
        SELECT m.id, m.organization_id,
               CASE m.new_status WHEN 'failed' THEN 'FAILED' WHEN 'cancelled' THEN 'CANCELLED' ELSE 'RECOVERED' END,
               'running', m.new_status, m.old_attempt,
               CASE WHEN m.new_status = 'cancelled' THEN m.cancel_requested_by ELSE session_user END, p_worker_pid,
               jsonb_build_object('reason', m.reason, 'previous_worker_pid', m.old_pid,
                                  'attempt_kept', p_hand_back AND m.new_status = 'queued')
        FROM put_back m
        RETURNING 1
    )
    SELECT count(*) INTO moved FROM audit;
    running_left := EXISTS (SELECT 1 FROM diagnosis.runs WHERE status = 'running');
END;
$$;
COMMENT ON FUNCTION diagnosis._recover_runs(bigint[], bigint, boolean, int) IS
    'The worker''s recovery: runs of workers that are gone or whose lease expired go back, fail or are cancelled.';

-- Commits the tasks the server created, in the runs' own rows, so a recovered run polls its task instead of
-- calling the tool again. Guarded like finalize (running, same attempt); a row another transaction holds locked
-- is skipped and its id returned, to be written on a later pass.
CREATE FUNCTION diagnosis._record_tasks(p_ids uuid[], p_attempts int[], p_task_ids text[], p_ttl_ms bigint[])
    RETURNS uuid[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_locked uuid[];
BEGIN
    WITH t AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_task_ids, p_ttl_ms) AS t(id, attempt, task_id, ttl_ms)
    ), target AS (
        SELECT r.id FROM diagnosis.runs r JOIN t ON r.id = t.id AND r.status = 'running' AND r.attempt = t.attempt
        FOR NO KEY UPDATE OF r SKIP LOCKED
    ), upd AS (
        UPDATE diagnosis.runs r SET mcp_task_id = t.task_id,
               mcp_task_expires_at = CASE WHEN t.ttl_ms >= 0 THEN now() + t.ttl_ms * interval '1 millisecond' END
        FROM t JOIN target USING (id) WHERE r.id = t.id RETURNING r.id
    )
    SELECT array_agg(t.id) INTO v_locked
      FROM t JOIN diagnosis.runs r ON r.id = t.id AND r.status = 'running' AND r.attempt = t.attempt
     WHERE t.id NOT IN (SELECT id FROM target);
    RETURN v_locked;
END;
$$;
COMMENT ON FUNCTION diagnosis._record_tasks(uuid[], int[], text[], bigint[]) IS
    'The worker''s record of MCP tasks in flight; returns the ids whose rows were locked (try again later).';

-- Best effort: a row another transaction holds locked skips this report (a later one supersedes it); progress
-- never goes backwards.
CREATE FUNCTION diagnosis._write_progress(p_ids uuid[], p_attempts int[], p_fractions real[], p_messages text[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH i AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_fractions, p_messages) AS i(id, attempt, fraction, message)
    ), target AS (
        SELECT r.id, r.row_id FROM i CROSS JOIN LATERAL (
            SELECT r.id, r.ctid AS row_id, r.status, r.attempt, r.progress FROM diagnosis.runs r
             WHERE r.id = i.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED) r
        WHERE r.status = 'running' AND r.attempt = i.attempt AND (r.progress IS NULL OR r.progress <= i.fraction)
    )
    UPDATE diagnosis.runs r SET progress = i.fraction, progress_message = i.message, updated_at = now()
      FROM i JOIN target t ON t.id = i.id
     WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM target)) AND r.id = t.id;
END;
$$;
COMMENT ON FUNCTION diagnosis._write_progress(uuid[], int[], real[], text[]) IS
    'The worker''s progress reports of runs in flight.';

-- This worker's runs whose cancel was requested: their calls are stopped (each once; the outcome follows).
CREATE FUNCTION diagnosis._runs_to_cancel(p_worker_token bigint) RETURNS TABLE (id uuid, attempt int)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.id, r.attempt FROM diagnosis.runs r
     WHERE r.status = 'running' AND r.worker_token = p_worker_token AND r.cancel_requested_at IS NOT NULL
$$;
COMMENT ON FUNCTION diagnosis._runs_to_cancel(bigint) IS 'This worker''s running runs whose cancel was requested.';

REVOKE ALL ON FUNCTION diagnosis._result_schemas() FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._claim_runs(int, bigint, int, int, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._next_due() FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._finalize_runs(diagnosis.finished_run[], float8, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._recover_runs(bigint[], bigint, boolean, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._record_tasks(uuid[], int[], text[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._write_progress(uuid[], int[], real[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._runs_to_cancel(bigint) FROM PUBLIC;

-- ===========================================================================================================
-- Who sees what. The public helpers are C trampolines (pgdiag_call_as_owner): they pass the calling role to the
-- _impl function and run it as the schema owner, so policies can read members without recursing into RLS.
-- ===========================================================================================================

-- The helpers on enqueue's path are C (_is_superuser: the syscache answers it) or plpgsql, not sql: a sql function
-- with a SET clause is never inlined, and is parsed and planned again on every call (about half of enqueue's CPU);
-- plpgsql keeps its plans for the session.
CREATE FUNCTION diagnosis._is_superuser(role name) RETURNS boolean
    LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'pgdiag_is_superuser';

-- Positional parameters: in SQL functions a column (members.member_role) would shadow a parameter of that name.
CREATE FUNCTION diagnosis._member_orgs_impl(caller name, wanted_role text) RETURNS uuid[]
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(m.organization_id), '{}')
    FROM diagnosis.members m
    WHERE m.role_name = $1 AND ($2 IS NULL OR m.member_role = $2)
$$;

CREATE FUNCTION diagnosis._member_orgs(member_role text DEFAULT NULL) RETURNS uuid[]
    LANGUAGE C STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis._member_orgs(text) IS
    'Organizations where the calling role is a member (with that member_role when given); for row-level security.';

CREATE FUNCTION diagnosis._assigned_patients_impl(caller name) RETURNS uuid[]
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(a.patient_id), '{}')
    FROM diagnosis.patient_assignments a
    JOIN diagnosis.patients p ON p.id = a.patient_id
    JOIN diagnosis.members m ON m.role_name = a.role_name AND m.organization_id = p.organization_id
                            AND m.member_role = 'clinician'
    WHERE a.role_name = caller
$$;

CREATE FUNCTION diagnosis._assigned_patients() RETURNS uuid[]
    LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis._assigned_patients() IS
    'Patients assigned to the calling role as a clinician of their organization; for row-level security.';

-- The same rule as the policies on patients (admin of the patient's organization, or a clinician member of it
-- assigned to the patient), for a role other than current_user, as index lookups for one patient (enqueue's hot path).
CREATE FUNCTION diagnosis._role_sees_patient(role name, patient uuid) RETURNS boolean
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
-- The SQL API
-- ===========================================================================================================

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

CREATE FUNCTION diagnosis._cancel_diagnosis_impl(caller name, p_run_id uuid) RETURNS boolean
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

CREATE FUNCTION diagnosis.cancel_diagnosis(run_id uuid) RETURNS boolean
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.cancel_diagnosis(uuid) IS
    'Cancels a queued run at once, or asks the worker to stop a running one (requester or organization admin); '
    'false when the run is already terminal.';

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

CREATE FUNCTION diagnosis._purge_runs_impl(caller name, p_older_than interval) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_super  boolean := diagnosis._is_superuser(caller);
    v_orgs   uuid[];
    v_total  bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_super THEN
        SELECT coalesce(array_agg(id), '{}') INTO v_orgs FROM diagnosis.organizations;
    ELSE
        v_orgs := diagnosis._member_orgs_impl(caller, 'admin');
        IF cardinality(v_orgs) = 0 THEN
            RAISE EXCEPTION 'permission denied to purge runs'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only superusers and organization admins may purge runs.';
        END IF;
    END IF;

    PERFORM diagnosis._begin_purge();
    WITH deleted AS (
        DELETE FROM diagnosis.runs
        WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at <= now() - p_older_than
          AND organization_id = ANY (v_orgs)
        RETURNING organization_id
    ), per_org AS (
        SELECT o AS organization_id, (SELECT count(*) FROM deleted d WHERE d.organization_id = o) AS runs
        FROM unnest(v_orgs) o
    ), audit AS (
        INSERT INTO diagnosis.audit_log (run_id, organization_id, event, actor, details)
        SELECT NULL, organization_id, 'PURGED', caller,
               jsonb_build_object('runs', runs, 'older_than', p_older_than::text)
        FROM per_org
    )
    SELECT coalesce(sum(runs), 0) INTO v_total FROM per_org;
    RETURN v_total;
END;
$$;

CREATE FUNCTION diagnosis.purge_runs(older_than interval) RETURNS bigint
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.purge_runs(interval) IS
    'Retention: deletes terminal runs completed longer ago than older_than, with their artifacts and audit rows, '
    'and writes one PURGED audit row per organization. Superusers purge everywhere, admins their organizations.';

CREATE FUNCTION diagnosis.wait_for_run(run_id uuid, timeout interval DEFAULT '30 seconds') RETURNS text
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_wait_for_run';
COMMENT ON FUNCTION diagnosis.wait_for_run(uuid, interval) IS
    'Sleeps until the run is terminal or the timeout passes (no busy polling); returns its status.';

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

-- The size of a value once decompressed, from its header, without detoasting it (pg_column_size gives the stored,
-- compressed size): what the default pack adds up before it copies a patient's data anywhere.
CREATE FUNCTION diagnosis._raw_size(jsonb) RETURNS bigint
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'pgdiag_raw_size';
CREATE FUNCTION diagnosis._raw_size(text) RETURNS bigint
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'pgdiag_raw_size';
COMMENT ON FUNCTION diagnosis._raw_size(jsonb) IS 'Internal: the decompressed size of a value, read from its header.';
COMMENT ON FUNCTION diagnosis._raw_size(text) IS 'Internal: the decompressed size of a value, read from its header.';

-- One statement for many patients (the worker builds a claim's packs with it: one call, not one per run); the
-- n-th row is the n-th patient's pack, NULL for a patient that does not exist (or that the caller cannot see).
-- A pack whose parts (the patient's data and name, its observations' data, codes and units) already add up to more
-- than diagnosis.max_context_pack_bytes is not built: its row carries that sum in oversized_bytes instead, so a
-- tenant's 100 MB of patient data is never copied, and costs a claim no more than reading the sizes.
CREATE FUNCTION diagnosis._context_packs(patient_ids uuid[])
    RETURNS TABLE (ord bigint, pack jsonb, oversized_bytes bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- NULL without the library loaded: its default.
    v_max bigint := coalesce(pg_size_bytes(current_setting('diagnosis.max_context_pack_bytes', true)), 1048576);
BEGIN
    -- plpgsql keeps this plan for the session (a sql function with a SET clause is planned at every call); the
    -- lateral probe keeps the patient lookup an index probe whatever the statistics say.
    RETURN QUERY
    SELECT x.ord,
           CASE WHEN p.id IS NOT NULL AND s.bytes <= v_max THEN jsonb_build_object(
               'schema', 'pg_diagnosis.context_pack.v1',
               'patient', jsonb_build_object('id', p.id, 'organization_id', p.organization_id,
                                             'display_name', p.display_name, 'data', p.data),
               'observations', coalesce((
                   SELECT jsonb_agg(jsonb_build_object('code', o.code, 'value', o.value, 'unit', o.unit,
                                                       'observed_at', o.observed_at, 'data', o.data)
                                    ORDER BY o.observed_at DESC, o.id DESC)
                   FROM (SELECT * FROM diagnosis.observations ob
                         WHERE ob.patient_id = p.id
                         ORDER BY ob.observed_at DESC, ob.id DESC LIMIT 500) o), '[]'::jsonb),
               'inputs', '{}'::jsonb) END,
           CASE WHEN s.bytes > v_max THEN s.bytes END
    FROM unnest(patient_ids) WITH ORDINALITY AS x(patient_id, ord)
    LEFT JOIN LATERAL (SELECT * FROM diagnosis.patients pt WHERE pt.id = x.patient_id LIMIT 1) p ON true
    LEFT JOIN LATERAL (
        SELECT coalesce(diagnosis._raw_size(p.data), 0) + coalesce(diagnosis._raw_size(p.display_name), 0)
               + coalesce(sum(coalesce(diagnosis._raw_size(ob.data), 0) + coalesce(diagnosis._raw_size(ob.code), 0)
                              + coalesce(diagnosis._raw_size(ob.unit), 0)), 0)::bigint AS bytes
        FROM (SELECT ob.data, ob.code, ob.unit FROM diagnosis.observations ob
              WHERE ob.patient_id = p.id
              ORDER BY ob.observed_at DESC, ob.id DESC LIMIT 500) ob) s ON true
    ORDER BY x.ord;
END;
$$;
COMMENT ON FUNCTION diagnosis._context_packs(uuid[]) IS
    'The default context packs of many patients in one statement (diagnosis.build_context_pack for each).';

CREATE FUNCTION diagnosis.build_context_pack(patient_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pack      jsonb;
    v_oversized bigint;
BEGIN
    IF build_context_pack.patient_id IS NULL THEN
        RAISE EXCEPTION 'patient_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.pack, c.oversized_bytes INTO v_pack, v_oversized
    FROM diagnosis._context_packs(ARRAY[build_context_pack.patient_id]) c;
    IF v_oversized IS NOT NULL THEN
        RAISE EXCEPTION 'the context pack of patient "%" is at least % bytes, more than diagnosis.max_context_pack_bytes (%)',
            build_context_pack.patient_id, v_oversized,
            coalesce(pg_size_bytes(current_setting('diagnosis.max_context_pack_bytes', true)), 1048576)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF v_pack IS NULL THEN
        RAISE EXCEPTION 'patient "%" does not exist', build_context_pack.patient_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_pack;
END;
$$;
COMMENT ON FUNCTION diagnosis.build_context_pack(uuid) IS
    'The default context pack: the patient, their newest 500 observations, and (filled in by the worker) the run''s inputs.';

-- ===========================================================================================================
-- Views
-- ===========================================================================================================

CREATE VIEW diagnosis.queue_stats WITH (security_invoker = true) AS
SELECT count(*) FILTER (WHERE status = 'queued')     AS queued,
       count(*) FILTER (WHERE status = 'running')    AS running,
       count(*) FILTER (WHERE status = 'completed')  AS completed,
       count(*) FILTER (WHERE status = 'failed')     AS failed,
       count(*) FILTER (WHERE status = 'cancelled')  AS cancelled,
       now() - min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_age,
       count(*) FILTER (WHERE status = 'completed' AND completed_at > now() - interval '1 minute') AS completed_last_minute,
       count(*) FILTER (WHERE status = 'failed' AND completed_at > now() - interval '1 minute')    AS failed_last_minute
FROM diagnosis.runs;
COMMENT ON VIEW diagnosis.queue_stats IS 'Counts of the runs the caller may see, by status.';

CREATE VIEW diagnosis.latest_diagnosis WITH (security_invoker = true) AS
SELECT DISTINCT ON (a.patient_id)
       a.patient_id, p.display_name, a.organization_id, a.run_id, a.risk_level, a.confidence_score, a.needs_review,
       a.primary_findings, a.recommendations_count, a.artifact_data ->> 'summary' AS summary,
       a.created_at AS diagnosed_at
FROM diagnosis.artifacts a
JOIN diagnosis.patients p ON p.id = a.patient_id
WHERE a.artifact_type = 'diagnosis_json'
ORDER BY a.patient_id, a.created_at DESC, a.id;
COMMENT ON VIEW diagnosis.latest_diagnosis IS 'The newest diagnosis of each patient the caller may see.';

-- Urgency first (0.2): critical, high, medium, then the low-risk diagnoses that need review for low confidence;
-- newest first within each. urgency (1-4) lets a caller that filters or pages the view keep that order.
CREATE VIEW diagnosis.review_queue WITH (security_invoker = true) AS
SELECT l.*,
       CASE l.risk_level WHEN 'critical' THEN 1 WHEN 'high' THEN 2 WHEN 'medium' THEN 3 ELSE 4 END AS urgency
FROM diagnosis.latest_diagnosis l
WHERE (l.needs_review OR l.risk_level IN ('medium', 'high', 'critical'))
  AND NOT EXISTS (SELECT 1 FROM diagnosis.acknowledgements k WHERE k.run_id = l.run_id)
ORDER BY urgency, l.diagnosed_at DESC, l.patient_id;
COMMENT ON VIEW diagnosis.review_queue IS
    'Latest diagnoses that need a clinician and nobody has acknowledged yet, most urgent first: critical, high, '
    'medium risk, then low confidence (needs_review); newest first within each (ORDER BY urgency, diagnosed_at DESC).';

-- ===========================================================================================================
-- Row-level security (SPEC section 8)
-- ===========================================================================================================

ALTER TABLE diagnosis.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.patient_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.observations ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.artifacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE diagnosis.acknowledgements ENABLE ROW LEVEL SECURITY;

CREATE POLICY organizations_member_read ON diagnosis.organizations FOR SELECT
    USING (id IN (SELECT unnest(diagnosis._member_orgs())));

CREATE POLICY members_read ON diagnosis.members FOR SELECT
    USING (role_name = current_user OR organization_id IN (SELECT unnest(diagnosis._member_orgs('admin'))));
CREATE POLICY members_admin_write ON diagnosis.members FOR ALL
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin'))))
    WITH CHECK (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin'))));

CREATE POLICY patients_read ON diagnosis.patients FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR id IN (SELECT unnest(diagnosis._assigned_patients())));
CREATE POLICY patients_admin_write ON diagnosis.patients FOR ALL
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin'))))
    WITH CHECK (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin'))));

CREATE POLICY patient_assignments_read ON diagnosis.patient_assignments FOR SELECT
    USING (role_name = current_user
           OR patient_id IN (SELECT p.id FROM diagnosis.patients p
                             WHERE p.organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))));
CREATE POLICY patient_assignments_admin_write ON diagnosis.patient_assignments FOR ALL
    USING (patient_id IN (SELECT p.id FROM diagnosis.patients p
                          WHERE p.organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))))
    WITH CHECK (patient_id IN (SELECT p.id FROM diagnosis.patients p
                               WHERE p.organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))));

CREATE POLICY observations_read ON diagnosis.observations FOR SELECT
    USING (patient_id IN (SELECT p.id FROM diagnosis.patients p));
CREATE POLICY observations_admin_write ON diagnosis.observations FOR ALL
    USING (patient_id IN (SELECT p.id FROM diagnosis.patients p
                          WHERE p.organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))))
    WITH CHECK (patient_id IN (SELECT p.id FROM diagnosis.patients p
                               WHERE p.organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))));

CREATE POLICY runs_read ON diagnosis.runs FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR patient_id IN (SELECT unnest(diagnosis._assigned_patients())));
CREATE POLICY artifacts_read ON diagnosis.artifacts FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR patient_id IN (SELECT unnest(diagnosis._assigned_patients())));
CREATE POLICY audit_log_read ON diagnosis.audit_log FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR run_id IN (SELECT r.id FROM diagnosis.runs r
                         WHERE r.patient_id IN (SELECT unnest(diagnosis._assigned_patients()))));
CREATE POLICY acknowledgements_read ON diagnosis.acknowledgements FOR SELECT
    USING (organization_id IN (SELECT unnest(diagnosis._member_orgs('admin')))
           OR run_id IN (SELECT r.id FROM diagnosis.runs r
                         WHERE r.patient_id IN (SELECT unnest(diagnosis._assigned_patients()))));

-- ===========================================================================================================
-- Privileges: read for everyone (row-level security decides the rows), inserts only where a policy allows them,
-- nothing on the internals. No UPDATE, DELETE or TRUNCATE for anyone but the worker's role (next section).
-- ===========================================================================================================

GRANT USAGE ON SCHEMA diagnosis TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA diagnosis TO PUBLIC;
-- Without the id column: an id of the caller's choosing would answer whether it exists in another organization.
GRANT INSERT (organization_id, display_name, data) ON diagnosis.patients TO PUBLIC;
GRANT INSERT (patient_id, code, value, unit, observed_at, data) ON diagnosis.observations TO PUBLIC;
GRANT INSERT ON diagnosis.patient_assignments, diagnosis.members TO PUBLIC;

REVOKE ALL ON FUNCTION diagnosis._wake_at_commit() FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._begin_purge() FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._member_orgs_impl(name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._assigned_patients_impl(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._role_sees_patient(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._is_superuser(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._enqueue_diagnosis_impl(name, uuid, jsonb, text, int, timestamptz, int, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._cancel_diagnosis_impl(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._purge_runs_impl(name, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._schema_version(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._rerun_diagnosis_impl(name, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._acknowledge_diagnosis_impl(name, uuid, text) FROM PUBLIC;

-- ===========================================================================================================
-- The worker's role and the tenants' writes (0.3, issue 25): the worker is not a superuser, and no tenant can
-- lock another out.
-- ===========================================================================================================

-- The worker's role (SPEC section 5): the workers act as diagnosis.worker_role, by default this NOLOGIN role, which
-- is neither a superuser nor a member of one. A role is a cluster object: it outlives DROP EXTENSION, is shared by
-- every database of the cluster and is not in a database's dump (README, Backup and restore).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'diagnosis_worker') THEN
        CREATE ROLE diagnosis_worker NOLOGIN;
    END IF;
END;
$$;

-- What the worker's statements need and nothing more: EXECUTE on the run's lifecycle functions (section "One home
-- for a run's lifecycle"), which alone touch runs, artifacts and the audit log, as their owner. The role holds no
-- table privilege and needs no policy of its own; it reads no tenant's table: context packs are built as the pack
-- function's owner, the FHIR source is read as its owner. USAGE on the schema, SELECT on its tables and EXECUTE on
-- the public functions come with PUBLIC's.
GRANT EXECUTE ON FUNCTION diagnosis._result_schemas(), diagnosis._claim_runs(int, bigint, int, int, bigint),
    diagnosis._next_due(), diagnosis._finalize_runs(diagnosis.finished_run[], float8, int),
    diagnosis._recover_runs(bigint[], bigint, boolean, int), diagnosis._record_tasks(uuid[], int[], text[], bigint[]),
    diagnosis._write_progress(uuid[], int[], real[], text[]), diagnosis._runs_to_cancel(bigint) TO diagnosis_worker;

-- No table lock for tenants (SPEC section 2): LOCK TABLE checks table privileges, not row-level security, and
-- UPDATE, DELETE or TRUNCATE allow every lock mode; so applications only INSERT (ROW EXCLUSIVE blocks no reader
-- and no other writer), and change or remove rows through these functions, with the checks of the policies.

-- The access check of the functions below, the rule of the *_admin_write policies: a superuser, or an admin of
-- the organization. A row the caller may not see is reported exactly like an unknown one.
CREATE FUNCTION diagnosis._require_admin(caller name, organization uuid) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (diagnosis._is_superuser(caller) OR organization = ANY (diagnosis._member_orgs_impl(caller, 'admin'))) THEN
        RAISE EXCEPTION 'only an admin of the organization may change its patients, observations and members'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END;
$$;

-- The organization of a patient the caller may see; an unknown or invisible patient is 22023, NULL is 22004.
CREATE FUNCTION diagnosis._visible_patient_org(caller name, patient uuid) RETURNS uuid
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_org uuid;
BEGIN
    IF patient IS NULL THEN
        RAISE EXCEPTION 'patient_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT p.organization_id INTO v_org FROM diagnosis.patients p WHERE p.id = patient;
    IF v_org IS NULL OR NOT diagnosis._role_sees_patient(caller, patient) THEN
        RAISE EXCEPTION 'patient "%" does not exist', patient USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_org;
END;
$$;

CREATE FUNCTION diagnosis._update_patient_impl(caller name, p_patient_id uuid, p_display_name text, p_data jsonb)
        RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM diagnosis._require_admin(caller, diagnosis._visible_patient_org(caller, p_patient_id));
    UPDATE diagnosis.patients p
       SET display_name = coalesce(p_display_name, p.display_name), data = coalesce(p_data, p.data)
     WHERE p.id = p_patient_id;
END;
$$;
CREATE FUNCTION diagnosis.update_patient(patient_id uuid, display_name text DEFAULT NULL, data jsonb DEFAULT NULL)
        RETURNS void
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.update_patient(uuid, text, jsonb) IS
    'Changes a patient''s display_name and/or data (NULL keeps the value); for its organization''s admins.';

CREATE FUNCTION diagnosis._delete_patient_impl(caller name, p_patient_id uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM diagnosis._require_admin(caller, diagnosis._visible_patient_org(caller, p_patient_id));
    DELETE FROM diagnosis.patients p WHERE p.id = p_patient_id;
END;
$$;
CREATE FUNCTION diagnosis.delete_patient(patient_id uuid) RETURNS void
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.delete_patient(uuid) IS
    'Removes a patient with their observations and assignments (not one with runs: 23503); for its organization''s admins.';

CREATE FUNCTION diagnosis._remove_assignment_impl(caller name, p_patient_id uuid, p_role_name name) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_role_name IS NULL THEN
        RAISE EXCEPTION 'role_name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM diagnosis._require_admin(caller, diagnosis._visible_patient_org(caller, p_patient_id));
    DELETE FROM diagnosis.patient_assignments a WHERE a.patient_id = p_patient_id AND a.role_name = p_role_name;
    RETURN FOUND;
END;
$$;
CREATE FUNCTION diagnosis.remove_assignment(patient_id uuid, role_name name) RETURNS boolean
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.remove_assignment(uuid, name) IS
    'Unassigns a patient from a clinician (false: was not assigned); for the organization''s admins.';

-- An organization the caller is no member of is reported like an unknown one.
CREATE FUNCTION diagnosis._require_org_admin(caller name, organization uuid) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF organization IS NULL THEN
        RAISE EXCEPTION 'organization_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM diagnosis.organizations o WHERE o.id = organization)
       OR NOT (diagnosis._is_superuser(caller) OR organization = ANY (diagnosis._member_orgs_impl(caller, NULL))) THEN
        RAISE EXCEPTION 'organization "%" does not exist', organization USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM diagnosis._require_admin(caller, organization);
END;
$$;

CREATE FUNCTION diagnosis._update_member_impl(caller name, p_role_name name, p_organization_id uuid,
        p_member_role text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_role_name IS NULL OR p_member_role IS NULL THEN
        RAISE EXCEPTION 'role_name and member_role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_member_role NOT IN ('clinician', 'admin') THEN
        RAISE EXCEPTION 'member_role must be clinician or admin, not "%"', p_member_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM diagnosis._require_org_admin(caller, p_organization_id);
    UPDATE diagnosis.members m SET member_role = p_member_role
     WHERE m.role_name = p_role_name AND m.organization_id = p_organization_id;
    RETURN FOUND;
END;
$$;
CREATE FUNCTION diagnosis.update_member(role_name name, organization_id uuid, member_role text) RETURNS boolean
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.update_member(name, uuid, text) IS
    'Makes a member a clinician or an admin (false: no such member); for the organization''s admins.';

CREATE FUNCTION diagnosis._remove_member_impl(caller name, p_role_name name, p_organization_id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_role_name IS NULL THEN
        RAISE EXCEPTION 'role_name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM diagnosis._require_org_admin(caller, p_organization_id);
    DELETE FROM diagnosis.members m WHERE m.role_name = p_role_name AND m.organization_id = p_organization_id;
    RETURN FOUND;
END;
$$;
CREATE FUNCTION diagnosis.remove_member(role_name name, organization_id uuid) RETURNS boolean
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.remove_member(name, uuid) IS
    'Removes a role from an organization (false: was no member); for the organization''s admins.';

CREATE FUNCTION diagnosis._rename_organization_impl(caller name, p_organization_id uuid, p_name text) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM diagnosis._require_org_admin(caller, p_organization_id);
    UPDATE diagnosis.organizations o SET name = p_name WHERE o.id = p_organization_id;
END;
$$;
CREATE FUNCTION diagnosis.rename_organization(organization_id uuid, name text) RETURNS void
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.rename_organization(uuid, text) IS 'Renames an organization; for its admins.';

-- The patient of an observation the caller may see; an unknown or invisible one is 22023.
CREATE FUNCTION diagnosis._visible_observation_org(caller name, observation bigint) RETURNS uuid
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_patient uuid;
BEGIN
    IF observation IS NULL THEN
        RAISE EXCEPTION 'observation_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT o.patient_id INTO v_patient FROM diagnosis.observations o WHERE o.id = observation;
    IF v_patient IS NULL OR NOT diagnosis._role_sees_patient(caller, v_patient) THEN
        RAISE EXCEPTION 'observation % does not exist', observation USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN diagnosis._visible_patient_org(caller, v_patient);
END;
$$;

CREATE FUNCTION diagnosis._update_observation_impl(caller name, p_observation_id bigint, p_code text, p_value numeric,
        p_unit text, p_observed_at timestamptz, p_data jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM diagnosis._require_admin(caller, diagnosis._visible_observation_org(caller, p_observation_id));
    UPDATE diagnosis.observations o
       SET code = coalesce(p_code, o.code), value = coalesce(p_value, o.value), unit = coalesce(p_unit, o.unit),
           observed_at = coalesce(p_observed_at, o.observed_at), data = coalesce(p_data, o.data)
     WHERE o.id = p_observation_id;
END;
$$;
CREATE FUNCTION diagnosis.update_observation(observation_id bigint, code text DEFAULT NULL, value numeric DEFAULT NULL,
        unit text DEFAULT NULL, observed_at timestamptz DEFAULT NULL, data jsonb DEFAULT NULL) RETURNS void
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.update_observation(bigint, text, numeric, text, timestamptz, jsonb) IS
    'Corrects an observation (NULL keeps a value); for its organization''s admins.';

CREATE FUNCTION diagnosis._delete_observation_impl(caller name, p_observation_id bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM diagnosis._require_admin(caller, diagnosis._visible_observation_org(caller, p_observation_id));
    DELETE FROM diagnosis.observations o WHERE o.id = p_observation_id;
END;
$$;
CREATE FUNCTION diagnosis.delete_observation(observation_id bigint) RETURNS void
    LANGUAGE C VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'pgdiag_call_as_owner';
COMMENT ON FUNCTION diagnosis.delete_observation(bigint) IS 'Removes an observation; for its organization''s admins.';

REVOKE ALL ON FUNCTION diagnosis._require_admin(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._require_org_admin(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._visible_patient_org(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._visible_observation_org(name, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._update_patient_impl(name, uuid, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._delete_patient_impl(name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._remove_assignment_impl(name, uuid, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._update_member_impl(name, name, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._remove_member_impl(name, name, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._rename_organization_impl(name, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._update_observation_impl(name, bigint, text, numeric, text, timestamptz, jsonb)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION diagnosis._delete_observation_impl(name, bigint) FROM PUBLIC;

-- ===========================================================================================================
-- Backup and restore (0.2, issue 14). Every table that holds data is an extension configuration table, so
-- pg_dump writes its rows (and the identity sequences' positions) and pg_restore or psql reload them. pg_dump
-- writes rows as COPY ... FROM stdin: diagnosis._restoring() recognises exactly that (a superuser's top-level
-- COPY into the guarded table) so the insert guards let a restore through and nothing else. This section is
-- the same in sql/pg_diagnosis.sql and pg_diagnosis--0.1.0--0.2.0.sql; a table added later is marked in both.
-- ===========================================================================================================

CREATE FUNCTION diagnosis._restoring(target oid) RETURNS boolean
    LANGUAGE C VOLATILE STRICT AS 'MODULE_PATHNAME', 'pgdiag_restoring';
COMMENT ON FUNCTION diagnosis._restoring(oid) IS
    'True while a superuser''s top-level COPY FROM (pg_restore, or psql reading a dump) loads this table.';

SELECT pg_catalog.pg_extension_config_dump('diagnosis.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.members', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.patients', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.patient_assignments', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.observations', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.observations_id_seq', '');
-- v1 is created by the install script itself; only the versions a superuser added are data.
SELECT pg_catalog.pg_extension_config_dump('diagnosis.result_schemas', $$WHERE version <> 'v1'$$);
SELECT pg_catalog.pg_extension_config_dump('diagnosis.runs', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.artifacts', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.audit_log_id_seq', '');
-- 0.3.0:
SELECT pg_catalog.pg_extension_config_dump('diagnosis.acknowledgements', '');
SELECT pg_catalog.pg_extension_config_dump('diagnosis.acknowledgements_id_seq', '');

REVOKE ALL ON FUNCTION diagnosis._warn_outside_worker_database() FROM PUBLIC;

-- Runs queued in a database the workers do not connect to would never run: say so where it happens.
SELECT diagnosis._warn_outside_worker_database();

-- ===========================================================================================================
-- FHIR (SPEC section 10): context packs from FHIR R4 Observation resources, and each diagnosis back out as a
-- FHIR R4 Observation in UK Core's NEWS2 shape
-- ===========================================================================================================

-- The relation diagnosis.fhir_source names, checked on every call: a schema-qualified table, partitioned table,
-- materialized view or view with a jsonb column "resource". Reading a relation runs code its owner chose (index
-- predicates and expressions, partition keys, extended-statistics expressions, a view's functions), so
-- diagnosis._fhir_source_resources reads it as its owner, never as the caller.
CREATE FUNCTION diagnosis._fhir_source() RETURNS regclass
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_setting  text := nullif(btrim(current_setting('diagnosis.fhir_source', true)), '');
    v_name     text[];
    v_rel      regclass;
    v_kind     "char";
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
    SELECT c.relkind INTO v_kind FROM pg_class c WHERE c.oid = v_rel;
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
    RETURN v_rel;
END;
$$;
COMMENT ON FUNCTION diagnosis._fhir_source() IS
    'The relation diagnosis.fhir_source names, validated (qualified, a table or view with a jsonb column resource).';

-- In C (src/fhir_source.cpp): the read runs as the relation's owner under SECURITY_RESTRICTED_OPERATION, and the
-- caller must be able to read the relation whole itself.
CREATE FUNCTION diagnosis._fhir_source_resources(subject text, max int) RETURNS jsonb
    LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'pgdiag_fhir_source_resources';
COMMENT ON FUNCTION diagnosis._fhir_source_resources(text, int) IS
    'The newest Observation resources of a subject in diagnosis.fhir_source (a jsonb array), read as its owner.';

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
CREATE FUNCTION diagnosis._fhir_observations(resources jsonb) RETURNS jsonb
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
                    -- A bound (">40", "<8") is no reading to score.
                    WHEN v.quantity ? 'comparator' THEN 'value_not_understood'
                    WHEN v.factor IS NULL THEN 'unit_not_understood' END AS problem,
               CASE WHEN v.kind IN ('room_air', 'on_oxygen') THEN NULL
                    WHEN v.kind <> 'acvpu' AND v.quantity ? 'comparator'
                    THEN 'value ' || left(v.quantity ->> 'comparator', 2) || ' ' || left(v.quantity ->> 'value', 40)
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

CREATE FUNCTION diagnosis.fhir_context_pack(patient_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source     regclass;
    v_patient    diagnosis.patients;
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
    -- The raw read, one statement, as the source's owner (diagnosis._fhir_source_resources): the patient's newest
    -- 2000 Observation resources by effective time, of every status (the reading lists the ones it does not use,
    -- with the reason), so the index README documents serves it as one ordered index scan.
    v_read := diagnosis._fhir_observations(
        diagnosis._fhir_source_resources('Patient/' || fhir_context_pack.patient_id::text, 2000));
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
-- it keeps the risk as interpretation and says the value is unknown. A parameter the result lists as not recorded
-- or not understood is a component without a value, its dataAbsentReason saying which (not-performed, unsupported).
CREATE FUNCTION diagnosis._news2_fhir_resource(run_id uuid, patient_id uuid, risk_level text, result jsonb,
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

CREATE VIEW diagnosis.news2_fhir WITH (security_invoker = true) AS
SELECT a.run_id, a.patient_id, a.organization_id, a.risk_level, a.created_at AS diagnosed_at,
       diagnosis._news2_fhir_resource(a.run_id, a.patient_id, a.risk_level, a.artifact_data, a.created_at) AS resource
FROM diagnosis.artifacts a
WHERE a.artifact_type = 'diagnosis_json';
COMMENT ON VIEW diagnosis.news2_fhir IS
    'Each diagnosis as a FHIR R4 Observation (UK Core NEWS2 shape) in resource; the rows of artifacts the caller may see.';

GRANT SELECT ON diagnosis.news2_fhir TO PUBLIC;
