// The chaos run: thousands of runs enqueued by concurrent clients while workers are killed with SIGKILL, the whole
// cluster is stopped with `pg_ctl stop -m immediate` and restarted, the MCP server is restarted, and the server
// injects faults (5xx, 429 with Retry-After, hangs past the timeout, dropped connections, session expiry).
// At the end every run must be terminal, none lost, none duplicated, every audit chain legal, and no MCP call made
// for a run after it completed. With --tasks 1 the server backs every call with a task (the tasks extension,
// its store in a directory that outlives the server's restarts): the report then separates tools/call from task
// polls and counts the runs whose tool was called more than once. Usable as a module (the short suite in
// integration/) and as a command:
//   node chaos/chaos.mjs --runs 10000 --worker-kills 20 --immediate-restarts 20 --server-restarts 20 [--tasks 1]
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import { startCluster, freePort } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { checkGuarantees } from '../lib/audit.mjs';

const FAULT_KINDS = 'http_500,http_503,http_429,hang,drop,session_expiry';

/** A small deterministic PRNG so a seed reproduces the schedule of events. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A crash's signature: no SQLSTATE (socket closed, refused: node's E* codes) or connection class 08 / 57P0x. */
export function isConnectionLoss(error) {
  const code = error?.code;
  return code === undefined || /^E[A-Z]/.test(code) || /^08/.test(code) || /^57P0[1-3]$/.test(code);
}

/** Merges /stats call counts (run_id -> attempt -> n) across server restarts. */
function mergeCalls(total, stats) {
  for (const [runId, attempts] of Object.entries(stats.calls ?? {})) {
    total.calls[runId] ??= {};
    for (const [attempt, n] of Object.entries(attempts)) {
      total.calls[runId][attempt] = (total.calls[runId][attempt] ?? 0) + n;
    }
  }
  for (const [kind, n] of Object.entries(stats.faults ?? {})) total.faults[kind] = (total.faults[kind] ?? 0) + n;
  total.initialize += stats.initialize ?? 0;
  total.task_polls += stats.total_task_polls ?? 0;
}

/** Waits until the cluster answers and no run is held by a process that is not a live worker. */
async function waitRecovered(cluster, timeout) {
  await cluster.waitFor(async () => {
    const r = await cluster.query(`
      SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker') AS workers,
             (SELECT count(*) FROM diagnosis.runs WHERE status = 'running'
                AND worker_pid NOT IN (SELECT pid FROM pg_stat_activity
                                       WHERE backend_type = 'pg_diagnosis worker')) AS orphans`);
    return Number(r.rows[0].workers) > 0 && Number(r.rows[0].orphans) === 0;
  }, { timeout, interval: 20, what: 'recovery after a crash' });
}

export async function runChaos({
  runs = 1000, clients = 4, workerKills = 3, immediateRestarts = 2, serverRestarts = 2, faultRate = 0.1,
  workers = 2, seed = 1, patients = 100, drainTimeoutMs = 300000, log = console.log, tasks = false,
} = {}) {
  const random = mulberry32(seed);
  const started = Date.now();
  const port = await freePort();
  const serverArgs = ['--port', String(port), '--mode', 'stateful', '--reply', 'sse', '--fault-rate', String(faultRate),
    '--fault-kinds', FAULT_KINDS, '--retry-after', '1', '--session-expiry-calls', '200', '--latency-ms', '20'];
  const taskDir = tasks ? mkdtempSync(join(os.tmpdir(), 'pgdiag-chaos-tasks-')) : null;
  if (tasks) serverArgs.push('--tasks', '--task-dir', taskDir, '--task-poll-ms', '100', '--latency-ms', '300');
  const totals = { calls: {}, faults: {}, initialize: 0, task_polls: 0 };
  let server = await startMcpServer(serverArgs);
  const cluster = await startCluster({
    settings: {
      'diagnosis.mcp_url': server.url,
      'diagnosis.workers': workers,
      'diagnosis.max_inflight': 32,
      'diagnosis.request_timeout_ms': 2000,
      'diagnosis.connect_timeout_ms': 1000,
      'diagnosis.retry_base_delay_ms': 100,
      'diagnosis.max_retries': 10,
    },
  });
  const report = {
    runs, crashes: { worker_kill: 0, immediate_restart: 0, server_restart: 0 }, recovery_ms: [], faults: {},
  };
  try {
    await cluster.query(`
      INSERT INTO diagnosis.organizations (id, name) VALUES ('00000000-0000-0000-0000-00000000c4a0', 'Chaos General');
      INSERT INTO diagnosis.patients (id, organization_id, display_name)
        SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(n), 12, '0'))::uuid,
               '00000000-0000-0000-0000-00000000c4a0', 'Patient ' || n
        FROM generate_series(1, ${patients}) n;
      INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
        SELECT p.id, v.code, v.value + (n % 7), v.unit, now() - interval '1 hour'
        FROM diagnosis.patients p,
             (VALUES ('respiratory_rate', 16, '/min'), ('spo2', 93, '%'), ('systolic_bp', 105, 'mmHg'),
                     ('heart_rate', 88, '/min'), ('temperature', 37.2, 'Cel')) v(code, value, unit),
             LATERAL (SELECT ('x' || substr(p.id::text, 25, 12))::bit(48)::bigint AS n) h`);

    // Enqueuers: each takes the next batch of run numbers; a connection lost to a crash is retried with the same
    // idempotency keys, so a retried enqueue can only deduplicate, never create a second run.
    // Only a lost or refused connection is retried, and for at most a minute in a row: any other error, or a
    // server that does not come back, fails the run at once instead of leaving it to the test's timeout.
    let next = 0;
    let enqueueRetries = 0;
    const batch = 25;
    const enqueuer = async () => {
      while (next < runs) {
        const from = next;
        next = Math.min(runs, next + batch);
        const numbers = Array.from({ length: next - from }, (_, i) => from + i);
        const giveUpAt = Date.now() + 60000;
        for (;;) {
          try {
            await cluster.query(`
              SELECT diagnosis.enqueue_diagnosis(
                       ('00000000-0000-0000-0001-' || lpad(to_hex(1 + n % ${patients}), 12, '0'))::uuid,
                       jsonb_build_object('n', n), 'chaos-' || n)
              FROM unnest($1::int[]) n`, [numbers]);
            break;
          } catch (error) {
            if (!isConnectionLoss(error) || Date.now() > giveUpAt) throw error;
            enqueueRetries++;
            await sleep(100);
          }
        }
        await sleep(5);
      }
    };
    const enqueuers = Promise.all(Array.from({ length: clients }, enqueuer));
    enqueuers.catch(() => {}); // its error surfaces where it is awaited, after the crash schedule

    // The schedule of crashes, shuffled with the seed, spread while runs are enqueued and processed.
    const events = [
      ...Array(workerKills).fill('worker_kill'),
      ...Array(immediateRestarts).fill('immediate_restart'),
      ...Array(serverRestarts).fill('server_restart'),
    ];
    for (let i = events.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [events[i], events[j]] = [events[j], events[i]];
    }
    for (const event of events) {
      await sleep(200 + Math.floor(random() * 800));
      const t0 = Date.now();
      if (event === 'worker_kill') {
        const pids = await cluster.waitFor(async () => {
          const p = await cluster.workerPids();
          return p.length ? p : null;
        }, { timeout: 60000, what: 'a worker to kill' });
        process.kill(pids[Math.floor(random() * pids.length)], 'SIGKILL');
        await sleep(50);
        await waitRecovered(cluster, 120000);
      } else if (event === 'immediate_restart') {
        cluster.stop('immediate');
        cluster.start();
        await waitRecovered(cluster, 120000);
      } else {
        mergeCalls(totals, await server.stats());
        await server.stop();
        server = await startMcpServer(serverArgs);
      }
      report.crashes[event]++;
      if (event !== 'server_restart') report.recovery_ms.push(Date.now() - t0);
      log(`chaos: ${event} #${report.crashes[event]} survived in ${Date.now() - t0} ms`);
    }
    await enqueuers;

    // The storm is over: let the tail drain without faults.
    await server.configure({ fault_rate: 0 });
    await cluster.waitFor(async () => {
      const r = await cluster.query(
        "SELECT count(*) FILTER (WHERE status IN ('queued', 'running'))::int AS open, count(*)::int AS total FROM diagnosis.runs");
      return r.rows[0].open === 0 && r.rows[0].total >= runs;
    }, { timeout: drainTimeoutMs, interval: 200, what: 'every run to become terminal' });
    mergeCalls(totals, await server.stats());

    const counts = (await cluster.query(`
      SELECT count(*)::int AS total,
             count(*) FILTER (WHERE status = 'completed')::int AS completed,
             count(*) FILTER (WHERE status = 'failed')::int AS failed,
             count(*) FILTER (WHERE status NOT IN ('completed', 'failed', 'cancelled'))::int AS not_terminal,
             (SELECT count(*)::int FROM generate_series(0, ${runs - 1}) n
                WHERE NOT EXISTS (SELECT 1 FROM diagnosis.runs r WHERE r.idempotency_key = 'chaos-' || n)) AS lost,
             (SELECT count(*)::int FROM diagnosis.audit_log WHERE event = 'RECOVERED') AS recovered,
             (SELECT count(*)::int FROM diagnosis.audit_log WHERE event = 'RETRY_SCHEDULED') AS retries,
             (SELECT count(*)::int FROM diagnosis.audit_log WHERE event = 'DEDUPLICATED') AS deduplicated_enqueues
      FROM diagnosis.runs`)).rows[0];
    const guarantees = await checkGuarantees(cluster);
    const failedBy = Object.fromEntries((await cluster.query(
      "SELECT error_code || ': ' || regexp_replace(left(error_message, 70), '[0-9a-f-]{36}', '<uuid>', 'g') AS error_code, count(*)::int AS n FROM diagnosis.runs WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC")).rows
      .map((r) => [r.error_code, r.n]));

    // A call for a run after it completed would carry an attempt beyond the run's final attempt.
    const finals = new Map((await cluster.query('SELECT id::text, attempt FROM diagnosis.runs')).rows
      .map((r) => [r.id, r.attempt]));
    let callsAfterCompletion = 0;
    for (const [runId, attempts] of Object.entries(totals.calls)) {
      for (const attempt of Object.keys(attempts)) {
        if (!finals.has(runId) || Number(attempt) > finals.get(runId)) callsAfterCompletion++;
      }
    }

    const repeatedRuns = Object.entries(totals.calls)
      .filter(([, a]) => Object.values(a).reduce((x, y) => x + y, 0) > 1).map(([id]) => id);
    const recoveredRuns = new Set((await cluster.query(
      "SELECT DISTINCT run_id::text AS id FROM diagnosis.audit_log WHERE event = 'RECOVERED'")).rows.map((r) => r.id));
    Object.assign(report, counts, guarantees, {
      failed_by_code: failedBy,
      duplicated: guarantees.duplicate_diagnoses + guarantees.duplicate_terminal_events,
      calls_after_completion: callsAfterCompletion,
      mcp_calls: Object.values(totals.calls).reduce((s, a) => s + Object.values(a).reduce((x, y) => x + y, 0), 0),
      task_polls: totals.task_polls,
      runs_called_more_than_once: repeatedRuns.length,
      // A run whose tool was called again although no crash ever interrupted it (always 0 without faults).
      repeated_without_crash: repeatedRuns.filter((id) => !recoveredRuns.has(id)).length,
      tasks,
      faults: totals.faults,
      enqueue_retries: enqueueRetries,
      duration_s: Math.round((Date.now() - started) / 100) / 10,
    });
    return report;
  } catch (error) {
    error.message += `\n--- server log tail ---\n${cluster.log().slice(-4000)}`;
    throw error;
  } finally {
    await server.stop();
    cluster.destroy();
    if (taskDir) rmSync(taskDir, { recursive: true, force: true });
  }
}

export function formatReport(r) {
  const ms = [...r.recovery_ms].sort((a, b) => a - b);
  const pct = (p) => (ms.length ? ms[Math.min(ms.length - 1, Math.floor(p * ms.length))] : 0);
  return [
    `runs enqueued            ${r.runs} (total rows ${r.total}, completed ${r.completed}, failed ${r.failed})`,
    `failed by error code     ${Object.entries(r.failed_by_code ?? {}).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`,
    `crashes survived         worker kill -9: ${r.crashes.worker_kill}, pg_ctl stop -m immediate: ${r.crashes.immediate_restart}, MCP server restarts: ${r.crashes.server_restart}`,
    `faults injected          ${Object.entries(r.faults).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`,
    `MCP calls                ${r.mcp_calls} tools/call${r.tasks ? `, ${r.task_polls} task polls; runs whose tool was called more than once: ${r.runs_called_more_than_once} (all after a crash interrupted them before their task id was committed: ${r.repeated_without_crash === 0})` : ''}`,
    `recovered runs           ${r.recovered}`,
    `retries scheduled        ${r.retries}`,
    `enqueue retries          ${r.enqueue_retries} (deduplicated enqueues ${r.deduplicated_enqueues})`,
    `recovery after crash     min ${ms[0] ?? 0} ms, p50 ${pct(0.5)} ms, max ${ms[ms.length - 1] ?? 0} ms (each: ${ms.join(', ')})`,
    `lost = ${r.lost}`,
    `duplicated = ${r.duplicated}`,
    `not terminal = ${r.not_terminal}, illegal audit chains = ${r.illegal}, incomplete artifact sets = ${r.incomplete_artifact_sets}, calls after completion = ${r.calls_after_completion}`,
    `duration                 ${r.duration_s} s`,
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = Object.fromEntries(process.argv.slice(2).join(' ').split('--').filter(Boolean)
    .map((s) => s.trim().split(/\s+/)).map(([k, v]) => [k.replace(/-(\w)/g, (_, c) => c.toUpperCase()), Number(v)]));
  const report = await runChaos({ drainTimeoutMs: 900000, ...args });
  console.log(formatReport(report));
  const ok = report.lost === 0 && report.duplicated === 0 && report.not_terminal === 0 && report.illegal === 0 &&
    report.incomplete_artifact_sets === 0 && report.calls_after_completion === 0;
  console.log(ok ? 'chaos: PASS' : 'chaos: FAIL');
  process.exit(ok ? 0 : 1);
}
