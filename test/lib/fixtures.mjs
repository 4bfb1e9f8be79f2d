// Test data and small queries shared by the integration suites.

/** An organization with `patients` patients, each with a set of vital signs (NEWS2 aggregate 3 or more). */
export async function createOrganization(cluster, { name = 'Test Hospital', patients = 10 } = {}) {
  const org = (await cluster.query('INSERT INTO diagnosis.organizations (name) VALUES ($1) RETURNING id', [name])).rows[0].id;
  const ids = (await cluster.query(`
    INSERT INTO diagnosis.patients (organization_id, display_name)
    SELECT $1, 'Patient ' || n FROM generate_series(1, $2) n RETURNING id`, [org, patients])).rows.map((r) => r.id);
  await cluster.query(`
    INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
    SELECT p, v.code, v.value, v.unit, now() - interval '30 minutes'
    FROM unnest($1::uuid[]) p,
         (VALUES ('9279-1', 22, '/min'), ('spo2', 95, '%'), ('8480-6', 118, 'mmHg'), ('heart_rate', 96, '/min'),
                 ('temperature', 37.9, 'Cel')) v(code, value, unit)`, [ids]);
  return { org, patients: ids };
}

/** Enqueues as the superuser; options are enqueue_diagnosis's named arguments. Returns the run id. */
export async function enqueue(cluster, patient, inputs = {}, { key = null, priority = 0, maxRetries = null, runAfter = null } = {}) {
  const r = await cluster.query(
    `SELECT diagnosis.enqueue_diagnosis($1, $2::jsonb, $3, $4, $5, $6) AS id`,
    [patient, JSON.stringify(inputs), key, priority, runAfter, maxRetries]);
  return r.rows[0].id;
}

export async function run(cluster, id) {
  return (await cluster.query('SELECT * FROM diagnosis.runs WHERE id = $1', [id])).rows[0];
}

/** The run's audit events in order, e.g. ['ENQUEUED', 'LOCKED', 'COMPLETED']. */
export async function chain(cluster, id) {
  return (await cluster.query('SELECT event FROM diagnosis.audit_log WHERE run_id = $1 ORDER BY id', [id])).rows
    .map((r) => r.event);
}

export async function artifacts(cluster, id) {
  return (await cluster.query(`
    SELECT artifact_type, risk_level, confidence_score, needs_review, recommendations_count, primary_findings,
           content_sha256 = encode(sha256(convert_to(artifact_data::text, 'UTF8')), 'hex') AS sha_ok
    FROM diagnosis.artifacts WHERE run_id = $1 ORDER BY sequence_order`, [id])).rows;
}

/** Waits until every run in `ids` is terminal. */
export async function waitTerminal(cluster, ids, timeout = 30000) {
  await cluster.waitFor(async () => {
    const r = await cluster.query(
      "SELECT count(*)::int AS open FROM diagnosis.runs WHERE id = ANY($1) AND status IN ('queued', 'running')", [ids]);
    return r.rows[0].open === 0;
  }, { timeout, what: `${ids.length} run(s) to finish` });
}
