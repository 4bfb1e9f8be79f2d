// Where the worker's time goes: 20,000 runs queued with claiming paused, then drained against the minimal endpoint
// while `perf record -e cpu-clock -g` samples the worker. Prints the drain rate; then run
//   perf report -i /tmp/pg_diagnosis-worker.perf --no-children --sort dso --stdio
//   perf report -i /tmp/pg_diagnosis-worker.perf --no-children --sort symbol --stdio -g none
// Usage: node bench/profile.mjs [runs, default 20000]   (needs Debian's linux-perf; software clock sampling works
//        without PMU access). PERF=dwarf: DWARF call graphs at 400 Hz (the C++ code has no frame pointers).
import { spawn } from 'node:child_process';
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients } from './lib.mjs';

const RUNS = Number(process.argv[2] || 20000);
const fast = await startFastEndpoint();
const url = fast.url;
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': url, 'diagnosis.max_inflight': 128,
  'diagnosis.enabled': 'off', shared_buffers: '512MB' } });
try {
  await loadBenchPatients(cluster);
  await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                jsonb_build_object('g', g))) FROM generate_series(1, ${RUNS}) g`);
  const [pid] = await cluster.workerPids();
  const graph = process.env.PERF === 'dwarf' ? ['-F', '400', '--call-graph', 'dwarf,16384'] : ['-g'];
  const perf = spawn('perf', ['record', '-e', 'cpu-clock', ...graph, '-o', '/tmp/pg_diagnosis-worker.perf', '-p', String(pid)],
    { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  const started = Date.now();
  await cluster.reload({ 'diagnosis.enabled': 'on' });
  await cluster.waitFor(async () => (await cluster.query(
    "SELECT count(*)::int AS n FROM diagnosis.runs WHERE status IN ('queued', 'running')")).rows[0].n === 0,
  { timeout: 300000, interval: 50, what: 'the queue to drain' });
  const seconds = (Date.now() - started) / 1000;
  console.log(`drained ${RUNS} runs in ${seconds.toFixed(1)} s: ${Math.round(RUNS / seconds)} runs/s (perf data: /tmp/pg_diagnosis-worker.perf)`);
  perf.kill('SIGINT');
  await new Promise((r) => perf.on('exit', r));
} finally {
  cluster.destroy();
  await fast.stop();
}
