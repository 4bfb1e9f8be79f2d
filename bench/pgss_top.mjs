// Which of the worker's statements (nested ones included) take its time: N runs queued, then drained with
// pg_stat_statements.track = all; prints the statements by total execution time. For comparing two builds
// statement by statement (the figures include pg_stat_statements' own cost, alike on both sides).
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/pgss_top.mjs [runs, default 10000] [top, default 15]
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients, openRuns, procStats } from './lib.mjs';

const N = Number(process.argv[2] || 10000);
const TOP = Number(process.argv[3] || 15);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fast = await startFastEndpoint();
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': fast.url, 'diagnosis.max_inflight': 128,
  'diagnosis.enabled': 'off', shared_buffers: '512MB', max_wal_size: '8GB', checkpoint_timeout: '30min',
  shared_preload_libraries: 'pg_diagnosis,pg_stat_statements', 'pg_stat_statements.track': 'all' } });
try {
  await loadBenchPatients(cluster);
  await cluster.query('CREATE EXTENSION pg_stat_statements');
  await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                jsonb_build_object('g', g))) FROM generate_series(1, $1::int) g`, [N]);
  await cluster.query('SELECT pg_stat_statements_reset()');
  const [pid] = await cluster.workerPids();
  const c0 = procStats(pid).cpuSeconds;
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  while (Number(await openRuns(cluster)) > 0) await sleep(20);
  const cpu = procStats(pid).cpuSeconds - c0;
  console.log(`worker CPU ${Math.round((cpu / N) * 1e6)} ms per 1,000 runs (with pg_stat_statements)`);
  const rows = (await cluster.query(`SELECT calls, round(total_exec_time::numeric, 1) AS ms,
      round((total_exec_time / $1 * 1000)::numeric, 1) AS ms_per_1000, rows, wal_bytes / $1 AS wal_per_run,
      left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query
    FROM pg_stat_statements WHERE query !~ '^SELECT \\(SELECT count'
    ORDER BY total_exec_time DESC LIMIT $2`, [N, TOP])).rows;
  for (const r of rows) console.log(`${String(r.ms_per_1000).padStart(7)} ms/1000 ${String(r.calls).padStart(6)} calls ${String(Math.round(r.wal_per_run)).padStart(5)} B WAL/run  ${r.query}`);
} finally {
  cluster.destroy();
  await fast.stop();
}
process.exit(0);
