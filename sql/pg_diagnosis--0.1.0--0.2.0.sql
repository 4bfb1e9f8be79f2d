/* pg_diagnosis 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_diagnosis UPDATE). Each feature in its own section; the
   result must equal a fresh 0.2.0 install (test/integration/upgrade.test.mjs compares the catalogs). */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.2.0'" to load this file. \quit

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

-- The artifacts insert guard lets a restore through.
CREATE OR REPLACE FUNCTION diagnosis._artifacts_writer_guard() RETURNS trigger
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
