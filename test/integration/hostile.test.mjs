// Attacks on the superuser worker and on the other tenants (issue 19), each written out:
// - overloads and operators planted in `public` by a non-superuser database owner and by a clinician (public
//   writable, as after pg_upgrade from 14) that would win under the default search_path;
// - a malicious context-pack function; a context-pack setting that does not resolve;
// - one organization's 20,000-run backlog at top priority against another organization's single run, and the
//   per-organization cap;
// - a cancel left open in a transaction while the worker finalizes;
// - an unknown run id and an invisible one cost the same.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, chain, waitTerminal, run } from '../lib/fixtures.mjs';
import { checkGuarantees } from '../lib/audit.mjs';

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const CLEAN = { illegal: 0, duplicate_diagnoses: 0, duplicate_terminal_events: 0, incomplete_artifact_sets: 0,
  diagnoses_on_unfinished_runs: 0 };

async function setUp(settings = {}, serverArgs = []) {
  const server = await startMcpServer(serverArgs);
  cleanups.push(() => server.stop());
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, ...settings } });
  cleanups.push(async () => cluster.destroy());
  return { server, cluster };
}

/** Runs `sql` as `role` (SET ROLE inside one transaction, on one connection). */
async function asRole(cluster, role, sql, params = []) {
  const client = await cluster.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SET LOCAL ROLE ${role}`);
    const r = await client.query(sql, params);
    await client.query('COMMIT');
    return r;
  } finally {
    await client.end();
  }
}

async function isSuperuser(cluster, role) {
  return (await cluster.query('SELECT rolsuper FROM pg_roles WHERE rolname = $1', [role])).rows[0].rolsuper;
}

// Each planted object records that it ran, and when it runs as a superuser it makes its owner one.
function plantedBody(owner, result) {
  return `BEGIN
    INSERT INTO public.planted_calls VALUES (current_user, '${owner}');
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
      EXECUTE 'ALTER ROLE ${owner} SUPERUSER';
    END IF;
    RETURN ${result};
  END`;
}

test('planted overloads and operators in public never run in the worker; nobody becomes superuser', { timeout: 120000 }, async () => {
  const { cluster } = await setUp({}, []);
  await cluster.query(`
    CREATE ROLE mallory LOGIN;            -- owns the database, so owns and writes public (pg_database_owner)
    CREATE ROLE eve LOGIN;                -- a clinician
    ALTER DATABASE postgres OWNER TO mallory;
    GRANT CREATE ON SCHEMA public TO PUBLIC;   -- as after pg_upgrade from PostgreSQL 14
    CREATE TABLE public.planted_calls (run_as name, planted_by name);
    GRANT INSERT, SELECT ON public.planted_calls TO PUBLIC;`);
  const { org, patients } = await createOrganization(cluster, { patients: 10 });
  await cluster.query("INSERT INTO diagnosis.members VALUES ('eve', $1, 'clinician')", [org]);
  await cluster.query("INSERT INTO diagnosis.patient_assignments SELECT p, 'eve' FROM unnest($1::uuid[]) p", [patients]);

  // Better matches than the built-ins for the argument types the worker's statements use.
  await asRole(cluster, 'mallory', `
    CREATE FUNCTION public.jsonb_build_object(text, jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ ${plantedBody('mallory', "'{\"planted\": true}'::jsonb")} $$;
    CREATE FUNCTION public.planted_mul(bigint, interval) RETURNS interval LANGUAGE plpgsql AS $$ ${plantedBody('mallory', '$2 * $1::float8')} $$;
    CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = public.planted_mul);
    CREATE FUNCTION public.jsonb_build_object(text, text, text, text) RETURNS jsonb LANGUAGE plpgsql AS $$ ${plantedBody('mallory', "'{}'::jsonb")} $$;
    CREATE FUNCTION public.jsonb_build_object(text, bigint) RETURNS jsonb LANGUAGE plpgsql AS $$ ${plantedBody('mallory', "'{}'::jsonb")} $$;`);
  await asRole(cluster, 'eve', `
    CREATE FUNCTION public.jsonb_build_object(text, text, text, integer) RETURNS jsonb LANGUAGE plpgsql AS $$ ${plantedBody('eve', "'{}'::jsonb")} $$;
    CREATE FUNCTION public.sha256(text) RETURNS bytea LANGUAGE plpgsql AS $$ ${plantedBody('eve', "'\\x00'::bytea")} $$;
    CREATE FUNCTION public.btrim(text, varchar) RETURNS text LANGUAGE plpgsql AS $$ ${plantedBody('eve', "''")} $$;
    CREATE FUNCTION public.jsonb_strip_nulls(json) RETURNS jsonb LANGUAGE plpgsql AS $$ ${plantedBody('eve', "'{}'::jsonb")} $$;`);

  // Control: under the default search_path the plants do win (as mallory, who cannot escalate this way).
  const control = (await asRole(cluster, 'mallory', `SELECT jsonb_build_object('a', '{}'::jsonb) AS v,
    1::bigint * interval '1 second' AS m`)).rows[0];
  assert.deepEqual(control.v, { planted: true });
  await cluster.query('DELETE FROM public.planted_calls');

  const ids = [];
  for (const p of patients) ids.push(await enqueue(cluster, p, { attack: 'overloads' }));
  await waitTerminal(cluster, ids, 60000);
  for (const id of ids) assert.equal((await run(cluster, id)).status, 'completed');
  assert.equal(await isSuperuser(cluster, 'mallory'), false);
  assert.equal(await isSuperuser(cluster, 'eve'), false);
  assert.deepEqual((await cluster.query('SELECT * FROM public.planted_calls')).rows, []);
  assert.deepEqual(await checkGuarantees(cluster), CLEAN);
});

test('a retry delay is computed without the planted operator too', { timeout: 60000 }, async () => {
  const { cluster } = await setUp({ 'diagnosis.retry_base_delay_ms': 10 }, []);
  await cluster.query(`
    CREATE ROLE mallory LOGIN; ALTER DATABASE postgres OWNER TO mallory;
    CREATE TABLE public.planted_calls (run_as name, planted_by name); GRANT INSERT, SELECT ON public.planted_calls TO PUBLIC;`);
  await asRole(cluster, 'mallory', `
    CREATE FUNCTION public.planted_mul(bigint, interval) RETURNS interval LANGUAGE plpgsql AS $$ ${plantedBody('mallory', '$2 * $1::float8')} $$;
    CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = public.planted_mul);`);
  const { patients } = await createOrganization(cluster, { patients: 1 });
  const id = await enqueue(cluster, patients[0], { fault: 'http_503', fault_attempts: 1 }, { maxRetries: 2 });
  await waitTerminal(cluster, [id], 30000);
  assert.ok((await chain(cluster, id)).includes('RETRY_SCHEDULED'));
  assert.equal(await isSuperuser(cluster, 'mallory'), false);
  assert.deepEqual((await cluster.query('SELECT * FROM public.planted_calls')).rows, []);
});

test("a malicious context-pack function runs with its owner's rights, without the worker's authority", { timeout: 60000 }, async () => {
  const { cluster } = await setUp();
  await cluster.query(`
    CREATE ROLE mallory LOGIN;
    CREATE TABLE public.pack_probe (run_as name, superuser bool, is_worker bool, attempt text, outcome text);
    GRANT INSERT ON public.pack_probe TO mallory;
    GRANT CREATE ON SCHEMA public TO mallory;`);
  const { patients } = await createOrganization(cluster, { patients: 2 });
  await asRole(cluster, 'mallory', `
    CREATE FUNCTION public.evil_pack(patient uuid) RETURNS jsonb LANGUAGE plpgsql AS $$
    DECLARE
      attempts text[] := ARRAY[
        'ALTER ROLE mallory SUPERUSER',
        'UPDATE diagnosis.runs SET status = ''completed'', completed_at = now()',
        'INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256) SELECT id, patient_id, organization_id, ''diagnosis_json'', ''{}'', ''x'' FROM diagnosis.runs LIMIT 1',
        'INSERT INTO diagnosis.audit_log (event, actor) VALUES (''COMPLETED'', ''mallory'')',
        'SET ROLE postgres'];
      a text;
    BEGIN
      FOREACH a IN ARRAY attempts LOOP
        BEGIN
          EXECUTE a;
          INSERT INTO public.pack_probe VALUES (current_user, NULL, diagnosis._is_worker(), a, 'succeeded');
        EXCEPTION WHEN OTHERS THEN
          INSERT INTO public.pack_probe VALUES (current_user, NULL, diagnosis._is_worker(), a, SQLSTATE);
        END;
      END LOOP;
      INSERT INTO public.pack_probe VALUES (current_user,
        (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), diagnosis._is_worker(), 'who', 'ok');
      RETURN '{"schema": "evil", "observations": []}'::jsonb;
    END $$;`);
  await cluster.reload({ 'diagnosis.context_pack_function': 'public.evil_pack' });
  const ids = [];
  for (const p of patients) ids.push(await enqueue(cluster, p));
  await waitTerminal(cluster, ids, 30000);
  const probes = (await cluster.query('SELECT DISTINCT run_as, superuser, is_worker, attempt, outcome FROM public.pack_probe ORDER BY attempt')).rows;
  for (const p of probes) {
    assert.equal(p.run_as, 'mallory');
    assert.equal(p.is_worker, false, `_is_worker() inside the pack (${p.attempt})`);
    if (p.attempt === 'who') assert.equal(p.superuser, false);
    else assert.notEqual(p.outcome, 'succeeded', `${p.attempt} succeeded inside the pack`);
  }
  assert.equal(probes.length, 6);
  assert.equal(await isSuperuser(cluster, 'mallory'), false);
  // The runs themselves went through the state machine normally: completed by the worker, one diagnosis each.
  for (const id of ids) assert.deepEqual(await chain(cluster, id), ['ENQUEUED', 'LOCKED', 'COMPLETED']);
  assert.deepEqual(await checkGuarantees(cluster), CLEAN);
});

test('a context-pack setting that does not resolve pauses claiming; it never fails the backlog', { timeout: 60000 }, async () => {
  const { cluster } = await setUp();
  const { patients } = await createOrganization(cluster, { patients: 5 });
  await cluster.reload({ 'diagnosis.context_pack_function': 'public.not_there' });
  const ids = [];
  for (const p of patients) ids.push(await enqueue(cluster, p));
  const status = await cluster.waitFor(async () => {
    const s = (await cluster.query('SELECT state, last_error FROM diagnosis.worker_status()')).rows[0];
    return s.state === 'config_error' ? s : null;
  }, { what: 'a paused worker' });
  assert.match(status.last_error, /public\.not_there\(uuid\) does not exist/);
  await new Promise((r) => setTimeout(r, 2500)); // a few pause backoffs
  const counts = (await cluster.query('SELECT status, count(*)::int AS n FROM diagnosis.runs GROUP BY status')).rows;
  assert.deepEqual(counts, [{ status: 'queued', n: 5 }]);
  const lines = cluster.log().split('\n').filter((l) => l.includes('claiming paused')).length;
  assert.equal(lines, 1);
  await cluster.query(`CREATE FUNCTION public.not_there(p uuid) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT diagnosis.build_context_pack(p) $$`);
  await cluster.reload({});
  await waitTerminal(cluster, ids, 30000);
  for (const id of ids) assert.equal((await run(cluster, id)).status, 'completed');
});

test("fairness: one organization's 20,000-run top-priority backlog delays another's run by at most one claim", { timeout: 180000 }, async () => {
  const { cluster } = await setUp({ 'diagnosis.max_inflight': 16 }, ['--latency-ms', '500']);
  const a = await createOrganization(cluster, { name: 'Busy', patients: 200 });
  const b = await createOrganization(cluster, { name: 'Quiet', patients: 1 });
  await cluster.query(`SELECT diagnosis.enqueue_diagnosis(p, jsonb_build_object('n', g), priority => 100)
                       FROM unnest($1::uuid[]) p, generate_series(1, 100) g`, [a.patients]);
  await cluster.waitFor(async () => (await cluster.query("SELECT count(*)::int AS n FROM diagnosis.runs WHERE status = 'running'")).rows[0].n === 16,
    { what: 'the backlog in flight' });
  const quiet = await enqueue(cluster, b.patients[0], {}, { priority: -100 });
  await cluster.waitFor(async () => (await run(cluster, quiet)).status !== 'queued', { timeout: 10000, what: 'the quiet run claimed' });
  const r = await run(cluster, quiet);
  const waitMs = new Date(r.started_at) - new Date(r.created_at);
  const backlog = (await cluster.query("SELECT count(*)::int AS n FROM diagnosis.runs WHERE organization_id = $1 AND status = 'queued'", [a.org])).rows[0].n;
  console.log(`the quiet organization's run waited ${waitMs} ms behind a backlog of ${backlog} queued runs (500 ms calls)`);
  assert.ok(waitMs < 1500, `waited ${waitMs} ms`);
  assert.ok(backlog > 19000);
});

test('diagnosis.max_inflight_per_organization caps what one organization holds in flight', { timeout: 120000 }, async () => {
  // The whole backlog is queued while the worker is paused and released at once, so one claim sees both
  // organizations' runs together; the test then waits for the state it proves (the cap reached), whatever the
  // machine's speed: enqueued one by one on a slow machine, each run could finish before the next was queued.
  const { cluster } = await setUp({ 'diagnosis.max_inflight_per_organization': 3, 'diagnosis.enabled': false },
    ['--latency-ms', '1000']);
  const a = await createOrganization(cluster, { name: 'A', patients: 20 });
  const b = await createOrganization(cluster, { name: 'B', patients: 5 });
  const ids = (await cluster.query(`SELECT diagnosis.enqueue_diagnosis(p) AS id FROM unnest($1::uuid[]) p`,
    [[...a.patients, ...b.patients]])).rows.map((r) => r.id);
  const sampler = await cluster.connect();
  cleanups.push(() => sampler.end().catch(() => {}));
  const most = { a: 0, b: 0 };
  const sample = async () => {
    const r = (await sampler.query(`SELECT organization_id, count(*)::int AS n FROM diagnosis.runs
      WHERE status = 'running' GROUP BY organization_id`)).rows;
    for (const row of r) {
      const key = row.organization_id === a.org ? 'a' : 'b';
      most[key] = Math.max(most[key], row.n);
    }
    const open = (await sampler.query(`SELECT count(*)::int AS n FROM diagnosis.runs
      WHERE id = ANY($1) AND status IN ('queued', 'running')`, [ids])).rows[0].n;
    return open;
  };
  await cluster.reload({ 'diagnosis.enabled': true });
  // A state, not a time window: organization A at its cap (its 20 runs keep it there for several claims).
  await cluster.waitFor(async () => (await sample(), most.a >= 3), { timeout: 60000, interval: 20, what: 'organization A at its cap' });
  await cluster.waitFor(async () => (await sample()) === 0, { timeout: 90000, interval: 20, what: 'every run to end' });
  console.log(`most in flight at once: organization A ${most.a}, organization B ${most.b} (cap 3)`);
  assert.ok(most.a <= 3 && most.b <= 3, JSON.stringify(most));
  assert.equal(most.a, 3, 'the cap was not reached: the test proves nothing');
  for (const id of ids) assert.equal((await run(cluster, id)).status, 'completed');
});

test('a cancel left open in a transaction never blocks the worker; the run ends cancelled with its answer kept', { timeout: 90000 }, async () => {
  const { server, cluster } = await setUp({}, ['--latency-ms', '1500']);
  const { org, patients } = await createOrganization(cluster, { patients: 6 });
  await cluster.query('CREATE ROLE doc LOGIN');
  await cluster.query("INSERT INTO diagnosis.members VALUES ('doc', $1, 'admin')", [org]);
  const target = await enqueue(cluster, patients[0]);
  await cluster.waitFor(async () => (await run(cluster, target)).status === 'running', { what: 'the run in flight' });

  const canceller = await cluster.connect('doc');
  cleanups.push(() => canceller.end().catch(() => {}));
  await canceller.query('BEGIN');
  assert.equal((await canceller.query('SELECT diagnosis.cancel_diagnosis($1) AS ok', [target])).rows[0].ok, true);
  // While that transaction stays open, the worker finishes everything else.
  const others = [];
  for (const p of patients.slice(1)) others.push(await enqueue(cluster, p));
  await waitTerminal(cluster, others, 30000);
  // The target's answer has arrived (the worker holds no call any more) and its row, locked, still says running.
  await cluster.waitFor(async () => (await cluster.query('SELECT inflight FROM diagnosis.worker_status()')).rows[0]?.inflight === 0,
    { timeout: 30000, what: "the target's answer to arrive" });
  assert.equal((await run(cluster, target)).status, 'running');
  await canceller.query('COMMIT');
  await waitTerminal(cluster, [target], 30000);

  const r = await run(cluster, target);
  assert.equal(r.status, 'cancelled');
  assert.equal(r.cancel_requested_by, 'doc');
  const audit = (await cluster.query("SELECT actor, status_from, details FROM diagnosis.audit_log WHERE run_id = $1 AND event = 'CANCELLED'", [target])).rows;
  assert.equal(audit.length, 1);
  assert.equal(audit[0].actor, 'doc');
  assert.equal(audit[0].status_from, 'running');
  assert.equal(audit[0].details.answer_arrived, true);
  const kinds = (await cluster.query('SELECT artifact_type FROM diagnosis.artifacts WHERE run_id = $1 ORDER BY sequence_order', [target])).rows.map((x) => x.artifact_type);
  assert.deepEqual(kinds, ['context_pack', 'mcp_response']);
  assert.deepEqual((await server.stats()).calls[target], { 1: 1 });
  assert.deepEqual(await checkGuarantees(cluster), CLEAN);
});

test('an unknown run id and a run the caller may not see: same error, same path, same cost', { timeout: 60000 }, async () => {
  const { cluster } = await setUp({ 'diagnosis.enabled': false });
  const { patients } = await createOrganization(cluster, { patients: 1 });
  await cluster.query('CREATE ROLE outsider LOGIN');
  const hidden = await enqueue(cluster, patients[0]);
  const unknown = '00000000-0000-4000-8000-00000000dead';
  const client = await cluster.connect('outsider');
  cleanups.push(() => client.end().catch(() => {}));
  const timings = { hidden: [], unknown: [] };
  const errors = new Set();
  for (let i = 0; i < 300; i++) {
    for (const [kind, id] of [['hidden', hidden], ['unknown', unknown]]) {
      const t0 = process.hrtime.bigint();
      try {
        await client.query('SELECT diagnosis.cancel_diagnosis($1)', [id]);
      } catch (e) {
        errors.add(`${e.code}: ${e.message.replace(id, '<id>')}`);
      }
      timings[kind].push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  }
  const median = (xs) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const m = { hidden: median(timings.hidden), unknown: median(timings.unknown) };
  console.log(`cancel_diagnosis median round trip: invisible run ${m.hidden.toFixed(0)} µs, unknown run ${m.unknown.toFixed(0)} µs`);
  assert.deepEqual([...errors], ['22023: run "<id>" does not exist']);
  const ratio = m.hidden / m.unknown;
  assert.ok(ratio > 0.67 && ratio < 1.5, `ratio ${ratio.toFixed(2)}`);
});
