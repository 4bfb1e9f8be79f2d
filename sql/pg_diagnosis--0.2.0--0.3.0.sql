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

COMMENT ON FUNCTION diagnosis._is_worker() IS
    'True only in a pg_diagnosis background worker''s own statements, acting as diagnosis.worker_role (never in code '
    'run under SECURITY_RESTRICTED_OPERATION): the state machine lets only workers move runs out of running.';

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

