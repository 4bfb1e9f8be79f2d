-- Retention: purge deletes terminal runs with their artifacts and audit rows, writes PURGED per organization,
-- and refuses everyone but superusers and organization admins.
SELECT status, count(*) FROM diagnosis.runs GROUP BY status ORDER BY status;
-- Nothing is old enough yet.
SELECT diagnosis.purge_runs('1 day') AS purged_older_than_a_day;
-- An admin purges only their organization.
SET ROLE pgd_admin1;
SELECT diagnosis.purge_runs('0 seconds') AS purged_by_admin1;
RESET ROLE;
SELECT organization_id, status, count(*) FROM diagnosis.runs GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) AS orphaned_audit_rows FROM diagnosis.audit_log a
WHERE a.run_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM diagnosis.runs r WHERE r.id = a.run_id);
SELECT organization_id, actor, details FROM diagnosis.audit_log WHERE event = 'PURGED' ORDER BY id;
-- A clinician may not purge.
SET ROLE pgd_clin_assigned;
SELECT pgd_try($$SELECT diagnosis.purge_runs('0 seconds')$$) AS clinician_purge;
RESET ROLE;
-- Purging runs only inside purge_runs: the guards are closed again afterwards.
SELECT pgd_try($$DELETE FROM diagnosis.audit_log WHERE event = 'PURGED'$$) AS delete_after_purge;
-- The superuser purges everywhere; queued runs are never purged.
SELECT diagnosis.cancel_diagnosis(id) FROM diagnosis.runs WHERE organization_id = '00000000-0000-0000-0000-00000000000b' AND status = 'queued';
SELECT diagnosis.purge_runs('0 seconds') AS purged_by_superuser;
SELECT status, count(*) FROM diagnosis.runs GROUP BY status ORDER BY status;
