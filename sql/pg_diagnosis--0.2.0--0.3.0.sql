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

