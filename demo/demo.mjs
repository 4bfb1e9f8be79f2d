// The main job: a synthetic cohort diagnosed end to end through pg_diagnosis and the reference MCP server, with a
// live progress display and a summary a clinician and a DBA can read.
//   node demo/demo.mjs [--patients N] [--seed S] [--fhir] [--keep]
// --fhir: the cohort is kept as FHIR R4 Observation resources (demo/fhir_cohort.sql) and every context pack is
// built from them by diagnosis.fhir_context_pack; the diagnoses are also shown as FHIR (diagnosis.news2_fhir).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { startCluster } from '../test/lib/cluster.mjs';
import { startMcpServer } from '../test/lib/mcp.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const patients = Number(option('patients', 2000));
const seed = Number(option('seed', 42));
const keep = argv.includes('--keep');
const fhir = argv.includes('--fhir');
if (!Number.isInteger(patients) || patients < 1 || patients > 1000000) throw new Error('--patients must be 1..1000000');

const tty = process.stdout.isTTY;
const bold = (s) => (tty ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s = '') => console.log(s);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CLINICIANS = ['pgd_demo_clin_a1', 'pgd_demo_clin_a2', 'pgd_demo_clin_a3', 'pgd_demo_clin_b1', 'pgd_demo_clin_b2'];

function table(rows) {
  if (!rows.length) return '  (no rows)';
  const cols = Object.keys(rows[0]);
  const text = (v) => (v === null || v === undefined ? '' : Array.isArray(v) ? `{${v.join(',')}}` : String(v));
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => text(r[c]).length)));
  const line = (vals) => '  ' + vals.map((v, i) => v.padEnd(width[i])).join(' | ');
  return [line(cols), '  ' + width.map((w) => '-'.repeat(w)).join('-+-'), ...rows.map((r) => line(cols.map((c) => text(r[c]))))].join('\n');
}

/** Shows a query as psql would run it, then its result. */
async function show(cluster, title, sql, user = 'postgres', params = []) {
  say(bold(`\n${title}`));
  say(`  $ psql -h 127.0.0.1 -p ${cluster.port} -U ${user} postgres`);
  say(sql.trim().split('\n').map((l) => `  ${user === 'postgres' ? 'postgres=#' : `${user}=>`} ${l.trim()}`).join('\n'));
  const result = await cluster.query(sql, params, user);
  say(table(result.rows));
  return result.rows;
}

/** The FHIR side: one resource the pack read, and the diagnosis as the NEWS2 Observation an EHR would read. */
async function showFhir(cluster, critical) {
  await show(cluster, 'Its newest FHIR inputs (fhir.observation, the relation diagnosis.fhir_source names)', `
    SELECT resource #>> '{code,coding,0,code}' AS code, resource ->> 'status' AS status,
           resource ->> 'effectiveDateTime' AS effective,
           coalesce(resource #>> '{valueQuantity,value}', resource #>> '{component,0,valueQuantity,value}',
                    resource #>> '{valueCodeableConcept,coding,0,display}') AS value,
           coalesce(resource #>> '{valueQuantity,code}', resource #>> '{component,0,valueQuantity,code}') AS unit
    FROM fhir.observation WHERE resource -> 'subject' ->> 'reference' = 'Patient/${critical.patient_id}'
    ORDER BY resource ->> 'effectiveDateTime' DESC, resource ->> 'id' LIMIT 8;`);
  await show(cluster, `Its diagnosis as FHIR: diagnosis.news2_fhir (UK Core NEWS2 Observation), as ${critical.clinician} reads it`, `
    SELECT c #>> '{code,coding,0,code}' AS snomed_ct, c #>> '{code,coding,0,display}' AS component,
           c #>> '{valueQuantity,value}' AS score
    FROM diagnosis.news2_fhir n, jsonb_array_elements(n.resource -> 'component') c
    WHERE n.run_id = '${critical.run_id}';`, critical.clinician);
  await show(cluster, 'The same Observation: aggregate, interpretation, time and inputs', `
    SELECT resource #>> '{code,coding,0,code}' AS code, resource #>> '{valueQuantity,value}' AS news2,
           resource #>> '{interpretation,0,text}' AS interpretation, resource ->> 'effectiveDateTime' AS effective,
           jsonb_array_length(resource -> 'derivedFrom') AS derived_from, resource #>> '{subject,reference}' AS subject
    FROM diagnosis.news2_fhir WHERE run_id = '${critical.run_id}';`, critical.clinician);
  await show(cluster, 'SpO2 scale 2 (hypercapnic respiratory failure) against scale 1, by risk level', `
    SELECT n.resource -> 'component' @> '[{"code": {"coding": [{"code": "1104321000000108"}]}}]' AS scale_2,
           l.risk_level, count(*) AS patients
    FROM diagnosis.news2_fhir n JOIN diagnosis.latest_diagnosis l ON l.run_id = n.run_id
    WHERE n.resource ? 'component' GROUP BY 1, 2 ORDER BY 1, 2;`);
}

/**
 * The clinician's day (0.3.0): an assessment completed while the MCP endpoint is down (demo/recipe.sql keys its run
 * on the assessment), so the keyed run fails and the key returns the failed run for ever; once the endpoint is
 * back, the clinician re-runs it, and signs the new diagnosis off.
 */
async function showRerun(cluster, critical) {
  const clinician = critical.clinician;
  say(bold('\nA keyed run that failed while the MCP endpoint was down, re-run (demo/recipe.sql keys on the assessment)'));
  await cluster.query(readFileSync(join(here, 'recipe.sql'), 'utf8'));
  // No retries for this request, so it fails at once (a new connection sees the reloaded setting).
  await cluster.reload({ 'diagnosis.max_retries': 0 });
  await cluster.waitFor(async () => (await cluster.query(`SELECT current_setting('diagnosis.max_retries') AS v`)).rows[0].v === '0',
    { what: 'the reload' });
  const port = new URL(server.url).port;
  await server.stop();
  say(`  (the reference MCP server on port ${port} is stopped)`);
  const assessment = (await cluster.query(`INSERT INTO app.assessments (patient_id, status) VALUES ($1, 'completed')
                                           RETURNING id, diagnosis_run`, [critical.patient_id], clinician)).rows[0];
  say(`  ${clinician}=> INSERT INTO app.assessments (patient_id, status) VALUES ('${critical.patient_id}', 'completed');`);
  const failed = assessment.diagnosis_run;
  await cluster.query(`SELECT diagnosis.wait_for_run($1, '60 s')`, [failed], clinician);
  const key = `assessment:${assessment.id}`;
  const again = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, $2, $3) AS id`,
    [critical.patient_id, { assessment_id: Number(assessment.id), reason: 'assessment completed' }, key], clinician)).rows[0].id;
  await show(cluster, `The run failed; enqueueing with its key again returns the failed run (${again === failed ? 'the same id' : 'UNEXPECTED: another run'})`, `
    SELECT status, error_code, idempotency_key, left(error_message, 50) AS error_message
    FROM diagnosis.runs WHERE id = '${failed}';`, clinician);

  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse'], { PORT: port });
  say(`  (the reference MCP server is back on port ${port})`);
  await show(cluster, 'The clinician re-runs it: a new run of the same request, linked to the failed one, without the key', `
    SELECT diagnosis.rerun_diagnosis('${failed}', 'MCP endpoint was down') AS rerun;`, clinician);
  const rerun = (await cluster.query('SELECT id FROM diagnosis.runs WHERE rerun_of = $1', [failed])).rows[0].id;
  await cluster.query(`SELECT diagnosis.wait_for_run($1, '60 s')`, [rerun], clinician);
  await show(cluster, 'Both runs, and the re-run\'s audit trail (its reason in the ENQUEUED row)', `
    SELECT id = '${rerun}' AS rerun, status, error_code, idempotency_key, rerun_of IS NOT NULL AS linked
    FROM diagnosis.runs WHERE id IN ('${failed}', '${rerun}') ORDER BY created_at;`, clinician);
  await show(cluster, 'The re-run\'s audit trail', `
    SELECT event, actor, details ->> 'reason' AS reason FROM diagnosis.audit_log WHERE run_id = '${rerun}' ORDER BY id;`, clinician);
  const inQueue = `SELECT count(*) AS in_review_queue FROM diagnosis.review_queue WHERE run_id = '${rerun}';`;
  await show(cluster, 'The new diagnosis waits in the review queue', inQueue, clinician);
  await show(cluster, 'The clinician signs it off (diagnosis.acknowledgements, an ACKNOWLEDGED audit row)', `
    SELECT diagnosis.acknowledge_diagnosis('${rerun}', 'reviewed after the outage') AS acknowledgement;`, clinician);
  await show(cluster, 'It has left the review queue', inQueue, clinician);
}

let server;
let cluster;
async function cleanUp() {
  if (keep) return;
  if (cluster) cluster.destroy();
  if (server) await server.stop();
}
process.on('SIGINT', async () => {
  await cleanUp();
  process.exit(130);
});

try {
  say(bold('pg_diagnosis demo') + ` — ${patients} synthetic patients, seed ${seed}${fhir ? ', charted as FHIR' : ''}`);
  server = await startMcpServer(['--mode', 'stateful', '--reply', 'sse']);
  say(`  reference MCP server (NEWS2) listening at ${server.url}`);
  const fhirSettings = fhir
    ? { 'diagnosis.context_pack_function': 'diagnosis.fhir_context_pack', 'diagnosis.fhir_source': 'fhir.observation' }
    : {};
  cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, 'diagnosis.max_inflight': 64, ...fhirSettings } });
  say(`  PostgreSQL 15 cluster with pg_diagnosis preloaded on 127.0.0.1:${cluster.port} (data in ${cluster.dir})`);

  const loadStarted = Date.now();
  const client = await cluster.connect();
  await client.query(`SELECT set_config('demo.patients', $1, false), set_config('demo.seed', $2, false)`, [String(patients), String(seed)]);
  const loaded = await client.query(readFileSync(join(here, 'cohort.sql'), 'utf8'));
  const mix = loaded.at(-2).rows.map((r) => `${r.trajectory} ${r.patients}`).join(', ');
  const obs = (await client.query('SELECT count(*)::int AS n FROM diagnosis.observations')).rows[0].n;
  const asFhir = fhir ? (await client.query(readFileSync(join(here, 'fhir_cohort.sql'), 'utf8'))).at(-1).rows[0] : null;
  await client.end();
  say(`  cohort loaded in ${Date.now() - loadStarted} ms: ${mix}; ${obs} vital-sign observations`);
  if (asFhir) {
    say(`  as FHIR: ${asFhir.resources} Observation resources in fhir.observation (diagnosis.fhir_source), ` +
        `${asFhir.spo2_scale_2} patients on SpO2 scale 2; packs built by diagnosis.fhir_context_pack`);
  }

  // Every clinician enqueues their own patients, as themselves: row-level security decides which patients they see.
  say(bold('\nEnqueueing as each clinician (the batch API, under row-level security)'));
  const started = Date.now();
  for (const clinician of CLINICIANS) {
    const r = await cluster.query(`
      SELECT count(diagnosis.enqueue_diagnosis(p.id, jsonb_build_object('reason', 'ward round'),
                                               'ward-round:' || p.id)) AS runs
      FROM diagnosis.patients p`, [], clinician);
    say(`  ${clinician.padEnd(18)} enqueued ${r.rows[0].runs} runs`);
  }
  const total = (await cluster.query('SELECT count(*)::int AS n FROM diagnosis.runs')).rows[0].n;

  // Live progress while the worker drains the queue.
  say(bold('\nDiagnosing'));
  let lastLine = 0;
  for (;;) {
    const s = (await cluster.query('SELECT queued, running, completed, failed FROM diagnosis.queue_stats')).rows[0];
    const done = Number(s.completed) + Number(s.failed);
    const elapsed = (Date.now() - started) / 1000;
    const rate = elapsed > 0 ? Math.round(done / elapsed) : 0;
    const width = 30;
    const filled = Math.round((done / total) * width);
    const line = `  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}  completed ${s.completed}  failed ${s.failed}  queued ${s.queued}  running ${s.running}  ${rate} runs/s  ${elapsed.toFixed(1)} s`;
    if (tty) process.stdout.write(`\r${line}\x1b[K`);
    else if (Date.now() - lastLine >= 2000 || done === total) {
      say(line);
      lastLine = Date.now();
    }
    if (done === total) break;
    await sleep(tty ? 200 : 250);
  }
  if (tty) process.stdout.write('\n');
  const seconds = (Date.now() - started) / 1000;
  say(`  ${total} runs finished in ${seconds.toFixed(2)} s: ${Math.round(total / seconds)} runs/s end to end ` +
      '(enqueue to committed artifacts and audit)');

  await show(cluster, 'Runs by status', 'SELECT status, count(*) AS runs FROM diagnosis.runs GROUP BY status ORDER BY status;');
  await show(cluster, 'Diagnoses by NEWS2 risk level', `
    SELECT risk_level, count(*) AS patients, count(*) FILTER (WHERE needs_review) AS needs_review,
           round(avg(confidence_score)::numeric, 2) AS avg_confidence
    FROM diagnosis.latest_diagnosis GROUP BY risk_level
    ORDER BY array_position(ARRAY['low', 'medium', 'high', 'critical'], risk_level);`);
  await show(cluster, 'Processing time per run (worker-measured, ms)', `
    SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY processing_time_ms) AS p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY processing_time_ms) AS p95,
           max(processing_time_ms) AS max
    FROM diagnosis.runs WHERE status = 'completed';`);

  // One critical patient's diagnosis, as their clinician sees it.
  const critical = (await cluster.query(`
    SELECT l.patient_id, l.run_id, a.role_name AS clinician FROM diagnosis.latest_diagnosis l
    JOIN diagnosis.patient_assignments a ON a.patient_id = l.patient_id
    WHERE l.risk_level = 'critical' ORDER BY l.display_name LIMIT 1`)).rows[0]
    ?? (await cluster.query(`SELECT l.patient_id, l.run_id, a.role_name AS clinician FROM diagnosis.latest_diagnosis l
          JOIN diagnosis.patient_assignments a ON a.patient_id = l.patient_id ORDER BY l.risk_level, l.display_name LIMIT 1`)).rows[0];
  say(bold(`\nOne diagnosis, as ${critical.clinician} sees it`));
  const sql = `SELECT jsonb_pretty(artifact_data) FROM diagnosis.artifacts WHERE run_id = '${critical.run_id}' AND artifact_type = 'diagnosis_json';`;
  say(`  $ psql -h 127.0.0.1 -p ${cluster.port} -U ${critical.clinician} postgres`);
  say(`  ${critical.clinician}=> ${sql}`);
  const doc = (await cluster.query(sql, [], critical.clinician)).rows[0].jsonb_pretty;
  say(doc.split('\n').map((l) => `  ${l}`).join('\n'));
  await show(cluster, 'Its audit trail', `
    SELECT event, status_from, status_to, attempt, actor, to_char(created_at, 'HH24:MI:SS.MS') AS at
    FROM diagnosis.audit_log WHERE run_id = '${critical.run_id}' ORDER BY id;`, critical.clinician);
  await show(cluster, `The review queue of ${critical.clinician}, most urgent first (first 5)`, `
    SELECT display_name, risk_level, confidence_score, needs_review, left(summary, 60) AS summary
    FROM diagnosis.review_queue LIMIT 5;`, critical.clinician);
  await show(cluster, `The same queue by urgency: critical, high, medium, then needs-review (newest first in each)`, `
    SELECT urgency, risk_level, count(*) AS patients, count(*) FILTER (WHERE needs_review) AS needs_review
    FROM diagnosis.review_queue GROUP BY urgency, risk_level ORDER BY urgency;`, critical.clinician);
  if (fhir) await showFhir(cluster, critical);

  say(bold('\nRow-level security: a clinician who is not assigned to this patient'));
  say(`  pgd_demo_unassigned=> SELECT diagnosis.enqueue_diagnosis('${critical.patient_id}');`);
  try {
    await cluster.query('SELECT diagnosis.enqueue_diagnosis($1)', [critical.patient_id], 'pgd_demo_unassigned');
    say('  UNEXPECTED: the enqueue was accepted');
  } catch (error) {
    say(`  ERROR:  ${error.message}   (SQLSTATE ${error.code}: the same answer as for a patient that does not exist)`);
  }
  const seen = (await cluster.query('SELECT count(*)::int AS n FROM diagnosis.runs', [], 'pgd_demo_unassigned')).rows[0].n;
  say(`  pgd_demo_unassigned=> SELECT count(*) FROM diagnosis.runs;  -- ${seen} rows visible`);

  say(bold('\nIdempotency: the clinician re-enqueues the same ward round'));
  const again = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis($1, '{"reason":"ward round"}', $2) AS id`,
    [critical.patient_id, `ward-round:${critical.patient_id}`], critical.clinician)).rows[0].id;
  say(`  ${critical.clinician}=> SELECT diagnosis.enqueue_diagnosis('${critical.patient_id}', '{"reason":"ward round"}', 'ward-round:${critical.patient_id}');`);
  say(`  -> ${again} (${again === critical.run_id ? 'the same run: a DEDUPLICATED audit row, no second diagnosis' : 'UNEXPECTED: a new run'})`);

  await showRerun(cluster, critical);

  await show(cluster, 'Workers', 'SELECT pid, state, inflight, runs_done FROM diagnosis.worker_status();');

  if (keep) {
    cluster.detach();
    server.detach();
    say(bold('\nLeft running for exploration:'));
    say(`  psql -h 127.0.0.1 -p ${cluster.port} -U postgres postgres        (or -U pgd_demo_clin_a1, pgd_demo_admin_a, ...)`);
    say(`  stop: runuser -u postgres -- pg_ctl -D ${cluster.data} stop && kill ${server.proc.pid} && rm -rf ${cluster.dir}`);
  }
} catch (error) {
  console.error(`demo failed: ${error.stack ?? error}`);
  if (cluster) console.error(cluster.log().split('\n').filter((l) => /ERROR|FATAL|WARNING/.test(l)).slice(-10).join('\n'));
  process.exitCode = 1;
} finally {
  await cleanUp();
}
