// The hostile-peer suite (issue 27): an MCP server of the project's own (test/lib/hostile_mcp.mjs) attacks the
// worker on the wire, one attack per case, while the postmaster runs under an address-space limit so that a
// regression fails a test instead of taking the machine down. Each case asserts the worker's peak RSS (VmHWM, reset
// before the case), that the hostile run ends with a clear error code or completes, that the worker did not
// restart, and that another organization's run, served well by the same endpoint, completes within a few seconds
// meanwhile. Each case prints its figures (docs/SECURITY.md, "Bounds").
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { startCluster, isSanitizedServer } from '../lib/cluster.mjs';
import { startHostileServer } from '../lib/hostile_mcp.mjs';
import { createOrganization, enqueue, run } from '../lib/fixtures.mjs';

const MAX_RESPONSE_BYTES = 2 << 20;
const REQUEST_TIMEOUT_MS = 6000;
const SANITIZED = isSanitizedServer();
// 1 GiB of address space for the postmaster and each of its children (not under ASan: its shadow memory is
// reserved address space).
const ADDRESS_SPACE_KB = SANITIZED ? 0 : 1 << 20;
// What one hostile call may add to the worker's peak RSS: a small multiple of max_response_bytes (the wire, the
// events held, the parsed answer and its copies on the way to SQL). ASan's quarantine keeps freed memory resident.
const RSS_BOUND_BYTES = SANITIZED ? 512 << 20 : 32 * MAX_RESPONSE_BYTES;
// Another organization's run, served at once by the same endpoint, waits at most this long.
const OTHER_RUN_BOUND_MS = 5000;

let server;
let cluster;
let hostile;
let good;
let serial = 0;
const figures = [];

before(async () => {
  server = await startHostileServer({ maxBytes: MAX_RESPONSE_BYTES });
  cluster = await startCluster({
    addressSpaceKb: ADDRESS_SPACE_KB,
    settings: {
      'diagnosis.mcp_url': server.url,
      'diagnosis.max_response_bytes': MAX_RESPONSE_BYTES,
      'diagnosis.request_timeout_ms': REQUEST_TIMEOUT_MS,
      'diagnosis.retry_base_delay_ms': 100,
    },
  });
  hostile = await createOrganization(cluster, { name: 'Mallory Health', patients: 12 });
  good = await createOrganization(cluster, { name: 'Quiet Clinic', patients: 1 });
  // The endpoint is set up and the worker warm before the first measurement.
  const warm = await enqueue(cluster, good.patients[0], { warm: true });
  await waitEnded(warm);
});

after(async () => {
  if (figures.length) {
    console.log('bounds figures (peak RSS growth of the worker, wait of another organization\'s run, runs table growth):');
    for (const f of figures) console.log(`  ${JSON.stringify(f)}`);
  }
  cluster?.destroy();
  await server?.close();
});

function procStatus(pid, field) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return m ? Number(m[1]) * 1024 : null;
}

async function workerPid() {
  const pids = await cluster.workerPids();
  assert.equal(pids.length, 1, `workers: ${pids}`);
  return pids[0];
}

async function waitEnded(id, timeout = 60000) {
  return cluster.waitFor(async () => {
    const r = await run(cluster, id);
    return r.status !== 'queued' && r.status !== 'running' ? r : null;
  }, { timeout, what: `run ${id} to end` });
}

/**
 * One attack: resets the worker's peak RSS, enqueues the hostile run, waits until the worker holds it, runs
 * another organization's run to completion meanwhile, waits for the hostile run's end (`ended`, a state), then
 * records the figures. `watch(id)` runs alongside (e.g. sampling the run's progress).
 */
async function attack(name, { maxRetries = 0, ended = (r) => r.status !== 'queued' && r.status !== 'running', watch } = {}) {
  const pid = await workerPid();
  // Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS.
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
  const rssBefore = procStatus(pid, 'VmRSS');
  const tableBefore = Number((await cluster.query("SELECT pg_total_relation_size('diagnosis.runs') AS n")).rows[0].n);
  const patient = hostile.patients[serial++ % hostile.patients.length];
  const id = await enqueue(cluster, patient, { attack: name }, { maxRetries });
  const watching = watch ? watch(id) : null;
  // Claimed: a fast failure may already have put it back in the queue for a retry.
  await cluster.waitFor(async () => (await cluster.query(
    "SELECT 1 FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'LOCKED'", [id])).rowCount > 0,
  { timeout: 30000, what: 'the hostile run claimed' });

  const other = await enqueue(cluster, good.patients[0], { during: name });
  const otherRun = await waitEnded(other, 60000);
  const otherWaitMs = new Date(otherRun.completed_at ?? otherRun.updated_at) - new Date(otherRun.created_at);

  const final = await cluster.waitFor(async () => {
    const r = await run(cluster, id);
    return ended(r) ? r : null;
  }, { timeout: 60000, what: `the ${name} run to end` });
  const watched = watching ? await watching : null;
  const alive = (await cluster.workerPids()).includes(pid);
  const peak = alive ? procStatus(pid, 'VmHWM') : null;
  const tableAfter = Number((await cluster.query("SELECT pg_total_relation_size('diagnosis.runs') AS n")).rows[0].n);
  const f = {
    attack: name, status: final.status, error_code: final.error_code,
    worker_restarted: !alive,
    peak_rss_growth_mb: peak === null ? null : +((peak - rssBefore) / 1048576).toFixed(1),
    peak_rss_mb: peak === null ? null : +(peak / 1048576).toFixed(1),
    other_run_wait_ms: otherWaitMs, other_run_status: otherRun.status,
    runs_table_growth_kb: Math.round((tableAfter - tableBefore) / 1024),
  };
  figures.push(f);
  console.log(`bounds ${name}: ${JSON.stringify(f)} message: ${String(final.error_message ?? '').slice(0, 160)}`);

  assert.equal(alive, true, 'the worker died or restarted');
  assert.ok(peak - rssBefore <= RSS_BOUND_BYTES, `peak RSS grew ${f.peak_rss_growth_mb} MB`);
  assert.equal(otherRun.status, 'completed', `the other organization's run: ${otherRun.status} ${otherRun.error_message}`);
  assert.ok(otherWaitMs <= OTHER_RUN_BOUND_MS, `the other organization's run waited ${otherWaitMs} ms`);
  return { id, run: final, figures: f, watched };
}

test('SSE: a 64 KiB id followed by 20,000 events fails the call, it is not copied into every event', { timeout: 120000 }, async () => {
  const { run: r } = await attack('ids');
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'MCP_ERROR');
  assert.match(r.error_message, /SSE id: line exceeds 1024 bytes/);
});

test('SSE: tiny events up to max_response_bytes cost a bounded overhead each', { timeout: 120000 }, async () => {
  const { run: r } = await attack('tiny_events');
  // Either the worker read them as fast as they came (completed) or their overhead hit the exchange's budget.
  if (r.status !== 'completed') {
    assert.equal(r.error_code, 'MCP_ERROR');
    assert.match(r.error_message, /held more than twice diagnosis.max_response_bytes/);
  }
});

test('SSE: comments and retry: fields, megabyte-long ones included, are not buffered', { timeout: 120000 }, async () => {
  const { run: r } = await attack('comments');
  assert.equal(r.status, 'completed', r.error_message);
});

test('SSE: resumptions with GET + Last-Event-ID share the call\'s budget', { timeout: 120000 }, async () => {
  const { id, run: r } = await attack('resume');
  const sent = server.stats.resume_bytes[id];
  const gets = server.stats.resume_gets[id] ?? 0;
  console.log(`resume: the server sent ${(sent / 1048576).toFixed(1)} MB in ${1 + gets} streams (${gets} resumptions) before the call ended`);
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'MCP_ERROR');
  assert.match(r.error_message, /max_response_bytes/);
  // Each stream brings 60 % of the budget: the first resumption exhausts what is left of it.
  assert.ok(gets <= 2, `${gets} resumptions`);
});

test('server requests: a few per call on its own stream, none on the answers, none after the call', { timeout: 120000 }, async () => {
  const { id, run: r } = await attack('requests');
  const answered = server.stats.replies_by_run[id] ?? 0;
  console.log(`requests: 1,000 server requests on the call's stream, ${answered} answered, ${server.stats.replies_to_replies} answers to the streams of the worker's own answers`);
  assert.equal(r.status, 'completed', r.error_message);
  assert.ok(answered >= 1 && answered <= 4, `${answered} answered`);
  assert.equal(server.stats.replies_to_replies, 0);
  const column = (await cluster.query(`SELECT 1 FROM information_schema.columns WHERE table_schema = 'diagnosis'
    AND table_name = 'runs' AND column_name = 'ignored_server_requests'`)).rowCount;
  if (column) assert.equal((await run(cluster, id)).ignored_server_requests, 1000 - answered);
  // Nothing more arrives once the call has ended: a whole run later, the count has not moved.
  const replies = server.stats.replies;
  await waitEnded(await enqueue(cluster, good.patients[0], { after: 'requests' }));
  assert.equal(server.stats.replies, replies);
});

test('Retry-After at the end of time is capped like the backoff (15 minutes)', { timeout: 120000 }, async () => {
  const { id, run: r } = await attack('retry_after', { maxRetries: 1, ended: (x) => x.status === 'queued' && x.attempt === 1 && x.error_code });
  assert.equal(r.error_code, 'NETWORK_ERROR');
  const delay = (await cluster.query("SELECT extract(epoch FROM run_after - now()) AS s FROM diagnosis.runs WHERE id = $1", [id])).rows[0].s;
  console.log(`retry_after: the run is due again in ${Number(delay).toFixed(0)} s (Retry-After: 9999-12-31)`);
  assert.ok(Number(delay) <= 15 * 60 + 5, `due in ${delay} s`);
  await cluster.query('SELECT diagnosis.cancel_diagnosis($1)', [id]);
});

test('progress: messages cut to 1,000 characters (UTF-8 safe), written when they change', { timeout: 120000 }, async () => {
  let stop = false;
  const sample = async (id) => {
    const seen = new Set();
    let longest = 0;
    while (!stop) {
      const r = (await cluster.query('SELECT progress_message, status FROM diagnosis.runs WHERE id = $1', [id])).rows[0];
      if (r.progress_message !== null) {
        longest = Math.max(longest, [...r.progress_message].length);
        seen.add(r.progress_message);
      }
      if (r.status !== 'queued' && r.status !== 'running') break;
      await new Promise((res) => setTimeout(res, 20));
    }
    return { longest, seen };
  };
  const { run: r, figures: f, watched } = await attack('progress', { watch: sample });
  stop = true;
  assert.equal(r.status, 'completed', r.error_message);
  console.log(`progress: longest message stored ${watched.longest} characters, ${watched.seen.size} distinct`);
  assert.ok(watched.seen.size >= 1, 'no progress was ever written: the test proves nothing');
  assert.ok(watched.longest <= 1000, `${watched.longest} characters`);
  for (const m of watched.seen) assert.ok(!m.includes('\uFFFD'), 'a character was cut in half');
  // 13 messages of 100,000 incompressible characters, about one a second written whole by 0.2.0; now 1,000
  // characters each time the message changes.
  assert.ok(f.runs_table_growth_kb < 64, `runs grew ${f.runs_table_growth_kb} kB`);
});

test('headers of megabytes fail the call', { timeout: 120000 }, async () => {
  const { run: r } = await attack('headers');
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'MCP_ERROR');
  assert.match(r.error_message, /response headers exceed/);
});

test('a task id of megabytes fails the call; it is neither stored nor sent back', { timeout: 120000 }, async () => {
  const polled = server.stats.polled_task_id_bytes;
  const { id, run: r } = await attack('task_id');
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'MCP_ERROR');
  assert.match(r.error_message, /task/);
  assert.equal(server.stats.polled_task_id_bytes, polled);
  const stored = (await cluster.query('SELECT octet_length(mcp_task_id) AS n FROM diagnosis.runs WHERE id = $1', [id])).rows[0].n;
  assert.ok(!stored, `${stored} bytes of task id stored`);
});

test('an endless SSE stream that trickles bytes ends at the call\'s deadline', { timeout: 120000 }, async () => {
  const { run: r } = await attack('endless');
  assert.equal(r.status, 'failed');
  assert.equal(r.error_code, 'TIMEOUT_ERROR');
  const tookMs = new Date(r.completed_at) - new Date(r.started_at);
  assert.ok(tookMs < REQUEST_TIMEOUT_MS + 5000, `took ${tookMs} ms`);
});
