/* pg_diagnosis 0.2.0 -> 0.3.0 (ALTER EXTENSION pg_diagnosis UPDATE). Each feature in its own section, marked with
   its issue; the result must equal a fresh 0.3.0 install (test/integration/upgrade.test.mjs compares the catalogs).
   Sections: least-privilege worker (#25), the run's lifecycle functions (#26), bounds (#27), MCP in production
   (#28), clinical data and the clinician's day (#29). */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.3.0'" to load this file. \quit

-- ===========================================================================================================
-- The worker is not a superuser (#25): its role, its grants, no table lock for tenants, code of others with
-- their rights.
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

-- What the worker's statements need and nothing more: they move runs (claim, progress, tasks, finalize,
-- recovery: UPDATE runs) and append artifacts and audit rows. It reads no tenant's table: context packs are built
-- as the pack function's owner, the FHIR source is read as its owner. USAGE on the schema, SELECT on its tables
-- and EXECUTE on the public functions come with PUBLIC's.
GRANT UPDATE ON diagnosis.runs TO diagnosis_worker;
GRANT INSERT ON diagnosis.artifacts, diagnosis.audit_log TO diagnosis_worker;
CREATE POLICY runs_worker ON diagnosis.runs TO diagnosis_worker USING (true) WITH CHECK (true);
CREATE POLICY artifacts_worker ON diagnosis.artifacts TO diagnosis_worker USING (true) WITH CHECK (true);
CREATE POLICY audit_log_worker ON diagnosis.audit_log TO diagnosis_worker USING (true) WITH CHECK (true);

-- No table lock for tenants (SPEC section 2): LOCK TABLE checks table privileges, not row-level security, and
-- UPDATE, DELETE or TRUNCATE allow every lock mode. Applications keep INSERT (ROW EXCLUSIVE blocks no reader and
-- no other writer) where the policies allow it, without the id column: an id of their choosing would answer
-- whether that id exists in another organization (23505). Changes and removals go through the functions below.
REVOKE UPDATE, DELETE ON diagnosis.patients, diagnosis.observations, diagnosis.patient_assignments,
    diagnosis.members FROM PUBLIC;
REVOKE INSERT ON diagnosis.patients, diagnosis.observations FROM PUBLIC;
REVOKE UPDATE (name) ON diagnosis.organizations FROM PUBLIC;
GRANT INSERT (organization_id, display_name, data) ON diagnosis.patients TO PUBLIC;
GRANT INSERT (patient_id, code, value, unit, observed_at, data) ON diagnosis.observations TO PUBLIC;
DROP POLICY organizations_admin_update ON diagnosis.organizations;

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

-- The FHIR source is read as its owner (SPEC section 5): planning a query on it runs code its owner chose.
CREATE OR REPLACE FUNCTION diagnosis._fhir_source() RETURNS regclass
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

-- In C (src/fhir_source.cpp): the read runs as the relation's owner under SECURITY_RESTRICTED_OPERATION, and the
-- caller must be able to read the relation whole itself.
CREATE FUNCTION diagnosis._fhir_source_resources(subject text, max int) RETURNS jsonb
    LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'pgdiag_fhir_source_resources';
COMMENT ON FUNCTION diagnosis._fhir_source_resources(text, int) IS
    'The newest Observation resources of a subject in diagnosis.fhir_source (a jsonb array), read as its owner.';

CREATE OR REPLACE FUNCTION diagnosis.fhir_context_pack(patient_id uuid) RETURNS jsonb
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
    -- Read as the source's owner (diagnosis._fhir_source_resources).
    SELECT diagnosis._fhir_observations(coalesce(jsonb_agg(r.resource ORDER BY r.n), '[]'::jsonb))
      INTO v_observations
      FROM jsonb_array_elements(diagnosis._fhir_source_resources('Patient/' || fhir_context_pack.patient_id::text,
                                                                 2000)) WITH ORDINALITY AS r(resource, n)
     WHERE (r.resource ->> 'status') IS DISTINCT FROM 'entered-in-error'
       AND (r.resource ->> 'status') IS DISTINCT FROM 'cancelled';
    RETURN jsonb_build_object(
        'schema', 'pg_diagnosis.context_pack.v1',
        'source', 'fhir:' || v_source::text,
        'patient', jsonb_build_object('id', v_patient.id, 'organization_id', v_patient.organization_id,
                                      'display_name', v_patient.display_name, 'data', v_patient.data),
        'observations', v_observations,
        'inputs', '{}'::jsonb);
END;
$$;


-- ===========================================================================================================
-- One home for a run's lifecycle (#26): the worker's statements as the extension's own functions.
-- ===========================================================================================================

ALTER TABLE diagnosis.runs
    ADD COLUMN ignored_server_requests int NOT NULL DEFAULT 0 CHECK (ignored_server_requests >= 0);

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
                   traceparent text, resume_task_id text)
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
           c.resume_task_id FROM claimed c;
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
            ignored_server_requests = r.ignored_server_requests + coalesce(i.ignored_server_requests, 0),
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

