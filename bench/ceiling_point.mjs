// The benchmark's pgbench ceiling alone (bench/bench.mjs ceilingScript: the worker's claim, pack and finalize
// statements replayed by 2 clients, no HTTP, triggers off), on a fresh cluster per measurement, for comparing
// settings side by side.
// Usage: PGDIAG_PG_BINDIR=<bin dir> node bench/ceiling_point.mjs [runs, default 10000] [pgss track: none,top,all]
import { mkdtempSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { join } from 'node:path';
import { startCluster } from '../test/lib/cluster.mjs';
import { loadBenchPatients, PG_BINDIR } from './lib.mjs';
import { ceilingScript } from './bench.mjs';

const runs = Number(process.argv[2] || 10000);
const tracks = (process.argv[3] || 'none,top,all').split(',');
const batch = 32;
for (const track of tracks) {
  const cluster = await startCluster({ settings: { 'diagnosis.enabled': 'off', shared_buffers: '512MB', max_wal_size: '8GB',
    synchronous_commit: 'on',
    ...(track !== 'none' ? { shared_preload_libraries: 'pg_diagnosis,pg_stat_statements', 'pg_stat_statements.track': track } : {}) } });
  const dir = mkdtempSync(join(os.tmpdir(), 'pgdiag-ceiling-'));
  try {
    chmodSync(dir, 0o755);
    await loadBenchPatients(cluster);
    await cluster.query(`SELECT count(diagnosis.enqueue_diagnosis(('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
                                                                  jsonb_build_object('n', g))) FROM generate_series(1, $1::int) g`, [runs]);
    const file = join(dir, 'ceiling.sql');
    writeFileSync(file, ceilingScript(batch));
    chmodSync(file, 0o644);
    const t0 = Date.now();
    const bench = spawnSync('runuser', ['-u', 'postgres', '--', join(PG_BINDIR, 'pgbench'), '-n', '-h', '127.0.0.1',
      '-p', String(cluster.port), '-U', 'postgres', '-c', '2', '-j', '2', '-t', String(Math.ceil(runs / batch / 2)), '-f', file, 'postgres'],
    { encoding: 'utf8' });
    const seconds = (Date.now() - t0) / 1000;
    if (bench.status !== 0) throw new Error(`pgbench failed: ${bench.stderr}`);
    const completed = (await cluster.query("SELECT count(*)::int AS n FROM diagnosis.runs WHERE status = 'completed'")).rows[0].n;
    console.log(JSON.stringify({ track, batch, completed, runs_per_s: Math.round(completed / seconds) }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    cluster.destroy();
  }
}
