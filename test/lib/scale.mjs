// A million runs, fast: what test/integration/runs_at_scale.test.mjs and bench/history.mjs read. The runs are
// written by the superuser with one INSERT ... SELECT, as a restore writes them: session_replication_role =
// replica skips the foreign-key triggers (every patient and organization exists by construction, and fillRuns
// checks it afterwards), the state machine guards updates and deletes, not inserts, and every CHECK constraint
// and index applies.
import { readFileSync } from 'node:fs';

export const SCALE_ORG = '00000000-0000-0000-0000-00000000000a';

/** CPU time (user + system) of a local process so far, in ms, from /proc (clock ticks of 10 ms). */
function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/**
 * An organization with `patients` patients and `runs` runs spread evenly over them and over `requesters` roles
 * (pgd_scale_clin_<n>), created over two years: completed, 1 % failed, the newest 1,000 queued. Returns the
 * insert's wall-clock milliseconds and its backend's CPU milliseconds (the machine may be shared).
 */
export async function fillRuns(cluster, { runs = 1_000_000, patients = 10_000, requesters = 50 } = {}) {
  await cluster.query('INSERT INTO diagnosis.organizations (id, name) VALUES ($1, $2)', [SCALE_ORG, 'Scale']);
  await cluster.query(`INSERT INTO diagnosis.patients (organization_id, display_name)
                       SELECT $1, 'Patient ' || n FROM generate_series(1, $2) n`, [SCALE_ORG, patients]);
  const started = Date.now();
  const client = await cluster.connect();
  let cpu;
  try {
    const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const cpuBefore = cpuMs(pid);
    await client.query('SET session_replication_role = replica');
    await client.query(`
      INSERT INTO diagnosis.runs (patient_id, organization_id, requested_by, status, inputs, inputs_hash, max_retries,
                                  attempt, error_code, created_at, run_after, started_at, completed_at, updated_at)
      SELECT ps.ids[1 + n % $2], $4, 'pgd_scale_clin_' || (n % $3),
             s.status, '{}', md5(n::text), 3, CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
             CASE WHEN s.status = 'failed' THEN 'NETWORK_ERROR' END, t.at, t.at,
             CASE WHEN s.status <> 'queued' THEN t.at END, CASE WHEN s.status <> 'queued' THEN t.at + interval '5 s' END,
             t.at
      FROM generate_series(1, $1) n
      CROSS JOIN (SELECT array_agg(id ORDER BY id) AS ids FROM diagnosis.patients WHERE organization_id = $4) ps
      CROSS JOIN LATERAL (SELECT now() - interval '2 years' * (1 - n::float8 / $1) AS at) t
      CROSS JOIN LATERAL (SELECT CASE WHEN n % 100 = 0 THEN 'failed' WHEN n > $1 - 1000 THEN 'queued'
                                      ELSE 'completed' END AS status) s`,
    [runs, patients, requesters, SCALE_ORG]);
    cpu = cpuMs(pid) - cpuBefore;
  } finally {
    await client.end();
  }
  const ms = Date.now() - started;
  // What the skipped foreign keys would have checked.
  const orphans = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.runs r WHERE NOT EXISTS
    (SELECT 1 FROM diagnosis.patients p WHERE p.id = r.patient_id AND p.organization_id = r.organization_id)`)).rows[0].n;
  if (orphans !== 0) throw new Error(`${orphans} runs without their patient`);
  await cluster.query('ANALYZE diagnosis.runs');
  return { ms, cpu };
}

/** A patient's last 20 runs, and a requester's. */
export const PATIENT_HISTORY = 'SELECT id, status, created_at FROM diagnosis.runs WHERE patient_id = $1 ORDER BY created_at DESC LIMIT 20';
export const REQUESTER_RUNS = 'SELECT id, status, created_at FROM diagnosis.runs WHERE requested_by = $1 ORDER BY created_at DESC LIMIT 20';

/** EXPLAIN (ANALYZE, BUFFERS) of a query as a role: every plan node, pages touched, execution time, rows. */
export async function explain(cluster, sql, params, role = 'postgres') {
  const plan = (await cluster.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`, params, role)).rows[0]['QUERY PLAN'][0];
  const nodes = [];
  const walk = (n) => { nodes.push(n); (n.Plans || []).forEach(walk); };
  walk(plan.Plan);
  return { nodes, pages: plan.Plan['Shared Hit Blocks'] + plan.Plan['Shared Read Blocks'], ms: plan['Execution Time'],
    rows: plan.Plan['Actual Rows'] };
}
