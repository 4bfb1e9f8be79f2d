// What the benchmark scripts share: the minimal MCP endpoint as a child process, and the patients every run is for.
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));

/** The PostgreSQL installation the benchmarks run: PGDIAG_PG_BINDIR (scripts/bench.sh points it at a private copy,
 * as test/lib/cluster.mjs honours it too), or the installed one. */
export const PG_BINDIR = process.env.PGDIAG_PG_BINDIR || execFileSync('pg_config', ['--bindir']).toString().trim();

/** Starts bench/fast-mcp.mjs on a free port with extra arguments (--delay-ms, --sse); resolves to { url, proc,
 * stop() }. It runs under `prlimit --nofile=20000:20000`: thousands of calls in flight are thousands of sockets. */
export function startFastEndpoint(args = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn('prlimit', ['--nofile=20000:20000', process.execPath, join(here, 'fast-mcp.mjs'), ...args],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/MCP_URL=(\S+)/);
      if (m) resolve({ url: m[1], proc, stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }) });
    });
    proc.on('exit', (code) => reject(new Error(`fast-mcp.mjs exited with ${code}`)));
  });
}

/** 1,000 patients of one organization, each with five vital signs; ids b0000000-0000-4000-8000-<hex n>. */
export async function loadBenchPatients(cluster) {
  await cluster.query(`
    INSERT INTO diagnosis.organizations (id, name) VALUES ('b0000000-0000-4000-8000-000000000000', 'Bench');
    INSERT INTO diagnosis.patients (id, organization_id)
      SELECT ('b0000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'b0000000-0000-4000-8000-000000000000'
      FROM generate_series(1, 1000) n;
    INSERT INTO diagnosis.observations (patient_id, code, value, observed_at)
      SELECT p.id, v.code, v.value, now() - interval '1 hour' FROM diagnosis.patients p,
             (VALUES ('9279-1', 18), ('spo2', 96), ('8480-6', 120), ('heart_rate', 80), ('temperature', 37.0)) v(code, value);`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** CPU seconds so far and private (anonymous) resident memory of a process: shared buffers the worker touches
 * count in VmRSS but are not its own, so RssAnon is what would grow with a leak. */
export function procStats(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const cpuTicks = Number(stat[11]) + Number(stat[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const anonKb = Number(status.match(/RssAnon:\s+(\d+)/)[1]);
  return { cpuSeconds: cpuTicks / 100, rssMb: Math.round(anonKb / 102.4) / 10 };
}
/** CPU seconds used so far by every process of the cluster (postmaster's children) and by one other pid. */
export function clusterCpu(cluster) {
  const postmaster = Number(readFileSync(join(cluster.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  let total = 0;
  for (const entry of execFileSync('ps', ['-o', 'pid=', '--ppid', String(postmaster)]).toString().trim().split(/\s+/)) {
    try { total += procStats(Number(entry)).cpuSeconds; } catch { /* exited */ }
  }
  return total;
}

export const openRuns = async (cluster) => (await cluster.query(`
  SELECT (SELECT count(*) FROM diagnosis.runs WHERE status = 'queued')
       + (SELECT count(*) FROM diagnosis.runs WHERE status = 'running') AS n`)).rows[0].n;

/** The set-based enqueue of 0.2.0 (diagnosis.enqueue_diagnoses), or one enqueue_diagnosis call per row: per row
 * when asked, or when the extension under test predates enqueue_diagnoses (bench/compare.sh builds older commits). */
async function enqueueStatement(client, perRow) {
  const batch = (await client.query(
    `SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'enqueue_diagnoses' AND pronamespace = 'diagnosis'::regnamespace) AS ok`)).rows[0].ok;
  const patient = "('b0000000-0000-4000-8000-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid";
  const inputs = "jsonb_build_object('bench', $1::text, 'n', g)";
  return batch && !perRow
    ? `SELECT cardinality(diagnosis.enqueue_diagnoses(array_agg(${patient} ORDER BY g), array_agg(${inputs} ORDER BY g)))
       FROM generate_series($2::int, $3::int) g`
    : `SELECT count(diagnosis.enqueue_diagnosis(${patient}, ${inputs})) FROM generate_series($2::int, $3::int) g`;
}

/** Enqueues n runs set-based (chunks of 5,000 per statement, each its own transaction) and waits for all. */
export async function endToEnd(cluster, n, label, { perRow = false } = {}) {
  const started = Date.now();
  const client = await cluster.connect();
  const backend = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  const sql = await enqueueStatement(client, perRow);
  const backendCpu0 = procStats(backend).cpuSeconds;
  for (let from = 0; from < n; from += 5000) {
    await client.query(sql, [label, from, Math.min(n, from + 5000) - 1]);
  }
  const enqueueSeconds = (Date.now() - started) / 1000;
  const enqueueCpu = procStats(backend).cpuSeconds - backendCpu0;
  await client.end();
  for (;;) {
    if (Number(await openRuns(cluster)) === 0) break;
    await sleep(50);
  }
  const seconds = (Date.now() - started) / 1000;
  const failed = (await cluster.query(`SELECT count(*)::int AS n FROM diagnosis.runs WHERE inputs->>'bench' = $1 AND status <> 'completed'`, [label])).rows[0].n;
  if (failed) throw new Error(`${failed} runs of ${label} did not complete`);
  return { rate: Math.round(n / seconds), seconds, enqueueRate: Math.round(n / enqueueSeconds), enqueueCpu };
}

