// Whole-database checks of the guarantees: every run's audit chain is a legal path of the state machine, and no
// run has more than one diagnosis or more than one terminal event. Used by the integration and chaos suites.

/** Runs whose audit chain is not a legal path of SPEC section 3, or does not end in the run's status. */
export const ILLEGAL_CHAINS_SQL = `
WITH ev AS (
  SELECT a.run_id, a.id, a.event, a.status_from, a.status_to,
         lag(a.status_to) OVER (PARTITION BY a.run_id ORDER BY a.id) AS prev_to,
         row_number() OVER (PARTITION BY a.run_id ORDER BY a.id) AS n
  FROM diagnosis.audit_log a
  WHERE a.run_id IS NOT NULL AND a.event <> 'DEDUPLICATED'
), bad_step AS (
  SELECT run_id FROM ev
  WHERE (n = 1 AND NOT (event = 'ENQUEUED' AND status_to = 'queued'))
     OR (n > 1 AND (status_from IS DISTINCT FROM prev_to
                    OR (event, status_from, status_to) NOT IN (
                         ('LOCKED', 'queued', 'running'), ('RETRY_SCHEDULED', 'running', 'queued'),
                         ('RECOVERED', 'running', 'queued'), ('COMPLETED', 'running', 'completed'),
                         ('FAILED', 'running', 'failed'), ('CANCELLED', 'queued', 'cancelled'),
                         ('CANCELLED', 'running', 'cancelled'),
                         -- a sign-off (0.3.0) follows a completion and changes no status
                         ('ACKNOWLEDGED', 'completed', 'completed'))))
), last_event AS (
  SELECT DISTINCT ON (run_id) run_id, status_to FROM ev ORDER BY run_id, id DESC
)
SELECT count(DISTINCT run_id)::int AS illegal FROM (
  SELECT run_id FROM bad_step
  UNION ALL
  SELECT l.run_id FROM last_event l JOIN diagnosis.runs r ON r.id = l.run_id WHERE r.status <> l.status_to
  UNION ALL
  SELECT r.id FROM diagnosis.runs r WHERE NOT EXISTS (SELECT 1 FROM ev WHERE ev.run_id = r.id)
) broken`;

/** Runs with more than one diagnosis, more than one terminal event, or a completed run missing an artifact. */
export const DUPLICATES_SQL = `
SELECT
  (SELECT count(*)::int FROM (SELECT run_id FROM diagnosis.artifacts WHERE artifact_type = 'diagnosis_json'
                              GROUP BY run_id HAVING count(*) > 1) d) AS duplicate_diagnoses,
  (SELECT count(*)::int FROM (SELECT run_id FROM diagnosis.audit_log WHERE event IN ('COMPLETED', 'FAILED', 'CANCELLED')
                              GROUP BY run_id HAVING count(*) > 1) t) AS duplicate_terminal_events,
  (SELECT count(*)::int FROM diagnosis.runs r WHERE r.status = 'completed'
     AND (SELECT count(*) FROM diagnosis.artifacts a WHERE a.run_id = r.id) <> 3) AS incomplete_artifact_sets,
  (SELECT count(*)::int FROM diagnosis.runs r WHERE r.status <> 'completed'
     AND EXISTS (SELECT 1 FROM diagnosis.artifacts a WHERE a.run_id = r.id AND a.artifact_type = 'diagnosis_json'))
     AS diagnoses_on_unfinished_runs`;

export async function checkGuarantees(cluster) {
  const illegal = (await cluster.query(ILLEGAL_CHAINS_SQL)).rows[0].illegal;
  const dup = (await cluster.query(DUPLICATES_SQL)).rows[0];
  return { illegal, ...dup };
}
