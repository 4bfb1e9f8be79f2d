// Points of the model-latency regime one at a time (bench/latency.mjs's onePoint on a cluster of its own), with the
// worker's and the endpoint's CPU and when each wave of calls was started. For comparing builds quickly.
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/latency_point.mjs 2048,4096 [latency ms, default 5000] [history]
//        history: runs first sent end to end through a fast endpoint, so the points meet a table with a past (the
//        full benchmark reaches its latency points after about 175,000 runs)
//        PERF=1 ...: `perf record -g` of the worker during each point, into /tmp/pg_diagnosis-latency.perf
//        PERF=dwarf ...: the same with DWARF call graphs at 400 Hz (the C++ code has no frame pointers)
//        TIMELINE=1 ...: calls started (LOCKED) and runs completed per 250 ms after the first claim
import { spawn } from 'node:child_process';
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients, procStats, endToEnd } from './lib.mjs';
import { onePoint } from './latency.mjs';

const inflights = (process.argv[2] || '2048,4096').split(',').map(Number);
const latencyMs = Number(process.argv[3] || 5000);
const history = Number(process.argv[4] || 0);
const endpoint = await startFastEndpoint(['--delay-ms', String(latencyMs), '--sse']);
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': endpoint.url, shared_buffers: '512MB',
  max_wal_size: '8GB', synchronous_commit: 'on' } });
/** Seconds after the first claim at which waves 1 to 3 (max_inflight runs each) were started. */
async function waves(label, inflight) {
  const r = (await cluster.query(`
    WITH l AS (SELECT created_at, row_number() OVER (ORDER BY created_at) AS k FROM diagnosis.audit_log
                WHERE event = 'LOCKED' AND run_id IN (SELECT id FROM diagnosis.runs WHERE inputs->>'latency' = $1))
    SELECT extract(epoch FROM max(created_at) FILTER (WHERE k = $2) - min(created_at))::float8 AS wave1_last,
           extract(epoch FROM max(created_at) FILTER (WHERE k = $2 + 1) - min(created_at))::float8 AS wave2_first,
           extract(epoch FROM max(created_at) FILTER (WHERE k = 2 * $2) - min(created_at))::float8 AS wave2_last,
           extract(epoch FROM max(created_at) FILTER (WHERE k = 3 * $2) - min(created_at))::float8 AS wave3_last
      FROM l`, [label, inflight])).rows[0];
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Number(Number(v).toFixed(2))]));
}
/** Per 250 ms after the first claim: how many calls were started (LOCKED rows) and how many runs completed. */
async function timeline(label) {
  const r = await cluster.query(`
    WITH e AS (SELECT a.event, a.created_at FROM diagnosis.audit_log a JOIN diagnosis.runs r ON r.id = a.run_id
                WHERE r.inputs->>'latency' = $1 AND a.event IN ('LOCKED', 'COMPLETED')),
         t0 AS (SELECT min(created_at) AS t0 FROM e WHERE event = 'LOCKED')
    SELECT floor(extract(epoch FROM e.created_at - t0.t0) * 4)::int AS slot,
           count(*) FILTER (WHERE event = 'LOCKED')::int AS locked,
           count(*) FILTER (WHERE event = 'COMPLETED')::int AS completed
      FROM e, t0 GROUP BY 1 ORDER BY 1`, [label]);
  return r.rows.map((x) => `${(x.slot / 4).toFixed(2)}s L${x.locked} C${x.completed}`).join(' | ');
}
try {
  await loadBenchPatients(cluster);
  const pid = (await cluster.workerPids())[0];
  if (history > 0) {
    const fast = await startFastEndpoint();
    await cluster.reload({ 'diagnosis.mcp_url': fast.url });
    const h = await endToEnd(cluster, history, 'history');
    console.log(JSON.stringify({ history, rate: h.rate }));
    await cluster.reload({ 'diagnosis.mcp_url': endpoint.url });
    await fast.stop();
  }
  for (const inflight of inflights) {
    const worker0 = procStats(pid).cpuSeconds;
    const endpoint0 = procStats(endpoint.proc.pid).cpuSeconds;
    const graph = process.env.PERF === 'dwarf' ? ['-F', '400', '--call-graph', 'dwarf,16384'] : ['-g'];
    const perf = process.env.PERF ? spawn('perf', ['record', '-e', 'cpu-clock', ...graph,
      '-o', '/tmp/pg_diagnosis-latency.perf', '-p', String(pid)], { stdio: 'ignore' }) : null;
    const p = await onePoint(cluster, pid, inflight, latencyMs, `lat-${inflight}`);
    if (perf) {
      perf.kill('SIGINT');
      await new Promise((r) => perf.on('exit', r));
    }
    const runs = inflight * 4;
    console.log(JSON.stringify({ inflight, rate: p.rate, little: p.little, share_pct: Number((p.share * 100).toFixed(1)),
      failed: p.failed, worker_ms_per_run: Number((((procStats(pid).cpuSeconds - worker0) / runs) * 1000).toFixed(2)),
      endpoint_ms_per_run: Number((((procStats(endpoint.proc.pid).cpuSeconds - endpoint0) / runs) * 1000).toFixed(2)),
      kb_per_call: Number(p.perCallKb.toFixed(1)), waves_s: await waves(`lat-${inflight}`, inflight) }));
    if (process.env.TIMELINE) console.log(await timeline(`lat-${inflight}`));
  }
} finally {
  cluster.destroy();
  await endpoint.stop();
}
process.exit(0);
