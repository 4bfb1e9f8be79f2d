-- The objects CREATE EXTENSION makes, and their shape.
SELECT c.relname, c.relkind, c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'diagnosis' AND c.relkind IN ('r', 'v')
ORDER BY c.relname;

SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, p.prosecdef AS security_definer,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'diagnosis'
ORDER BY p.proname, args;

-- Nothing an application role may call is SECURITY DEFINER: only the worker's lifecycle functions are, and
-- PUBLIC may execute none of them. Every function pins its search_path or is C, but for the inlined retry rule
-- (a SET clause would stop the inlining; it names nothing but pg_catalog's operators).
SELECT p.proname AS security_definer, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute,
       EXISTS (SELECT 1 FROM unnest(p.proconfig) cfg WHERE cfg = 'search_path=pg_catalog, pg_temp') AS pinned
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'diagnosis' AND p.prosecdef
ORDER BY 1;
SELECT p.proname, p.prosrc
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = 'diagnosis' AND l.lanname <> 'c'
  AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) cfg WHERE cfg LIKE 'search_path=%')
ORDER BY 1;

-- The shipped result schema v1.
SELECT version, schema -> 'required' AS required, schema #> '{properties,risk_level,enum}' AS risk_levels
FROM diagnosis.result_schemas;

-- Every GUC of SPEC section 7, with its context.
SELECT name, context, unit
FROM pg_settings WHERE name LIKE 'diagnosis.%' AND name NOT IN ('diagnosis.mcp_auth_token', 'diagnosis.mcp_oauth_client_secret')
ORDER BY name;
SHOW diagnosis.max_response_bytes;
SHOW diagnosis.mcp_auth_token;
SET diagnosis.mcp_auth_token = 'x';
SET diagnosis.workers = 3;
SET diagnosis.nonexistent = 1;

-- The status/timestamp CHECK, the error_code CHECK and unknown schema versions.
SELECT pgd_try($$INSERT INTO diagnosis.runs (patient_id, organization_id, inputs_hash, max_retries, status)
                 VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'h', 0, 'completed')$$);
SELECT pgd_try($$INSERT INTO diagnosis.runs (patient_id, organization_id, inputs_hash, max_retries, status, started_at, completed_at)
                 VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'h', 0, 'failed', now(), now())$$);
SELECT pgd_try($$INSERT INTO diagnosis.runs (patient_id, organization_id, inputs_hash, max_retries, error_code)
                 VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'h', 0, 'OOPS')$$);
SELECT pgd_try($$INSERT INTO diagnosis.runs (patient_id, organization_id, inputs_hash, max_retries, schema_version)
                 VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'h', 0, 'v9')$$);
SELECT count(*) AS runs FROM diagnosis.runs;
