// The worker against each kind of endpoint issue 15 names: the reference server in both eras and in its SSE-polling
// mode (streams closed early, resumed with GET + Last-Event-ID), and a server built on the official SDK v2 alone
// (modern only). Every run completes, and the worker reports the era it found.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, waitTerminal, run } from '../lib/fixtures.mjs';

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function diagnose(url, n = 5) {
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': url } });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: n });
  const ids = [];
  for (const p of patients) ids.push(await enqueue(cluster, p));
  await waitTerminal(cluster, ids, 60000);
  const statuses = [];
  for (const id of ids) statuses.push((await run(cluster, id)).status);
  const worker = (await cluster.query('SELECT mcp_era, mcp_protocol_version FROM diagnosis.worker_status()')).rows[0];
  return { statuses, worker, ids };
}

/** The conformance suite's SDK v2 server (test/conformance/servers/sdk2-modern.mjs), modern only. */
function startSdk2Server() {
  const script = fileURLToPath(new URL('../conformance/servers/sdk2-modern.mjs', import.meta.url));
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [script], { env: { ...process.env, LEGACY: 'reject' }, stdio: ['ignore', 'pipe', 'inherit'] });
    proc.on('error', reject);
    proc.on('exit', (code) => reject(new Error(`sdk2-modern exited with ${code}`)));
    proc.stdout.on('data', (d) => {
      const m = String(d).match(/PORT (\d+)/);
      if (m) resolve({ url: `http://127.0.0.1:${m[1]}/mcp`, base: `http://127.0.0.1:${m[1]}`, stop: () => proc.kill('SIGTERM') });
    });
  });
}

test('reference server, 2026-07-28 (dual-era server): runs complete in the modern era', { timeout: 90000 }, async () => {
  const server = await startMcpServer(['--era', 'dual']);
  cleanups.push(() => server.stop());
  const { statuses, worker } = await diagnose(server.url);
  assert.deepEqual(new Set(statuses), new Set(['completed']));
  assert.deepEqual(worker, { mcp_era: 'modern', mcp_protocol_version: '2026-07-28' });
  assert.ok((await server.stats()).eras.modern >= 5);
});

test('reference server, legacy only: the worker falls back to the handshake and completes the runs', { timeout: 90000 }, async () => {
  const server = await startMcpServer(['--era', 'legacy']);
  cleanups.push(() => server.stop());
  const { statuses, worker } = await diagnose(server.url);
  assert.deepEqual(new Set(statuses), new Set(['completed']));
  assert.equal(worker.mcp_era, 'legacy');
  assert.equal(worker.mcp_protocol_version, '2025-11-25');
});

test('reference server in SSE-polling mode: streams closed early are resumed, every run completes in its attempt', { timeout: 90000 }, async () => {
  const server = await startMcpServer(['--era', 'legacy', '--mode', 'stateful', '--reply', 'sse', '--sse-polling',
    '--sse-retry-ms', '200', '--latency-ms', '1500']);
  cleanups.push(() => server.stop());
  const { statuses, worker, ids } = await diagnose(server.url);
  assert.deepEqual(new Set(statuses), new Set(['completed']));
  assert.equal(worker.mcp_era, 'legacy');
  const stats = await server.stats();
  assert.ok(stats.resumptions >= 5, `${stats.resumptions} resumptions`);
  for (const id of ids) assert.deepEqual(stats.calls[id], { 1: 1 }, 'one call, in the first attempt');
});

test('a server on the official SDK v2 alone (modern only): runs complete', { timeout: 90000 }, async () => {
  const server = await startSdk2Server();
  cleanups.push(() => server.stop());
  const { statuses, worker, ids } = await diagnose(server.url, 3);
  assert.deepEqual(new Set(statuses), new Set(['completed']));
  assert.equal(worker.mcp_era, 'modern');
  const seen = await (await fetch(`${server.base}/seen`)).json();
  assert.deepEqual(new Set(seen.map((s) => s.args.run_id)), new Set(ids));
});
