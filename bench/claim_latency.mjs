// Enqueue-to-claim latency at low load (bench/bench.mjs's measure, alone, for comparing builds): after a warm-up,
// one run every 20 ms against the minimal endpoint. Prints one JSON line (ms).
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/claim_latency.mjs [--label text]
import { startCluster } from '../test/lib/cluster.mjs';
import { startFastEndpoint, loadBenchPatients, endToEnd } from './lib.mjs';
import { enqueueToClaim } from './latency.mjs';

const args = process.argv.slice(2);
const label = args.includes('--label') ? args[args.indexOf('--label') + 1] : '';
const fast = await startFastEndpoint();
const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': fast.url, shared_buffers: '512MB' } });
try {
  await loadBenchPatients(cluster);
  await endToEnd(cluster, 1000, 'warm-up');
  console.log(JSON.stringify({ label, ...(await enqueueToClaim(cluster)),
    load: (await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') }));
} finally {
  cluster.destroy();
  await fast.stop();
}
process.exit(0);
