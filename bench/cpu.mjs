// CPU per run on both sides, for comparing one change with another: after a warm-up, N runs end to end
// (set-based enqueue overlapping the drain; with the WAL they wrote, a figure the machine's load cannot move), then
// N queued beforehand and drained. Prints one JSON line.
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/cpu.mjs [--runs 10000] [--label text] [--per-row]
// --per-row: one enqueue_diagnosis call per run instead of enqueue_diagnoses (older builds have only that).
// --pgss top|all: with pg_stat_statements loaded at that pg_stat_statements.track, to see what it charges.
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients, procStats, openRuns, endToEnd } from './lib.mjs';

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const N = Number(option('--runs', 10000));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const fast = await startFastEndpoint();
const pgss = option('--pgss', '');
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': fast.url, 'diagnosis.max_inflight': 128,
  shared_buffers: '512MB', max_wal_size: '8GB', checkpoint_timeout: '30min', synchronous_commit: 'on',
  ...(pgss ? { shared_preload_libraries: 'pg_diagnosis,pg_stat_statements', 'pg_stat_statements.track': pgss } : {}) } });
try {
  await loadBenchPatients(cluster);
  const [pid] = await cluster.workerPids();
  await endToEnd(cluster, 1000, 'warm-up');
  const lsn = async () => (await cluster.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l;
  const l0 = await lsn();
  const w0 = procStats(pid).cpuSeconds;
  const e2e = await endToEnd(cluster, N, 'e2e', { perRow: args.includes('--per-row') });
  const worker = procStats(pid).cpuSeconds - w0;
  const walBytes = Number((await cluster.query('SELECT pg_wal_lsn_diff($1, $2) AS d', [await lsn(), l0])).rows[0].d);
  await cluster.reload({ 'diagnosis.enabled': 'off' });
  await sleep(300);
  await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                jsonb_build_object('drain', g))) FROM generate_series(1, $1::int) g`, [N]);
  const d0 = procStats(pid).cpuSeconds;
  const t0 = Date.now();
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  while (Number(await openRuns(cluster)) > 0) await sleep(20);
  const drainSeconds = (Date.now() - t0) / 1000;
  console.log(JSON.stringify({ label: option('--label', ''), pgss, runs: N, e2e_rate: e2e.rate, enqueue_rate: e2e.enqueueRate,
    worker_ms_per_1000: Math.round((worker / N) * 1e6), enqueue_ms_per_1000: Math.round((e2e.enqueueCpu / N) * 1e6),
    wal_bytes_per_run: Math.round(walBytes / N), drain_rate: Math.round(N / drainSeconds), drain_worker_ms_per_1000: Math.round(((procStats(pid).cpuSeconds - d0) / N) * 1e6) }));
} finally {
  cluster.destroy();
  await fast.stop();
}
process.exit(0);
