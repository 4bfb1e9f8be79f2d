-- A run's lifecycle functions (sql/pg_diagnosis.sql, "A run's lifecycle"), called directly: no worker, no HTTP.
-- Only a pg_diagnosis worker process moves a run into or out of running: called from this session, every such
-- transition is refused by the state machine and changes nothing (the last part). To exercise what the functions
-- themselves decide, the middle part runs them under session_replication_role = replica, which (superuser only)
-- skips ordinary triggers, the state machine's guard and the artifacts' writer guard among them, as pg_restore
-- does. What this proves: the functions' selection, transitions, artifacts and audit rows. Not the guard
-- (state_machine.sql and test/integration/worker.test.mjs), not row locks (test/isolation/specs/lifecycle_locks).

-- A clean queue: earlier suites' queued runs are cancelled.
SELECT count(*) >= 0 AS cleared FROM (SELECT diagnosis.cancel_diagnosis(id) FROM diagnosis.runs WHERE status = 'queued') c;
INSERT INTO diagnosis.organizations (id, name) VALUES
    ('00000000-0000-0000-0000-00000000ec00', 'Lifecycle C'), ('00000000-0000-0000-0000-00000000ed00', 'Lifecycle D');
INSERT INTO diagnosis.patients (id, organization_id) VALUES
    ('00000000-0000-0000-0000-00000000ec01', '00000000-0000-0000-0000-00000000ec00'),
    ('00000000-0000-0000-0000-00000000ec02', '00000000-0000-0000-0000-00000000ec00'),
    ('00000000-0000-0000-0000-00000000ed01', '00000000-0000-0000-0000-00000000ed00');

-- The retry rule: attempt counts claims, a run gets 1 + max_retries of them.
SELECT a AS attempt, m AS max_retries, diagnosis._attempts_spent(a, m) AS spent
FROM (VALUES (1, 0), (1, 1), (2, 1), (3, 3), (4, 3)) v(a, m);

-- PUBLIC may call none of them (the worker's role is granted EXECUTE on exactly these).
CREATE ROLE pgd_lc_tenant;
SET ROLE pgd_lc_tenant;
SELECT f AS function, pgd_try('SELECT ' || f) AS as_a_tenant FROM (VALUES
    ('diagnosis._claim_runs(10, 60000, 1, 0, 42)'),
    ('diagnosis._finalize_runs(''{}'', 0.5, 1)'),
    ('diagnosis._recover_runs(''{}'', 42, false, 1)'),
    ('diagnosis._record_tasks(''{}'', ''{}'', ''{}'', ''{}'')'),
    ('diagnosis._write_progress(''{}'', ''{}'', ''{}'', ''{}'')'),
    ('diagnosis._runs_to_cancel(42)'),
    ('diagnosis._next_due()'),
    ('diagnosis._result_schemas()')) v(f);
RESET ROLE;
DROP ROLE pgd_lc_tenant;

-- The queue, one statement each (so run_after orders them): C has a priority-10 run and three others, D one due
-- run and one for 2100; n4 and n6 have no retries.
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ec01', '{"n": 1}', NULL, 10) IS NOT NULL AS n1;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ec01', '{"n": 2}') IS NOT NULL AS n2;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ec02', '{"n": 3}') IS NOT NULL AS n3;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ec02', '{"n": 4}', NULL, 0, NULL, 0) IS NOT NULL AS n4;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ed01', '{"n": 5}') IS NOT NULL AS n5;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ed01', '{"n": 6}', NULL, 0, NULL, 0) IS NOT NULL AS n6;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ed01', '{"n": 9}', NULL, 0, '2100-01-01') IS NOT NULL AS later;
CREATE TEMP VIEW lc AS
    SELECT (r.inputs->>'n')::int AS n, r.* FROM diagnosis.runs r
    WHERE r.organization_id IN ('00000000-0000-0000-0000-00000000ec00', '00000000-0000-0000-0000-00000000ed00');
CREATE TEMP VIEW lc_audit AS
    SELECT (r.inputs->>'n')::int AS n, a.event, a.status_from, a.status_to, a.attempt, a.actor = session_user AS by_me,
           a.worker_pid, a.details - 'cancel_requested_at' - 'traceparent' - 'previous_worker_pid' AS details
    FROM diagnosis.audit_log a JOIN lc r ON r.id = a.run_id WHERE a.event <> 'ENQUEUED';
SELECT diagnosis._next_due() = (SELECT min(run_after) FROM lc) AS next_due_is_the_earliest;

-- What a finished call looks like to finalize, for run n of this suite (attempt_offset: a stale call).
CREATE FUNCTION pg_temp.finished(p_n int, p_outcome text, p_error_code text DEFAULT NULL, p_diagnosis jsonb DEFAULT NULL,
                                 p_retry_delay_ms bigint DEFAULT 0, p_refund boolean DEFAULT false,
                                 p_ignored int DEFAULT 0, p_attempt_offset int DEFAULT 0)
RETURNS diagnosis.finished_run LANGUAGE sql AS $$
    SELECT ROW(r.id, r.attempt + p_attempt_offset, p_outcome, p_error_code,
               CASE WHEN p_error_code IS NOT NULL THEN 'what went wrong' END, NULL, '{"pack": true}',
               '{"answer": true}', p_diagnosis, 12, 'mcp-1', p_retry_delay_ms, p_refund, false, p_ignored
              )::diagnosis.finished_run
    FROM lc r WHERE r.n = p_n
$$;

SET session_replication_role = replica;
-- Runs an earlier suite left running belong to no live worker: put back first, so the counts below are this suite's.
SELECT moved >= 0 AS earlier_runs_recovered FROM diagnosis._recover_runs('{}', 0, false, 0);

-- The claim takes turns between organizations: C's best (priority 10), D's, then C's next; three at most.
SELECT (c.inputs->>'n')::int AS n, c.patient_id, c.attempt, c.max_retries, c.schema_version,
       c.traceparent = '00-' || replace(c.id::text, '-', '') || '-0000000000000001-01' AS traceparent, c.resume_task_id
FROM diagnosis._claim_runs(3, 60000, 4242, 0, 42) c ORDER BY n;
SELECT n, status, attempt, worker_pid, worker_token, lease_expires_at - started_at = interval '60 s' AS lease
FROM lc ORDER BY n;
-- Per-organization cap: C holds two, D one; with a cap of 1 neither gets more.
SELECT count(*) AS claimed_at_cap FROM diagnosis._claim_runs(10, 60000, 4242, 1, 42);
SELECT n FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
SELECT count(*) AS nothing_due FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42);
SELECT diagnosis._next_due() AS next_due;

-- Tasks and progress: written for the running attempt only; progress never goes backwards.
SELECT diagnosis._record_tasks(ARRAY[(SELECT id FROM lc WHERE n = 3), (SELECT id FROM lc WHERE n = 1)], ARRAY[1, 2],
                               ARRAY['task-3', 'stale'], ARRAY[60000, 60000]::bigint[]) AS tasks_locked;
SELECT diagnosis._write_progress(ARRAY(SELECT id FROM lc WHERE n IN (3, 5) ORDER BY n), ARRAY[1, 1],
                                 ARRAY[0.5, 0.25]::real[], ARRAY['half', NULL]);
SELECT diagnosis._write_progress(ARRAY(SELECT id FROM lc WHERE n IN (3, 5) ORDER BY n), ARRAY[1, 9],
                                 ARRAY[0.25, 0.75]::real[], ARRAY['backwards', 'stale']);
SELECT n, mcp_task_id, mcp_task_expires_at > now() + interval '50 s' AS task_ttl, progress, progress_message
FROM lc WHERE status = 'running' ORDER BY n;

-- Finalize, every outcome:
--   n1 completed; its confidence_score 1e-50 is below real's range: stored as 0, marked for review;
--   n5 completed; a schema that allows 1e300 gets the document stored and no confidence column;
--   n2 failed (LLM_ERROR); n3 a retry in 60 s; n4 a retry with its attempts spent: failed;
--   n6 back to the queue with its attempt given back (a cause not the run's own), however many retries it has;
--   a stale attempt of n3 and an unknown run touch nothing.
SELECT terminal, deferred FROM diagnosis._finalize_runs(ARRAY[
    pg_temp.finished(1, 'completed', p_diagnosis => '{"risk_level": "high", "confidence_score": 1e-50, "primary_findings": ["a", "b"], "recommendations": [{"text": "x"}]}', p_ignored => 2),
    pg_temp.finished(5, 'completed', p_diagnosis => '{"risk_level": "low", "confidence_score": 1e300, "recommendations": []}'),
    pg_temp.finished(2, 'failed', 'LLM_ERROR'),
    pg_temp.finished(3, 'queued', 'TIMEOUT_ERROR', p_retry_delay_ms => 60000, p_attempt_offset => 1),
    ROW(gen_random_uuid(), 1, 'completed', NULL, NULL, NULL, NULL, NULL, NULL, 1, NULL, 0, false, false, 0)::diagnosis.finished_run
], 0.5, 4242);
SELECT terminal, deferred FROM diagnosis._finalize_runs(ARRAY[
    pg_temp.finished(3, 'queued', 'TIMEOUT_ERROR', p_retry_delay_ms => 60000),
    pg_temp.finished(4, 'queued', 'NETWORK_ERROR', p_retry_delay_ms => 60000),
    pg_temp.finished(6, 'queued', 'MCP_ERROR', p_refund => true)
], 0.5, 4242);
SELECT n, status, attempt, error_code, error_message, progress, completed_at IS NOT NULL AS completed,
       CASE WHEN status = 'queued' THEN run_after - updated_at END AS retry_in, worker_token, mcp_run_id, processing_time_ms, ignored_server_requests
FROM lc WHERE n < 9 ORDER BY n;
SELECT n, artifact_type, artifact_data, risk_level, confidence_score, primary_findings, recommendations_count, needs_review
FROM diagnosis.artifacts a JOIN lc ON lc.id = a.run_id ORDER BY n, sequence_order;
-- A terminal run is not touched; a bad outcome is refused whole (the runs' CHECK).
SELECT terminal, deferred FROM diagnosis._finalize_runs(ARRAY[pg_temp.finished(1, 'failed', 'MCP_ERROR')], 0.5, 4242);
SELECT n FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
SELECT pgd_try($$SELECT diagnosis._finalize_runs(ARRAY[pg_temp.finished(6, 'nonsense')], 0.5, 4242)$$) AS bad_outcome;
SELECT n, status, attempt FROM lc WHERE n = 6;

-- A cancel requested while running: the run ends cancelled whatever the call's outcome, the answer kept, no diagnosis.
SELECT diagnosis.cancel_diagnosis(id) AS cancel_requested FROM lc WHERE n = 6;
SELECT (SELECT n FROM lc WHERE lc.id = c.id) AS to_cancel, attempt FROM diagnosis._runs_to_cancel(42) c;
SELECT count(*) AS for_another_worker FROM diagnosis._runs_to_cancel(43);
SELECT terminal FROM diagnosis._finalize_runs(ARRAY[pg_temp.finished(6, 'completed', p_diagnosis => '{"risk_level": "low", "confidence_score": 0.9}')], 0.5, 4242);
SELECT n, status, error_code, (SELECT array_agg(artifact_type ORDER BY sequence_order) FROM diagnosis.artifacts a WHERE a.run_id = lc.id) AS artifacts
FROM lc WHERE n = 6;

-- Recovery: a run whose lease expired goes back (RECOVERED, its attempt spent); a run of a worker that is gone
-- with its attempts spent fails; a hand-back at shutdown gives the attempt back.
UPDATE diagnosis.runs SET run_after = now() WHERE id = (SELECT id FROM lc WHERE n = 3);
SELECT n FROM diagnosis._claim_runs(10, -1000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
SELECT moved, running_left FROM diagnosis._recover_runs('{42}', 42, false, 4242);
SELECT moved, running_left FROM diagnosis._recover_runs('{42}', 42, false, 4242);
SELECT n FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
SELECT moved, running_left FROM diagnosis._recover_runs('{42}', 42, true, 4242);
SELECT n, status, attempt FROM lc WHERE n = 3;
UPDATE diagnosis.runs SET max_retries = 0 WHERE id = (SELECT id FROM lc WHERE n = 3);
SELECT n FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
SELECT moved, running_left FROM diagnosis._recover_runs('{}', 0, false, 4242);
SELECT n, status, attempt, error_code, error_message FROM lc WHERE n = 3;

-- Every step in the audit log, with the worker's pid and the worker's role.
SELECT * FROM lc_audit ORDER BY n, event, attempt;

RESET session_replication_role;

-- Outside a worker process the guard refuses every transition the functions make, and nothing changes.
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-00000000ec01', '{"n": 7}') IS NOT NULL AS n7;
SELECT pgd_try('SELECT diagnosis._claim_runs(10, 60000, 4242, 0, 42)') AS claim_outside_worker;
SELECT n, status, attempt FROM lc WHERE n = 7;
SET session_replication_role = replica;
SELECT n FROM diagnosis._claim_runs(10, 60000, 4242, 0, 42) c JOIN LATERAL (SELECT (c.inputs->>'n')::int AS n) x ON true ORDER BY n;
RESET session_replication_role;
SELECT pgd_try($$SELECT diagnosis._finalize_runs(ARRAY[pg_temp.finished(7, 'completed', p_diagnosis => '{"risk_level": "low", "confidence_score": 0.9}')], 0.5, 4242)$$) AS finalize_outside_worker;
SELECT pgd_try($$SELECT diagnosis._recover_runs('{}', 0, false, 4242)$$) AS recover_outside_worker;
SELECT pgd_try($$SELECT diagnosis._record_tasks(ARRAY[(SELECT id FROM lc WHERE n = 7)], '{1}', '{t}', '{1}')$$) AS tasks_outside_worker;
SELECT pgd_try($$SELECT diagnosis._write_progress(ARRAY[(SELECT id FROM lc WHERE n = 7)], '{1}', '{0.5}', '{m}')$$) AS progress_outside_worker;
SELECT n, status, attempt, progress, mcp_task_id FROM lc WHERE n = 7;
SELECT count(*) AS artifacts_of_n7 FROM diagnosis.artifacts WHERE run_id = (SELECT id FROM lc WHERE n = 7);
