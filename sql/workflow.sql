-- The clinician's day (0.3.0): schema versions at enqueue, re-runs, sign-off, the indexes for reading runs; and two
-- bugs of 0.2.0's SQL API (issue 27): enqueue_diagnoses with arrays not based at 1, wait_for_run's huge timeout.
-- All in one transaction, rolled back at the end: the suites after this one count runs.
BEGIN;
INSERT INTO diagnosis.result_schemas (version, schema) VALUES ('v2', '{"type":"object","required":["risk_level"]}');

-- Finished runs as the worker would leave them (no MCP endpoint here): inserted by the superuser, the diagnosis
-- artifact with the insert guard off (session_replication_role = replica, as a restore's triggers are).
CREATE FUNCTION pg_temp.finished_run(patient uuid, status text, inputs jsonb, key text DEFAULT NULL,
                                     risk text DEFAULT NULL, minutes_ago int DEFAULT 10) RETURNS uuid
    LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, status, inputs, inputs_hash,
                                idempotency_key, priority, max_retries, attempt, started_at, completed_at,
                                error_code, created_at)
    SELECT p.id, p.organization_id, 'pgd_clin_assigned', status, inputs,
           encode(sha256(convert_to(inputs::text, 'UTF8')), 'hex'), key, 5, 2, 1,
           now() - make_interval(mins => minutes_ago), now() - make_interval(mins => minutes_ago),
           CASE WHEN status = 'failed' THEN 'NETWORK_ERROR' END, now() - make_interval(mins => minutes_ago + 1)
      FROM diagnosis.patients p WHERE p.id = patient
    RETURNING id INTO v_id;
    IF risk IS NOT NULL THEN
        SET LOCAL session_replication_role = replica;
        INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data,
                                         content_sha256, risk_level, confidence_score, primary_findings, needs_review,
                                         created_at)
        SELECT r.id, r.patient_id, r.organization_id, 'diagnosis_json', jsonb_build_object('summary', risk || ' risk'),
               'sha', risk, 0.9, ARRAY[risk], false, now() - make_interval(mins => minutes_ago)
          FROM diagnosis.runs r WHERE r.id = v_id;
        SET LOCAL session_replication_role = origin;
    END IF;
    RETURN v_id;
END;
$$;
CREATE TEMP TABLE w (label text PRIMARY KEY, id uuid);
GRANT SELECT ON w TO PUBLIC;

-- ===========================================================================================================
-- Schema versions at enqueue
-- ===========================================================================================================
SHOW diagnosis.default_schema_version;
INSERT INTO w SELECT 'v2', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"version"}', schema_version => 'v2');
INSERT INTO w SELECT 'v1 same inputs', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"version"}');
INSERT INTO w SELECT 'v2 again', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"version"}', schema_version => 'v2');
INSERT INTO w SELECT 'v1 explicit', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"version"}', schema_version => 'v1');
-- In-flight coalescing compares the version: v2 and v1 are two runs; the same version returns the same run.
SELECT w.label, r.schema_version, (SELECT min(w2.label) FROM w w2 WHERE w2.id = w.id) AS same_run_as
FROM w JOIN diagnosis.runs r ON r.id = w.id ORDER BY w.label;
SELECT event, count(*) FROM diagnosis.audit_log WHERE run_id IN (SELECT id FROM w) GROUP BY event ORDER BY event;
-- Keys compare it too: the same key for another version is an error naming the run.
INSERT INTO w SELECT 'keyed v2', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"keyed"}', 'wf-key', schema_version => 'v2');
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"keyed"}', 'wf-key', schema_version => 'v2') = (SELECT id FROM w WHERE label = 'keyed v2') AS keyed_same_version;
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"keyed"}', 'wf-key')$$) AS keyed_other_version;
-- The batch API takes one version for the batch and coalesces with runs of that version.
-- (A statement does not see the runs its own function call inserted: each result is read by the next statement.)
CREATE TEMP TABLE batch AS SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000a2']::uuid[],
                                                              ARRAY['{"wf":"version"}', '{"wf":"version"}']::jsonb[], schema_version => 'v2') AS ids;
SELECT ids[1] = (SELECT id FROM w WHERE label = 'v2') AS batch_v2_coalesced, r.schema_version
FROM batch b JOIN diagnosis.runs r ON r.id = b.ids[2];

-- 0.2.0's keyless lookup read only 'v1' runs while the unique index ignored the version: a queued run of another
-- version with the same inputs made a matching enqueue loop for ever. A queued v2 run as 0.2.0 let a superuser
-- write it; the enqueue must return within the statement timeout (0.2.0 ran into it).
INSERT INTO diagnosis.runs (patient_id, organization_id, inputs, inputs_hash, schema_version, max_retries)
SELECT '00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-00000000000a', i,
       encode(sha256(convert_to(i::text, 'UTF8')), 'hex'), 'v2', 0
FROM (SELECT '{"wf":"loop"}'::jsonb) x(i);
SAVEPOINT loop;
SET LOCAL statement_timeout = '10s';
INSERT INTO w SELECT 'loop', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a2', '{"wf":"loop"}');
RELEASE SAVEPOINT loop;
SET LOCAL statement_timeout = 0;
SELECT r.schema_version, r.status, count(*) OVER () AS runs_of_these_inputs
FROM diagnosis.runs r WHERE r.inputs = '{"wf":"loop"}' ORDER BY r.schema_version;
SELECT schema_version FROM diagnosis.runs WHERE id = (SELECT id FROM w WHERE label = 'loop');

-- ===========================================================================================================
-- enqueue_diagnoses with arrays whose subscripts do not start at 1 (issue 27): element i is patient_ids' i-th
-- element, whatever the bounds. 0.2.0 looked coalesced elements up by subscript and enqueued another patient's.
-- ===========================================================================================================
TRUNCATE batch;
INSERT INTO batch SELECT diagnosis.enqueue_diagnoses('[0:2]={00000000-0000-0000-0000-0000000000a2,00000000-0000-0000-0000-0000000000a2,00000000-0000-0000-0000-0000000000a1}'::uuid[],
                                                     '[5:7]={"{\"wf\": \"bounds\"}","{\"wf\": \"bounds\"}","{\"wf\": \"bounds\"}"}'::jsonb[]);
SELECT n, (SELECT r.patient_id FROM diagnosis.runs r WHERE r.id = ids[n]) = expected AS right_patient, ids[n] = ids[1] AS same_as_first
FROM batch b,
     (VALUES (1, '00000000-0000-0000-0000-0000000000a2'::uuid), (2, '00000000-0000-0000-0000-0000000000a2'), (3, '00000000-0000-0000-0000-0000000000a1')) e(n, expected)
ORDER BY n;
SELECT patient_id, count(*) FROM diagnosis.runs WHERE inputs = '{"wf":"bounds"}' GROUP BY patient_id ORDER BY patient_id;

-- ===========================================================================================================
-- Re-runs
-- ===========================================================================================================
-- A keyed request whose run failed (the endpoint was down): the key returns the failed run for ever.
INSERT INTO w SELECT 'failed keyed', pg_temp.finished_run('00000000-0000-0000-0000-0000000000a1', 'failed', '{"wf":"rerun"}', 'assessment:9');
INSERT INTO w SELECT 'completed', pg_temp.finished_run('00000000-0000-0000-0000-0000000000a1', 'completed', '{"wf":"regenerate"}', risk => 'high');
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"rerun"}', 'assessment:9') = (SELECT id FROM w WHERE label = 'failed keyed') AS key_returns_failed_run;
CREATE TEMP TABLE before_rerun AS SELECT * FROM diagnosis.runs WHERE id = (SELECT id FROM w WHERE label = 'failed keyed');
-- The assigned clinician re-runs it: a new run, linked, without the key, same request; the old run is untouched.
SELECT pgd_as('pgd_clin_assigned', $$SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'failed keyed'), 'MCP endpoint was down')$$) IS NOT NULL AS rerun;
INSERT INTO w SELECT 'rerun', id FROM diagnosis.runs WHERE rerun_of = (SELECT id FROM w WHERE label = 'failed keyed');
SELECT r.status, r.rerun_of = o.id AS linked, r.idempotency_key, r.inputs = o.inputs AS same_inputs,
       r.inputs_hash = o.inputs_hash AS same_hash, r.schema_version, r.priority, r.max_retries, r.attempt,
       r.requested_by, r.patient_id = o.patient_id AS same_patient
FROM diagnosis.runs r, before_rerun o WHERE r.id = (SELECT id FROM w WHERE label = 'rerun');
SELECT (SELECT b FROM before_rerun b) = (SELECT r FROM diagnosis.runs r WHERE r.id = (SELECT id FROM w WHERE label = 'failed keyed')) AS old_run_untouched;
SELECT event, actor, details - 'inputs_hash' - 'rerun_of' AS details, details ->> 'rerun_of' = (SELECT id FROM w WHERE label = 'failed keyed')::text AS names_old_run
FROM diagnosis.audit_log WHERE run_id = (SELECT id FROM w WHERE label = 'rerun') ORDER BY id;
-- While it waits, another re-run of the same run returns it (DEDUPLICATED, with its reason), whoever asks.
SELECT pgd_as('pgd_admin1', $$SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'failed keyed'), 'second request')$$)::uuid = (SELECT id FROM w WHERE label = 'rerun') AS second_returns_first;
SELECT event, actor, details - 'rerun_of' AS details, details ->> 'rerun_of' = (SELECT id FROM w WHERE label = 'failed keyed')::text AS names_old_run
FROM diagnosis.audit_log WHERE run_id = (SELECT id FROM w WHERE label = 'rerun') AND event = 'DEDUPLICATED';
SELECT count(*) AS reruns FROM diagnosis.runs WHERE rerun_of = (SELECT id FROM w WHERE label = 'failed keyed');
-- Not terminal: 55000. Once the re-run is terminal, a new re-run is a new run.
SELECT pgd_try($$SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'rerun'), 'too soon')$$) AS rerun_of_queued;
SELECT diagnosis.cancel_diagnosis((SELECT id FROM w WHERE label = 'rerun'));
SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'failed keyed'), 'third time') <> (SELECT id FROM w WHERE label = 'rerun') AS new_rerun_after_terminal;
-- A completed run re-runs too (a regeneration), in its schema version; a v2 run's re-run is v2.
INSERT INTO w SELECT 'regeneration', diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'completed'), 'new observations charted');
SELECT r.rerun_of = (SELECT id FROM w WHERE label = 'completed') AS linked, r.status, r.inputs
FROM diagnosis.runs r WHERE r.id = (SELECT id FROM w WHERE label = 'regeneration');
SELECT diagnosis.cancel_diagnosis((SELECT id FROM w WHERE label = 'v2'));
INSERT INTO w SELECT 'v2 rerun', diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'v2'), 'v2 again');
SELECT r.schema_version FROM diagnosis.runs r WHERE r.id = (SELECT id FROM w WHERE label = 'v2 rerun');
SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'v2'), 'once more') = r.id AS same_rerun
FROM diagnosis.runs r WHERE r.rerun_of = (SELECT id FROM w WHERE label = 'v2') AND r.status = 'queued';
-- A re-run whose request is already in flight as a keyless run returns that run (in-flight coalescing, as
-- enqueue_diagnosis); its DEDUPLICATED row keeps the re-run's reason.
INSERT INTO w SELECT 'failed keyless', pg_temp.finished_run('00000000-0000-0000-0000-0000000000a1', 'failed', '{"wf":"coalesce"}');
INSERT INTO w SELECT 'in flight', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wf":"coalesce"}');
SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'failed keyless'), 'coalesces') = (SELECT id FROM w WHERE label = 'in flight') AS coalesced;
SELECT event, details - 'rerun_of' AS details FROM diagnosis.audit_log WHERE run_id = (SELECT id FROM w WHERE label = 'in flight') ORDER BY id;
-- Who may: whoever may enqueue for the patient; anyone else is told the run does not exist, as for an unknown id.
SELECT name AS role,
       pgd_as(name, $$SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'completed'), 'access') IS NOT NULL$$) AS rerun
FROM unnest(ARRAY['pgd_clin_assigned', 'pgd_clin_unassigned', 'pgd_admin1', 'pgd_admin2', 'pgd_outsider']) WITH ORDINALITY r(name, n) ORDER BY n;
SET LOCAL ROLE pgd_clin_unassigned;
SELECT pgd_try($$SELECT diagnosis.rerun_diagnosis((SELECT id FROM w WHERE label = 'completed'), 'x')$$) AS invisible_run,
       pgd_try($$SELECT diagnosis.rerun_diagnosis('00000000-0000-0000-0000-00000000ffff', 'x')$$) AS unknown_run;
RESET ROLE;

-- ===========================================================================================================
-- Sign-off
-- ===========================================================================================================
INSERT INTO w SELECT 'completed a2', pg_temp.finished_run('00000000-0000-0000-0000-0000000000a2', 'completed', '{"wf":"ack"}', risk => 'critical', minutes_ago => 5);
INSERT INTO w SELECT 'completed b1', pg_temp.finished_run('00000000-0000-0000-0000-0000000000b1', 'completed', '{"wf":"ack"}', risk => 'medium');
SELECT pgd_as(name, $$SELECT string_agg(risk_level, ',' ORDER BY urgency) FROM diagnosis.review_queue$$) AS review_queue, name AS role
FROM unnest(ARRAY['pgd_clin_assigned', 'pgd_admin1', 'pgd_admin2']) r(name) ORDER BY name;
-- The assigned clinician signs off a1's diagnosis; a second call returns the same row and writes nothing.
SELECT pgd_as('pgd_clin_assigned', $$SELECT diagnosis.acknowledge_diagnosis((SELECT id FROM w WHERE label = 'completed'), 'seen on the ward round')$$) AS first_ack
\gset
SELECT pgd_as('pgd_clin_assigned', $$SELECT diagnosis.acknowledge_diagnosis((SELECT id FROM w WHERE label = 'completed'))$$) = :'first_ack' AS second_returns_first;
SELECT k.id = :'first_ack'::bigint AS same_id, k.acknowledged_by, k.note, k.organization_id, k.run_id = (SELECT id FROM w WHERE label = 'completed') AS run
FROM diagnosis.acknowledgements k;
SELECT event, status_from, status_to, actor, details ->> 'acknowledgement_id' = :'first_ack' AS names_row
FROM diagnosis.audit_log WHERE event = 'ACKNOWLEDGED';
-- Acknowledged by anyone, a diagnosis leaves everyone's review queue (the team's worklist); the others stay.
SELECT pgd_as(name, $$SELECT coalesce(string_agg(risk_level, ',' ORDER BY urgency), '-') FROM diagnosis.review_queue$$) AS review_queue, name AS role
FROM unnest(ARRAY['pgd_clin_assigned', 'pgd_admin1', 'pgd_admin2']) r(name) ORDER BY name;
-- Once per clinician: the admin's own sign-off of the same run is a second row.
SELECT pgd_as('pgd_admin1', $$SELECT diagnosis.acknowledge_diagnosis((SELECT id FROM w WHERE label = 'completed'))$$)::bigint > :'first_ack'::bigint AS admin_row;
SELECT acknowledged_by, count(*) FROM diagnosis.acknowledgements GROUP BY 1 ORDER BY 1;
-- Only a completed run: queued, failed, cancelled are 55000.
SELECT label, pgd_try(format('SELECT diagnosis.acknowledge_diagnosis(%L)', id)) AS ack
FROM w WHERE label IN ('v1 same inputs', 'failed keyed', 'rerun') ORDER BY label;
-- Row-level security: acknowledgements are read like runs; writes go through the function only.
SELECT name AS role, pgd_as(name, 'SELECT count(*) FROM diagnosis.acknowledgements') AS acknowledgements,
       pgd_as(name, $$SELECT diagnosis.acknowledge_diagnosis((SELECT id FROM w WHERE label = 'completed a2')) IS NOT NULL$$) AS ack_a2,
       pgd_as(name, $$INSERT INTO diagnosis.acknowledgements (run_id, organization_id) VALUES ((SELECT id FROM w WHERE label = 'completed b1'), '00000000-0000-0000-0000-00000000000b') RETURNING 'inserted'$$) AS direct_insert,
       pgd_as(name, $$UPDATE diagnosis.acknowledgements SET note = 'x' RETURNING 'updated'$$) AS direct_update,
       pgd_as(name, $$DELETE FROM diagnosis.acknowledgements RETURNING 'deleted'$$) AS direct_delete
FROM unnest(ARRAY['pgd_clin_assigned', 'pgd_clin_unassigned', 'pgd_admin1', 'pgd_admin2', 'pgd_outsider']) WITH ORDINALITY r(name, n) ORDER BY n;
-- Insert-only for the superuser too.
SELECT pgd_try($$UPDATE diagnosis.acknowledgements SET note = 'rewritten'$$) AS superuser_update,
       pgd_try($$DELETE FROM diagnosis.acknowledgements$$) AS superuser_delete,
       pgd_try($$TRUNCATE diagnosis.acknowledgements$$) AS superuser_truncate;
-- Retention takes acknowledgements with their run.
SELECT diagnosis.purge_runs('1 minute') >= 3 AS purged;
SELECT count(*) AS acknowledgements_after_purge FROM diagnosis.acknowledgements;

-- ===========================================================================================================
-- wait_for_run's timeout is clamped (issue 27): a huge interval waits (0.2.0 overflowed int64), a terminal run
-- returns at once whatever the timeout.
-- ===========================================================================================================
SELECT diagnosis.wait_for_run((SELECT id FROM w WHERE label = 'rerun'), '178000000 years') AS terminal_run;
SAVEPOINT wait;
SET LOCAL statement_timeout = '300ms';
SELECT diagnosis.wait_for_run((SELECT id FROM w WHERE label = 'v1 same inputs'), '178000000 years');
ROLLBACK TO SAVEPOINT wait;

-- ===========================================================================================================
-- Reading runs at scale: a patient's history and a requester's runs have an index each (the plans on 1,000,000
-- runs are in test/integration/runs_at_scale.test.mjs).
-- ===========================================================================================================
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT id, status FROM diagnosis.runs WHERE patient_id = '00000000-0000-0000-0000-0000000000a1' ORDER BY created_at DESC LIMIT 20;
EXPLAIN (COSTS OFF) SELECT id, status FROM diagnosis.runs WHERE requested_by = 'pgd_clin_assigned' ORDER BY created_at DESC LIMIT 20;
ROLLBACK;
