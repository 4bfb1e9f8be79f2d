-- The state machine of SPEC section 3 is enforced by a trigger for every role, superuser included: only a
-- pg_diagnosis worker moves a run out of running (or into it), terminal runs never change, artifacts and the
-- audit log are insert-only.
SELECT diagnosis._is_worker() AS this_session_is_a_worker;
CREATE TEMP TABLE sm AS
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"sm":1}') AS id;

SELECT t AS transition, pgd_try(format('UPDATE diagnosis.runs SET %s WHERE id = %L', s, (SELECT id FROM sm))) AS result
FROM (VALUES
    ('queued -> running',   $$status = 'running', started_at = now()$$),
    ('queued -> completed', $$status = 'completed', completed_at = now()$$),
    ('queued -> failed',    $$status = 'failed', completed_at = now(), error_code = 'MCP_ERROR'$$),
    ('queued -> queued (priority)', $$priority = 5$$),
    ('queued: change inputs', $$inputs = '{"other":1}'$$),
    ('queued: change patient', $$patient_id = '00000000-0000-0000-0000-0000000000a2'$$),
    ('DELETE queued',       NULL)
) AS v(t, s)
WHERE s IS NOT NULL
UNION ALL
SELECT 'DELETE queued', pgd_try(format('DELETE FROM diagnosis.runs WHERE id = %L', (SELECT id FROM sm)));

-- queued -> cancelled is the one transition outside the worker (through cancel_diagnosis); then it is final.
SELECT diagnosis.cancel_diagnosis(id) AS cancelled FROM sm;
SELECT t AS transition, pgd_try(format('UPDATE diagnosis.runs SET %s WHERE id = %L', s, (SELECT id FROM sm))) AS result
FROM (VALUES
    ('cancelled -> queued',    $$status = 'queued', completed_at = NULL$$),
    ('cancelled -> running',   $$status = 'running', completed_at = NULL, started_at = now()$$),
    ('cancelled -> completed', $$status = 'completed'$$),
    ('cancelled: any column',  $$priority = 9$$)
) AS v(t, s);
SELECT status, priority FROM diagnosis.runs WHERE id = (SELECT id FROM sm);
SELECT pgd_try('TRUNCATE diagnosis.runs CASCADE') AS truncate_runs;

-- Audit rows and artifacts are insert-only for everyone.
SELECT pgd_try($$UPDATE diagnosis.audit_log SET actor = 'someone_else'$$) AS update_audit;
SELECT pgd_try($$DELETE FROM diagnosis.audit_log$$) AS delete_audit;
SELECT pgd_try($$TRUNCATE diagnosis.audit_log$$) AS truncate_audit;
SELECT pgd_try($$TRUNCATE diagnosis.artifacts$$) AS truncate_artifacts;
SELECT pgd_try(format($$INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256)
                        VALUES (%L, '00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'context_pack', '{}', 'x')$$,
                      (SELECT id FROM sm))) AS insert_artifact_outside_worker;
SELECT event, status_from, status_to FROM diagnosis.audit_log WHERE run_id = (SELECT id FROM sm) ORDER BY id;

-- The guard is a public trigger function; on any table but diagnosis.runs it refuses to run (a column named
-- status of another type must not be read as the runs' text).
CREATE TEMP TABLE not_runs (id uuid, patient_id uuid, organization_id uuid, inputs_hash text, inputs jsonb,
    requested_by name, created_at timestamptz, schema_version text, idempotency_key text, status int,
    cancel_requested_at timestamptz, cancel_requested_by name);
CREATE TRIGGER not_runs_guard BEFORE UPDATE OR DELETE ON not_runs FOR EACH ROW EXECUTE FUNCTION diagnosis._runs_guard();
INSERT INTO not_runs (id, status) VALUES ('00000000-0000-0000-0000-0000000000f1', 1);
SELECT pgd_try('UPDATE not_runs SET status = 2') AS guard_on_another_table;
SELECT pgd_try('DELETE FROM not_runs') AS guard_on_another_table_delete;
SELECT status FROM not_runs;
DROP TABLE not_runs;
