-- Security of 0.2.0 (issue 19), the parts a regression suite can prove without a worker; the attacks that need
-- the worker (planted overloads, a malicious context-pack function, fairness, an open cancel) are in
-- test/integration/hostile.test.mjs.

-- worker_status() is for superusers and members of pg_monitor: tenants' activity counters are not everyone's.
CREATE ROLE pgd_monitor IN ROLE pg_monitor;
CREATE ROLE pgd_sec_admin_a;
CREATE ROLE pgd_sec_admin_b;
CREATE ROLE pgd_sec_clinician;
INSERT INTO diagnosis.members VALUES ('pgd_sec_admin_a', '00000000-0000-0000-0000-00000000000a', 'admin'),
    ('pgd_sec_admin_b', '00000000-0000-0000-0000-00000000000b', 'admin'),
    ('pgd_sec_clinician', '00000000-0000-0000-0000-00000000000a', 'clinician');
SELECT r AS role, pgd_try(format('SET LOCAL ROLE %I; SELECT count(*) FROM diagnosis.worker_status()', r)) AS worker_status
FROM unnest(ARRAY['pgd_monitor', 'pgd_sec_admin_a', 'pgd_sec_clinician']) r;
SELECT count(*) AS rows_for_superuser FROM diagnosis.worker_status();
RESET ROLE;

-- A patient moved to another organization: that organization's earlier run is never named, returned or touched.
INSERT INTO diagnosis.patients (id, organization_id, display_name)
VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a', 'Cora (moves from A to B)');
SET ROLE pgd_sec_admin_a;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000c1', '{"visit":1}', idempotency_key => 'visit-1') IS NOT NULL AS enqueued_in_a;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000c1', '{"visit":2}') IS NOT NULL AS keyless_in_a;
RESET ROLE;
UPDATE diagnosis.patients SET organization_id = '00000000-0000-0000-0000-00000000000b'
 WHERE id = '00000000-0000-0000-0000-0000000000c1';
SET ROLE pgd_sec_admin_b;
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000c1', '{"visit":1}', idempotency_key => 'visit-1')$$) AS same_key;
SELECT pgd_try($$SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000c1', '{"visit":2}')$$) AS same_inputs_in_flight;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000c1', '{"visit":3}', idempotency_key => 'visit-3') IS NOT NULL AS new_work_in_b;
SELECT count(*) AS runs_b_sees FROM diagnosis.runs WHERE patient_id = '00000000-0000-0000-0000-0000000000c1';
RESET ROLE;
SELECT event, o.name AS organization, actor FROM diagnosis.audit_log a JOIN diagnosis.organizations o ON o.id = a.organization_id
 JOIN diagnosis.runs r ON r.id = a.run_id
 WHERE r.patient_id = '00000000-0000-0000-0000-0000000000c1' ORDER BY a.id;

-- Cancelling a running run records the request and changes nothing else; only the worker ends the call. (The run
-- is put in running here by hand, with the state machine set aside, since this suite has no worker.)
SET ROLE pgd_sec_admin_a;
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a2', '{"cancel":"running"}', idempotency_key => 'cancel-running') IS NOT NULL AS enqueued;
RESET ROLE;
ALTER TABLE diagnosis.runs DISABLE TRIGGER runs_state_machine;
UPDATE diagnosis.runs SET status = 'running', attempt = 1, started_at = now(), worker_pid = 1, worker_token = 1
 WHERE idempotency_key = 'cancel-running';
ALTER TABLE diagnosis.runs ENABLE TRIGGER runs_state_machine;
SET ROLE pgd_sec_admin_a;
SELECT diagnosis.cancel_diagnosis(id) AS requested FROM diagnosis.runs WHERE idempotency_key = 'cancel-running';
SELECT diagnosis.cancel_diagnosis(id) AS requested_again FROM diagnosis.runs WHERE idempotency_key = 'cancel-running';
RESET ROLE;
SELECT status, cancel_requested_at IS NOT NULL AS requested, cancel_requested_by FROM diagnosis.runs
 WHERE idempotency_key = 'cancel-running';
-- The request is the only change a session may make to a running run, superuser included.
SELECT pgd_try($$UPDATE diagnosis.runs SET cancel_requested_by = 'someone else' WHERE idempotency_key = 'cancel-running'$$) AS change_requester;
SELECT pgd_try($$UPDATE diagnosis.runs SET status = 'cancelled', completed_at = now() WHERE idempotency_key = 'cancel-running'$$) AS cancel_directly;
SELECT event FROM diagnosis.audit_log a JOIN diagnosis.runs r ON r.id = a.run_id
 WHERE r.idempotency_key = 'cancel-running' ORDER BY a.id;
