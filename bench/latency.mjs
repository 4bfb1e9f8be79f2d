// The model-latency regime, idle cost by state, and fairness, for bench/bench.mjs.
//  - latencyRegime: an endpoint that answers after seconds (fast-mcp.mjs --delay-ms, SSE with a progress
//    notification), throughput against Little's law (max_inflight x workers / latency) and the worker's private
//    memory per call in flight, for each max_inflight; graphile-worker on the same endpoint at several concurrencies.
//  - idleStates: the worker's CPU per minute when there is nothing it can do, state by state.
//  - fairness: how long another organization's run waits behind a backlog of one organization.
import { readFileSync } from 'node:fs';
import { run as runGraphileWorker, Logger } from 'graphile-worker';
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, procStats, openRuns, loadBenchPatients } from './lib.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssAnonMb = (pid) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/RssAnon:\s+(\d+)/)[1]) / 1024;
const patient = (g) => `('b0000000-0000-4000-8000-' || lpad(to_hex(1 + ${g} % 1000), 12, '0'))::uuid`;

/**
 * Runs queued 4 x max_inflight deep with claiming paused, then released: with every call taking `latency`, the
 * worker completes one wave of max_inflight runs per latency. Completions are counted from 0.5 to 3.5 latencies
 * after release (three waves, whatever the ramp), so the rate is the steady state that Little's law predicts.
 */
export async function onePoint(cluster, pid, inflight, latencyMs, label) {
  await cluster.reload({ 'diagnosis.enabled': 'off', 'diagnosis.max_inflight': inflight });
  await sleep(300);
  const n = inflight * 4;
  await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(${patient('g')}, jsonb_build_object('latency', $1::text, 'n', g)))
                       FROM generate_series(1, $2::int) g`, [label, n]);
  const rss0 = rssAnonMb(pid);
  const released = Date.now();
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  let rssPeak = rss0;
  const deadline = released + latencyMs * 3.5;
  while (Date.now() < deadline) {
    rssPeak = Math.max(rssPeak, rssAnonMb(pid));
    await sleep(200);
  }
  const status = (await cluster.query('SELECT call_limit, fd_limit FROM diagnosis.worker_status() LIMIT 1')).rows[0];
  const counted = (await cluster.query(`
    SELECT count(*)::int AS n FROM diagnosis.runs
     WHERE inputs->>'latency' = $1 AND status = 'completed'
       AND completed_at >= to_timestamp($2::float8 / 1000) AND completed_at < to_timestamp($3::float8 / 1000)`,
  [label, released + latencyMs * 0.5, released + latencyMs * 3.5])).rows[0].n;
  while (Number(await openRuns(cluster)) > 0) await sleep(200);
  const failed = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.runs WHERE inputs->>'latency' = $1 AND status <> 'completed'`,
    [label])).rows[0].n;
  const rate = counted / (latencyMs * 3 / 1000);
  const little = inflight / (latencyMs / 1000);
  return { inflight, rate: Math.round(rate), little: Math.round(little), share: rate / little, failed,
    callLimit: status.call_limit, fdLimit: status.fd_limit, rssMb: rssPeak, rssIdleMb: rss0,
    perCallKb: ((rssPeak - rss0) * 1024) / inflight };
}

export async function latencyRegime(cluster, { quick, row }) {
  const latencyMs = quick ? 2000 : 5000;
  const points = quick ? [64, 256, 1024] : [64, 256, 1024, 2048, 4096];
  const endpoint = await startFastEndpoint(['--delay-ms', String(latencyMs), '--sse']);
  const out = { latencyMs, points: [], graphile: [] };
  try {
    await cluster.reload({ 'diagnosis.mcp_url': endpoint.url });
    await sleep(300);
    const pid = (await cluster.workerPids())[0];
    for (const inflight of points) {
      const p = await onePoint(cluster, pid, inflight, latencyMs, `lat-${inflight}`);
      out.points.push(p);
      row(`latency ${latencyMs} ms, max_inflight ${inflight}: runs/s (Little's law ${p.little})`, p.rate, 'runs/s',
        `${(p.share * 100).toFixed(1)} % of Little's law; ${p.failed} failed; call limit ${p.callLimit}, fd limit ${p.fdLimit}; ` +
        `worker RssAnon ${p.rssMb.toFixed(1)} MB (${p.perCallKb.toFixed(1)} kB per call in flight)`);
    }
    out.graphile = await graphileAtLatency(cluster, endpoint.url, latencyMs, quick ? [64, 256] : [256, 1024, 4096], row);
  } finally {
    await endpoint.stop();
    await cluster.reload({ 'diagnosis.max_inflight': 128 });
  }
  return out;
}

/** graphile-worker's job, the same work as a pg_diagnosis run: the claim (status, attempt, LOCKED audit row, the
 * context pack from diagnosis.build_context_pack), the same tools/call, then the three artifacts, the status and
 * the COMPLETED audit row in one transaction. Reads a JSON answer or an SSE stream (the event with an id). */
export function graphileTask(url, onDone) {
  return async ({ run_id }, helpers) => {
    const claim = await helpers.withPgClient((c) => c.query(`
      WITH u AS (UPDATE gw.runs SET status = 'running', attempt = attempt + 1, started_at = now(), worker_pid = pg_backend_pid()
                 WHERE id = $1 RETURNING id, patient_id, organization_id, attempt, inputs),
           a AS (INSERT INTO gw.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor)
                 SELECT id, organization_id, 'LOCKED', 'queued', 'running', attempt, current_user FROM u)
      SELECT u.*, diagnosis.build_context_pack(u.patient_id) || jsonb_build_object('inputs', u.inputs) AS pack FROM u`, [run_id]));
    const r = claim.rows[0];
    const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: `${r.id}:${r.attempt}`, method: 'tools/call', params: { name: 'run_diagnosis',
        _meta: { progressToken: `${r.id}:${r.attempt}` },
        arguments: { run_id: r.id, patient_id: r.patient_id, attempt: r.attempt, schema_version: 'v1', inputs: r.inputs, context_pack: r.pack } } }) });
    const text = await response.text();
    const events = text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));
    const result = (events.length ? events.find((e) => e.id !== undefined) : JSON.parse(text)).result;
    await helpers.withPgClient(async (c) => {
      await c.query('BEGIN');
      await c.query(`
        INSERT INTO gw.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256, risk_level,
                                  confidence_score, primary_findings, recommendations_count, needs_review, sequence_order)
        SELECT $1, $2, $3, t, d, encode(sha256(convert_to(d::text, 'UTF8')), 'hex'),
               CASE WHEN s = 3 THEN d->>'risk_level' END, CASE WHEN s = 3 THEN (d->>'confidence_score')::real END,
               CASE WHEN s = 3 THEN ARRAY(SELECT jsonb_array_elements_text(d->'primary_findings')) END,
               CASE WHEN s = 3 THEN jsonb_array_length(d->'recommendations') END,
               CASE WHEN s = 3 THEN (d->>'confidence_score')::float8 < 0.5 END, s
        FROM (VALUES ('context_pack', $4::jsonb, 1), ('mcp_response', $5::jsonb, 2), ('diagnosis_json', $6::jsonb, 3)) v(t, d, s)`,
      [r.id, r.patient_id, r.organization_id, r.pack, result, result.structuredContent]);
      await c.query(`UPDATE gw.runs SET status = 'completed', completed_at = now(), updated_at = now() WHERE id = $1`, [r.id]);
      await c.query(`INSERT INTO gw.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor)
                     VALUES ($1, $2, 'COMPLETED', 'running', 'completed', $3, current_user)`, [r.id, r.organization_id, r.attempt]);
      await c.query('COMMIT');
    });
    onDone();
  };
}

/** graphile-worker with `concurrency` jobs at once, measured like onePoint (4 waves queued, 3 counted). */
async function graphileAtLatency(cluster, url, latencyMs, concurrencies, row) {
  const connectionString = `postgres://postgres@127.0.0.1:${cluster.port}/postgres`;
  const out = [];
  for (const concurrency of concurrencies) {
    const label = `gwlat-${concurrency}`;
    const n = concurrency * 4;
    await cluster.query(`
      INSERT INTO gw.runs (patient_id, organization_id, inputs, inputs_hash, max_retries)
      SELECT ${patient('g')}, 'b0000000-0000-4000-8000-000000000000', jsonb_build_object('bench', $1::text, 'n', g), md5($1 || g), 3
      FROM generate_series(1, $2::int) g`, [label, n]);
    let done = 0;
    // The pool is shared by the jobs only around their SQL (never across the call): 60 connections serve them all.
    const runner = await runGraphileWorker({
      connectionString, concurrency, noHandleSignals: true, pollInterval: 100, taskList: { diagnose: graphileTask(url, () => { done++; }) },
      preset: { worker: { maxPoolSize: 60, localQueue: { size: Math.min(concurrency + 1, 1000) }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
      logger: new Logger(() => () => {}),
    });
    const released = Date.now();
    await cluster.query(`SELECT count(graphile_worker.add_job('diagnose', json_build_object('run_id', id))) FROM gw.runs
                         WHERE inputs->>'bench' = $1`, [label]);
    await sleep(Math.max(0, released + latencyMs * 3.5 - Date.now()));
    const counted = (await cluster.query(`
      SELECT count(*)::int AS n FROM gw.runs WHERE inputs->>'bench' = $1 AND status = 'completed'
         AND completed_at >= to_timestamp($2::float8 / 1000) AND completed_at < to_timestamp($3::float8 / 1000)`,
    [label, released + latencyMs * 0.5, released + latencyMs * 3.5])).rows[0].n;
    const deadline = Date.now() + latencyMs * 20;
    while (done < n && Date.now() < deadline) await sleep(100);
    await runner.stop();
    const rate = Math.round(counted / (latencyMs * 3 / 1000));
    const little = Math.round(concurrency / (latencyMs / 1000));
    out.push({ concurrency, rate, little, failed: n - done });
    row(`graphile-worker, latency ${latencyMs} ms, concurrency ${concurrency}: runs/s (Little's law ${little})`, rate, 'runs/s',
      `${((rate / little) * 100).toFixed(1)} %; ${n - done} of ${n} not completed`);
  }
  return out;
}

/** CPU per minute of one process over `seconds`. */
async function cpuPerMinute(pid, seconds) {
  const c0 = procStats(pid).cpuSeconds;
  await sleep(seconds * 1000);
  return Math.round(((procStats(pid).cpuSeconds - c0) * 60 * 1000) / seconds);
}

/**
 * The worker's CPU per minute in each state where it has nothing to do: no extension in its database, an
 * endpoint that refuses connections (with a run waiting to be retried), claiming paused with runs queued, the only
 * due run locked by another transaction (claims skip it), and every slot busy with a slow call.
 */
export async function idleStates({ quick, row, settings }) {
  const seconds = quick ? 10 : 30;
  const out = {};
  const cluster = await startCluster({ settings: { ...settings, 'diagnosis.mcp_url': 'http://127.0.0.1:9/mcp' } });
  try {
    await loadBenchPatients(cluster);
    Object.assign(out, await noExtension(settings, seconds, row), await otherStates(cluster, seconds, row));
  } finally {
    cluster.destroy();
  }
  return out;
}

async function noExtension(settings, seconds, row) {
  const out = {};
  {
    const bare = await startCluster({ settings: { ...settings, 'diagnosis.mcp_url': 'http://127.0.0.1:9/mcp' }, createExtension: false });
    try {
      await sleep(5000);
      const pids = (await bare.query(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker'`)).rows;
      out.noExtension = pids.length ? await cpuPerMinute(pids[0].pid, seconds) : 0;
      row('worker CPU per minute: no extension in its database', out.noExtension, 'ms',
        pids.length ? `${seconds} s measured` : 'no worker process at all');
    } finally {
      bare.destroy();
    }
  }
  return out;
}

async function otherStates(cluster, seconds, row) {
  const out = {};
  await cluster.waitFor(async () => (await cluster.workerPids()).length > 0, { what: 'the worker to start' });
  const pid = (await cluster.workerPids())[0];
  const one = `SELECT diagnosis.enqueue_diagnosis(${patient('1')}, jsonb_build_object('idle', $1::text), max_retries => 100)`;
  // Endpoint down: port 9 (discard) refuses; the run waits out its backoff between attempts.
  await cluster.reload({ 'diagnosis.mcp_url': 'http://127.0.0.1:9/mcp' });
  await sleep(300);
  await cluster.query(one, ['endpoint-down']);
  await sleep(2000);
  out.noEndpoint = await cpuPerMinute(pid, seconds);
  row('worker CPU per minute: endpoint down, a run waiting for its retry', out.noEndpoint, 'ms', `${seconds} s measured`);
  await cluster.reload({ 'diagnosis.enabled': 'off' });
  await sleep(300);
  await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(${patient('g')}, jsonb_build_object('idle-paused', g)))
                       FROM generate_series(1, 1000) g`);
  await sleep(1000);
  out.paused = await cpuPerMinute(pid, seconds);
  row('worker CPU per minute: paused (diagnosis.enabled off), 1,000 runs queued', out.paused, 'ms', `${seconds} s measured`);
  // Locked: every queued run held FOR UPDATE by another session; the worker's claims skip them.
  const holder = await cluster.connect();
  try {
    await holder.query('BEGIN');
    await holder.query(`SELECT id FROM diagnosis.runs WHERE status = 'queued' FOR UPDATE`);
    await cluster.reload({ 'diagnosis.enabled': 'on' });
    await sleep(2000);
    out.locked = await cpuPerMinute(pid, seconds);
    row('worker CPU per minute: due runs locked by another transaction', out.locked, 'ms', `${seconds} s measured`);
  } finally {
    await holder.query('ROLLBACK');
    await holder.end();
  }
  // The endpoint is back but slow: every slot holds a call.
  const slow = await startFastEndpoint(['--delay-ms', String((seconds + 30) * 1000), '--sse']);
  try {
    await cluster.reload({ 'diagnosis.mcp_url': slow.url, 'diagnosis.max_inflight': 64, 'diagnosis.request_timeout_ms': 600000 });
    await sleep(3000);
    const inflight = (await cluster.query('SELECT inflight FROM diagnosis.worker_status() LIMIT 1')).rows[0].inflight;
    out.inflight = await cpuPerMinute(pid, seconds);
    row(`worker CPU per minute: ${inflight} calls in flight, none answering`, out.inflight, 'ms', `${seconds} s measured`);
    await cluster.reload({ 'diagnosis.enabled': 'off' });
    await sleep(300);
  } finally {
    await slow.stop();
  }
  return out;
}

/** Another organization's run enqueued once a backlog of `backlog` runs of the bench organization is draining:
 * its enqueue-to-claim time, against how long the backlog takes. */
export async function fairness({ backlog, url, row, settings }) {
  const cluster = await startCluster({ settings: { ...settings, 'diagnosis.mcp_url': url, 'diagnosis.enabled': 'off' } });
  try {
    await loadBenchPatients(cluster);
    return await fairnessOn(cluster, backlog, row);
  } finally {
    cluster.destroy();
  }
}

async function fairnessOn(cluster, backlog, row) {
  await cluster.query(`
    INSERT INTO diagnosis.organizations (id, name) VALUES ('c0000000-0000-4000-8000-000000000000', 'Other');
    INSERT INTO diagnosis.patients (id, organization_id) VALUES ('c0000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-000000000000');`);
  for (let from = 0; from < backlog; from += 20000) {
    await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(${patient('g')}, jsonb_build_object('backlog', g)))
                         FROM generate_series($1::int, $2::int) g`, [from, Math.min(backlog, from + 20000) - 1]);
  }
  const started = Date.now();
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  await sleep(1000);
  const sent = Date.now();
  const id = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis('c0000000-0000-4000-8000-000000000001', '{"fair":1}') AS id`)).rows[0].id;
  let lockedAt = null;
  while (!lockedAt) {
    const r = (await cluster.query(`SELECT extract(epoch FROM created_at) * 1000 AS at FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'LOCKED'`, [id])).rows[0];
    if (r) lockedAt = Number(r.at);
    else await sleep(5);
  }
  const ahead = Number((await cluster.query(`SELECT count(*) AS n FROM diagnosis.runs WHERE status = 'queued' AND inputs ? 'backlog'`)).rows[0].n);
  while (Number(await openRuns(cluster)) > 0) await sleep(200);
  const drainSeconds = (Date.now() - started) / 1000;
  const waitMs = lockedAt - sent;
  row(`fairness: another organization's run behind a ${backlog.toLocaleString('en')}-run backlog, enqueue to claim`,
    waitMs.toFixed(1), 'ms', `${ahead.toLocaleString('en')} backlog runs still queued when it was claimed; the backlog took ${drainSeconds.toFixed(1)} s`);
  return { waitMs, ahead, drainSeconds };
}

/** Enqueue-commit to claim latency at low load: one run every 20 ms (200 runs), in ms, as strings with two
 * decimals. Beside it, what the pace alone costs on this machine: the round trip of SELECT 1 sent at the same pace
 * (processes asleep between two sends wake up slower than busy ones), and the split at the run's ENQUEUED row. */
export async function enqueueToClaim(cluster) {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const client = await cluster.connect();
  const sent = new Map();
  const roundTrips = [];
  const floor = [];
  const wallClockMs = () => performance.timeOrigin + performance.now();
  for (let i = 0; i < 200; i++) {
    const s0 = performance.now();
    await client.query('SELECT 1');
    floor.push(performance.now() - s0);
    await sleep(20);
  }
  for (let i = 0; i < 200; i++) {
    const t0 = wallClockMs();
    const r = await client.query(`SELECT diagnosis.enqueue_diagnosis($1, jsonb_build_object('latency', $2::int)) AS id`,
      [`b0000000-0000-4000-8000-${(1 + (i % 1000)).toString(16).padStart(12, '0')}`, i]);
    roundTrips.push(wallClockMs() - t0);
    sent.set(r.rows[0].id, t0);
    await sleep(20);
  }
  await client.end();
  while (Number(await openRuns(cluster)) > 0) await sleep(50);
  const rows = (await cluster.query(`SELECT run_id, extract(epoch FROM max(created_at) FILTER (WHERE event = 'LOCKED')) * 1000 AS locked,
                                            extract(epoch FROM max(created_at) FILTER (WHERE event = 'ENQUEUED')) * 1000 AS enqueued
                                       FROM diagnosis.audit_log WHERE run_id = ANY($1) GROUP BY run_id`, [[...sent.keys()]])).rows;
  const sorted = (values) => values.sort((a, b) => a - b);
  const at = (values, p) => values[Math.min(values.length - 1, Math.floor(p * values.length))].toFixed(2);
  const lat = sorted(rows.map((l) => Number(l.locked) - sent.get(l.run_id)));
  return { p50: at(lat, 0.5), p95: at(lat, 0.95), p99: at(lat, 0.99),
    enqueuedP50: at(sorted(rows.map((l) => Number(l.enqueued) - sent.get(l.run_id))), 0.5),
    lockedP50: at(sorted(rows.map((l) => Number(l.locked) - Number(l.enqueued))), 0.5),
    roundTripP50: at(sorted(roundTrips), 0.5), floorP50: at(sorted(floor), 0.5) };
}
