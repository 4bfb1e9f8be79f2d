// Memory soak: a million runs through one worker against the minimal endpoint, sampling the worker's private
// resident memory (RssAnon) as the count of processed runs grows. Flat means no per-run leak.
//   node bench/soak.mjs [--runs 1000000]
import { readFileSync } from 'node:fs';
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients } from './lib.mjs';

const i = process.argv.indexOf('--runs');
const RUNS = i > 0 ? Number(process.argv[i + 1]) : 1000000;
const CHUNK = 10000;
const rssMb = (pid) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/RssAnon:\s+(\d+)/)[1]) / 1024;

const fast = await startFastEndpoint();
const url = fast.url;
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': url, 'diagnosis.max_inflight': 128,
  shared_buffers: '512MB', max_wal_size: '8GB', autovacuum_naptime: '10s' } });
try {
  await loadBenchPatients(cluster);
  const [pid] = await cluster.workerPids();
  const samples = [];
  const started = Date.now();
  const marks = new Set([10000, 100000, 250000, 500000, 750000, RUNS]);
  for (let done = 0; done < RUNS; done += CHUNK) {
    await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                  jsonb_build_object('soak', g)))
                         FROM generate_series($1::int, $2::int) g`, [done, Math.min(RUNS, done + CHUNK) - 1]);
    await cluster.waitFor(async () => (await cluster.query(
      "SELECT (SELECT count(*) FROM diagnosis.runs WHERE status = 'queued') + (SELECT count(*) FROM diagnosis.runs WHERE status = 'running') AS n"))
      .rows[0].n === '0', { timeout: 600000, interval: 100, what: 'the chunk to drain' });
    const processed = Math.min(RUNS, done + CHUNK);
    for (const m of marks) {
      if (processed >= m && !samples.some((s) => s.mark === m)) {
        samples.push({ mark: m, processed, rss_mb: Math.round(rssMb(pid) * 10) / 10, elapsed_s: Math.round((Date.now() - started) / 1000) });
        console.log(`processed ${processed}: worker RssAnon ${samples.at(-1).rss_mb} MB (${samples.at(-1).elapsed_s} s)`);
      }
    }
  }
  const first = samples.find((s) => s.mark === 10000) ?? samples[0];
  const last = samples.at(-1);
  console.log(`RssAnon ${first.rss_mb} MB at ${first.processed} runs -> ${last.rss_mb} MB at ${last.processed} runs: ` +
    `${(((last.rss_mb - first.rss_mb) / first.rss_mb) * 100).toFixed(1)} %`);
  console.log(`SOAK_JSON=${JSON.stringify(samples)}`);
} finally {
  cluster.destroy();
  await fast.stop();
}
