-- Idempotency by key and by in-flight inputs, DEDUPLICATED audit rows, and the batch API.
CREATE TEMP TABLE e (label text, id uuid);
INSERT INTO e SELECT 'keyed', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"k":1}', 'visit-1');
INSERT INTO e SELECT 'keyed again', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"k":1}', 'visit-1');
-- Same key, different inputs: an error naming the existing run.
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"k":2}', 'visit-1')$$);
-- Same key on another patient is another run.
INSERT INTO e SELECT 'keyed other patient', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a2', '{"k":1}', 'visit-1');
-- Without a key: the same inputs coalesce while in flight; key order and whitespace do not matter (jsonb).
INSERT INTO e SELECT 'keyless', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"a": 1, "b": 2}');
INSERT INTO e SELECT 'keyless same', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"b":2,"a":1}');
INSERT INTO e SELECT 'keyless other inputs', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"a":1,"b":3}');
SELECT label, (SELECT min(label) FROM e e2 WHERE e2.id = e.id) AS same_run_as FROM e ORDER BY label;

-- One run per distinct request; ENQUEUED and DEDUPLICATED audit rows name the caller.
SELECT r.idempotency_key, r.inputs, r.status, r.attempt, r.priority, r.max_retries, r.requested_by,
       r.inputs_hash = encode(sha256(convert_to(r.inputs::text, 'UTF8')), 'hex') AS hash_ok,
       (SELECT string_agg(a.event || '/' || a.actor, ' ' ORDER BY a.id) FROM diagnosis.audit_log a WHERE a.run_id = r.id) AS audit
FROM diagnosis.runs r WHERE r.id IN (SELECT id FROM e) ORDER BY r.idempotency_key NULLS LAST, r.inputs::text;

-- Once terminal, a keyless enqueue makes a new run (the patient's data may have changed); a keyed one returns
-- the terminal run whatever its status.
SELECT diagnosis.cancel_diagnosis(id) FROM e WHERE label IN ('keyless', 'keyed');
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"a":1,"b":2}') = (SELECT id FROM e WHERE label = 'keyless') AS keyless_reused_after_terminal;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"k":1}', 'visit-1') = (SELECT id FROM e WHERE label = 'keyed') AS keyed_reused_after_terminal;

-- Options: priority, run_after, max_retries (default: diagnosis.max_retries at enqueue time).
INSERT INTO e SELECT 'options', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a2', '{"opt":1}', priority => 10,
                                                            run_after => now() + interval '1 hour');
INSERT INTO e SELECT 'max_retries 0', diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a2', '{"opt":2}', max_retries => 0);
SELECT e.label, r.priority, r.max_retries = current_setting('diagnosis.max_retries')::int AS default_retries, r.max_retries,
       r.run_after > now() + interval '59 minutes' AS scheduled_later
FROM diagnosis.runs r JOIN e ON r.id = e.id WHERE e.label IN ('options', 'max_retries 0') ORDER BY e.label;

-- The batch API: one run per visible patient, in one statement.
SELECT count(*) AS batch_runs, count(DISTINCT id) AS distinct_runs
FROM (SELECT diagnosis.enqueue_diagnosis(p.id, '{"batch":true}') AS id FROM diagnosis.patients p) b;
SELECT count(*) AS batch_again_deduplicated
FROM (SELECT diagnosis.enqueue_diagnosis(p.id, '{"batch":true}') AS id FROM diagnosis.patients p) b
WHERE id IN (SELECT r.id FROM diagnosis.runs r WHERE r.inputs = '{"batch":true}');
SELECT event, count(*) FROM diagnosis.audit_log WHERE run_id IN (SELECT id FROM diagnosis.runs WHERE inputs = '{"batch":true}')
GROUP BY event ORDER BY event;

-- A rolled-back enqueue leaves nothing behind.
BEGIN;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"rolled":"back"}') IS NOT NULL AS enqueued;
ROLLBACK;
SELECT count(*) AS rolled_back_runs FROM diagnosis.runs WHERE inputs ? 'rolled';
SELECT queued, running, completed, failed, cancelled, oldest_queued_age IS NOT NULL AS has_oldest FROM diagnosis.queue_stats;

-- The set-based enqueue: one keyless run per element, ids in order; in-flight inputs coalesce (in the table and
-- within the array) with DEDUPLICATED rows; the same errors as enqueue_diagnosis, for the first bad element.
-- Rolled back at the end: the suites after this one count runs.
BEGIN;
SELECT cardinality(ids) AS n, cardinality(ARRAY(SELECT DISTINCT unnest(ids))) AS distinct_runs,
       ids[1] = ids[3] AS duplicate_coalesced,
       ids[4] = (SELECT id FROM e WHERE label = 'keyless other inputs') AS coalesced_with_earlier_run
FROM (SELECT diagnosis.enqueue_diagnoses(
        ARRAY['00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000a2',
              '00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000a1']::uuid[],
        ARRAY['{"set":1}', '{"set":1}', '{"set":1}', '{"a":1,"b":3}']::jsonb[]) AS ids) s;
SELECT r.inputs, r.status, r.priority, r.requested_by,
       (SELECT string_agg(a.event || '/' || a.actor || '/' || coalesce(a.details->>'priority', '-'), ' ' ORDER BY a.id)
          FROM diagnosis.audit_log a WHERE a.run_id = r.id) AS audit
FROM diagnosis.runs r WHERE r.inputs = '{"set":1}' ORDER BY r.patient_id;
INSERT INTO e SELECT 'set default inputs', unnest(diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a2']::uuid[]));
SELECT r.inputs, diagnosis.enqueue_diagnoses(ARRAY[r.patient_id]) = ARRAY[r.id] AS coalesces
FROM diagnosis.runs r JOIN e ON e.id = r.id WHERE e.label = 'set default inputs';
SELECT diagnosis.enqueue_diagnoses('{}') AS empty;
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(NULL)$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], ARRAY['{}', '{}']::jsonb[])$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1', NULL]::uuid[])$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], ARRAY['[1]']::jsonb[])$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], ARRAY[NULL]::jsonb[])$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000ffff']::uuid[])$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], priority => 101)$$);
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnoses(ARRAY['00000000-0000-0000-0000-0000000000a1']::uuid[], max_retries => -1)$$);
SELECT count(*) AS runs_after_errors FROM diagnosis.runs WHERE inputs = '{}' AND patient_id = '00000000-0000-0000-0000-0000000000a1';
ROLLBACK;
