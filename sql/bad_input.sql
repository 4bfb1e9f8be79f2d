-- Every bad input raises a clear ERROR with a specific SQLSTATE and changes nothing.
SET diagnosis.max_inputs_bytes = '1kB';
SELECT (SELECT count(*) FROM diagnosis.runs) AS runs_before, (SELECT count(*) FROM diagnosis.audit_log) AS audit_before;

SELECT c AS "case", pgd_try(sql) AS result FROM (VALUES
    ('NULL patient',            $$SELECT diagnosis.enqueue_diagnosis(NULL)$$),
    ('unknown patient',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ffff')$$),
    ('NULL inputs',             $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', NULL)$$),
    ('inputs an array',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '[1,2]')$$),
    ('inputs a string',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '"x"')$$),
    ('inputs a number',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '42')$$),
    ('inputs JSON null',        $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', 'null')$$),
    ('inputs too large',        $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', jsonb_build_object('x', repeat('a', 2000)))$$),
    ('inputs not JSON',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{oops')$$),
    ('negative max_retries',    $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', max_retries => -1)$$),
    ('max_retries too large',   $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', max_retries => 2147483647)$$),
    ('max_retries 101',         $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', max_retries => 101)$$),
    ('NULL priority',           $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', priority => NULL)$$),
    ('priority too high',       $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', priority => 2147483647)$$),
    ('priority too low',        $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', priority => -101)$$),
    ('empty idempotency key',   $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', '')$$),
    ('huge idempotency key',    $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', repeat('k', 201))$$),
    ('patient not a uuid',      $$SELECT diagnosis.enqueue_diagnosis('not-a-uuid')$$),
    ('injection in key',        $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', repeat('x'';DROP TABLE diagnosis.runs;--', 10))$$),
    ('NULL run (cancel)',       $$SELECT diagnosis.cancel_diagnosis(NULL)$$),
    ('unknown run (cancel)',    $$SELECT diagnosis.cancel_diagnosis('00000000-0000-0000-0000-00000000ffff')$$),
    ('NULL run (wait)',         $$SELECT diagnosis.wait_for_run(NULL)$$),
    ('unknown run (wait)',      $$SELECT diagnosis.wait_for_run('00000000-0000-0000-0000-00000000ffff', '1 s')$$),
    ('negative timeout (wait)', $$SELECT diagnosis.wait_for_run('00000000-0000-0000-0000-00000000ffff', '-1 s')$$),
    ('NULL interval (purge)',   $$SELECT diagnosis.purge_runs(NULL)$$),
    ('negative interval (purge)', $$SELECT diagnosis.purge_runs('-1 day')$$),
    ('NULL patient (pack)',     $$SELECT diagnosis.build_context_pack(NULL)$$),
    ('unknown patient (pack)',  $$SELECT diagnosis.build_context_pack('00000000-0000-0000-0000-00000000ffff')$$),
    ('direct INSERT (outsider)', $$SET LOCAL ROLE pgd_outsider; INSERT INTO diagnosis.runs (patient_id, organization_id, inputs_hash, max_retries) VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'h', 0)$$),
    ('internal impl (outsider)', $$SET LOCAL ROLE pgd_outsider; SELECT diagnosis._enqueue_diagnosis_impl('postgres', '00000000-0000-0000-0000-0000000000a1', '{}', NULL, 0, NULL, NULL, NULL)$$),
    ('unknown schema_version',  $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', schema_version => 'v9')$$),
    ('empty schema_version',    $$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{}', schema_version => '')$$),
    ('unknown schema_version (batch)', $$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], schema_version => 'v9')$$),
    ('NULL run (rerun)',        $$SELECT diagnosis.rerun_diagnosis(NULL, 'reason')$$),
    ('unknown run (rerun)',     $$SELECT diagnosis.rerun_diagnosis('00000000-0000-0000-0000-00000000ffff', 'reason')$$),
    ('NULL reason (rerun)',     $$SELECT diagnosis.rerun_diagnosis('00000000-0000-0000-0000-00000000ffff', NULL)$$),
    ('blank reason (rerun)',    $$SELECT diagnosis.rerun_diagnosis('00000000-0000-0000-0000-00000000ffff', '  ')$$),
    ('huge reason (rerun)',     $$SELECT diagnosis.rerun_diagnosis('00000000-0000-0000-0000-00000000ffff', repeat('r', 1001))$$),
    ('NULL run (acknowledge)',  $$SELECT diagnosis.acknowledge_diagnosis(NULL)$$),
    ('unknown run (acknowledge)', $$SELECT diagnosis.acknowledge_diagnosis('00000000-0000-0000-0000-00000000ffff', 'note')$$),
    ('huge note (acknowledge)', $$SELECT diagnosis.acknowledge_diagnosis('00000000-0000-0000-0000-00000000ffff', repeat('n', 4001))$$),
    ('direct INSERT ack (outsider)', $$SET LOCAL ROLE pgd_outsider; INSERT INTO diagnosis.acknowledgements (run_id, organization_id) VALUES ('00000000-0000-0000-0000-00000000ffff', '00000000-0000-0000-0000-00000000000a')$$),
    ('internal rerun (outsider)', $$SET LOCAL ROLE pgd_outsider; SELECT diagnosis._rerun_diagnosis_impl('postgres', '00000000-0000-0000-0000-00000000ffff', 'x')$$),
    ('internal ack (outsider)', $$SET LOCAL ROLE pgd_outsider; SELECT diagnosis._acknowledge_diagnosis_impl('postgres', '00000000-0000-0000-0000-00000000ffff', NULL)$$),
    ('huge timeout, unknown run (wait)', $$SELECT diagnosis.wait_for_run('00000000-0000-0000-0000-00000000ffff', '178000000 years')$$),
    ('begin purge (outsider)',  $$SET LOCAL ROLE pgd_outsider; SELECT diagnosis._begin_purge()$$)
) AS t(c, sql);
RESET ROLE;

-- Nothing changed.
SELECT (SELECT count(*) FROM diagnosis.runs) AS runs_after, (SELECT count(*) FROM diagnosis.audit_log) AS audit_after;
-- A hostile search_path changes nothing either: the functions pin theirs and qualify every name.
CREATE SCHEMA pgd_evil;
CREATE FUNCTION pgd_evil.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT '\x00'::bytea $$;
SET search_path = pgd_evil, public;
CREATE TEMP TABLE evil AS SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"search_path":"evil"}') AS id;
SELECT r.inputs_hash = encode(pg_catalog.sha256(convert_to(r.inputs::text, 'UTF8')), 'hex') AS real_sha256
FROM diagnosis.runs r JOIN evil e ON r.id = e.id;
RESET search_path;
DROP SCHEMA pgd_evil CASCADE;
SELECT diagnosis.cancel_diagnosis(id) FROM diagnosis.runs WHERE inputs ? 'search_path';
RESET diagnosis.max_inputs_bytes;
