// Worker CPU per 1,000 runs drained, several times in one cluster: on a shared machine the load only ever adds to
// a figure, so the least of several drains is the steadiest figure to compare builds by (a shell loop
// interleaves builds). Each drain: N runs queued with claiming paused, then drained against the minimal endpoint.
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/drain_min.mjs [--runs 5000] [--reps 3] [--label text]
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients, procStats, openRuns } from './lib.mjs';

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const N = Number(option('--runs', 5000));
const REPS = Number(option('--reps', 3));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const fast = await startFastEndpoint();
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': fast.url, 'diagnosis.max_inflight': 128,
  'diagnosis.enabled': 'off', shared_buffers: '512MB', max_wal_size: '8GB', checkpoint_timeout: '30min' } });
try {
  await loadBenchPatients(cluster);
  const [pid] = await cluster.workerPids();
  const drains = [];
  for (let rep = 0; rep < REPS; rep++) {
    await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                  jsonb_build_object('rep', $2::int, 'g', g))) FROM generate_series(1, $1::int) g`, [N, rep]);
    const c0 = procStats(pid).cpuSeconds;
    await cluster.reload({ 'diagnosis.enabled': 'on' });
    while (Number(await openRuns(cluster)) > 0) await sleep(20);
    drains.push(Math.round(((procStats(pid).cpuSeconds - c0) / N) * 1e6));
    await cluster.reload({ 'diagnosis.enabled': 'off' });
    await sleep(300);
  }
  console.log(JSON.stringify({ label: option('--label', ''), runs: N, drain_worker_ms_per_1000: drains, min: Math.min(...drains),
    load: (await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') }));
} finally {
  cluster.destroy();
  await fast.stop();
}
process.exit(0);
