// The worker is not a superuser (issue 25), each point with the attack written out: the worker's session role; the
// index-predicate trap on a loader-owned FHIR source; LOCK TABLE in every mode by an outsider, a clinician and an
// admin on every table of the schema; the patient-id probe; settings a non-superuser database owner attaches; a
// worker configured with a superuser's role.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { waitTerminal } from '../lib/fixtures.mjs';
import { respiratoryRate, heartRate, oxygenSaturation } from '../lib/fhir.mjs';

const ORG_A = 'e0000000-0000-4000-8000-00000000000a';
const ORG_B = 'e0000000-0000-4000-8000-00000000000b';
const PATIENT_A = 'e0000000-0000-4000-8000-0000000000a1';
const PATIENT_A2 = 'e0000000-0000-4000-8000-0000000000a2';
const PATIENT_B = 'e0000000-0000-4000-8000-0000000000b1';
const LOCK_MODES = ['ACCESS SHARE', 'ROW SHARE', 'ROW EXCLUSIVE', 'SHARE UPDATE EXCLUSIVE', 'SHARE',
  'SHARE ROW EXCLUSIVE', 'EXCLUSIVE', 'ACCESS EXCLUSIVE'];
// The modes INSERT and SELECT allow: neither conflicts with what the worker or another tenant takes.
const HARMLESS_MODES = ['ACCESS SHARE', 'ROW EXCLUSIVE'];

let server;
let cluster;

before(async () => {
  server = await startMcpServer(['--mode', 'stateless', '--reply', 'json']);
  cluster = await startCluster({ settings: { 'diagnosis.mcp_url': server.url, 'diagnosis.poll_interval_ms': 200 } });
  await cluster.query(`
    CREATE ROLE pgd_lp_outsider LOGIN; CREATE ROLE pgd_lp_clin LOGIN; CREATE ROLE pgd_lp_admin LOGIN;
    CREATE ROLE pgd_lp_admin_b LOGIN; CREATE ROLE pgd_lp_clin_b LOGIN;
    INSERT INTO diagnosis.organizations (id, name) VALUES ('${ORG_A}', 'A'), ('${ORG_B}', 'B');
    INSERT INTO diagnosis.members VALUES ('pgd_lp_clin', '${ORG_A}', 'clinician'), ('pgd_lp_admin', '${ORG_A}', 'admin'),
                                         ('pgd_lp_admin_b', '${ORG_B}', 'admin'), ('pgd_lp_clin_b', '${ORG_B}', 'clinician');
    INSERT INTO diagnosis.patients (id, organization_id, display_name) VALUES
        ('${PATIENT_A}', '${ORG_A}', 'a1'), ('${PATIENT_A2}', '${ORG_A}', 'a2'), ('${PATIENT_B}', '${ORG_B}', 'b1');
    INSERT INTO diagnosis.patient_assignments VALUES ('${PATIENT_A}', 'pgd_lp_clin'), ('${PATIENT_B}', 'pgd_lp_clin_b');
    INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
    SELECT p, '9279-1', 22, '/min', now() FROM unnest(ARRAY['${PATIENT_A}', '${PATIENT_A2}', '${PATIENT_B}']::uuid[]) p;`);
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
});

async function enqueueAs(role, patient) {
  return (await cluster.query('SELECT diagnosis.enqueue_diagnosis($1, $2::jsonb) AS id', [patient, JSON.stringify({ n: randomUUID() })], role))
    .rows[0].id;
}

async function statusOf(id) {
  return (await cluster.query('SELECT status, error_code, error_message FROM diagnosis.runs WHERE id = $1', [id])).rows[0];
}

async function workerState() {
  return (await cluster.query('SELECT pid, state, last_error FROM diagnosis.worker_status()')).rows[0];
}

/** The SQLSTATE a statement fails with as `role`, or 'ok'. */
async function sqlstateAs(role, sql, params = []) {
  try {
    await cluster.query(sql, params, role);
    return 'ok';
  } catch (error) {
    return error.code;
  }
}

test('the worker acts as diagnosis_worker, a NOLOGIN role that is no superuser, and its runs complete', async () => {
  const id = await enqueueAs('pgd_lp_admin', PATIENT_A);
  await waitTerminal(cluster, [id]);
  assert.equal((await statusOf(id)).status, 'completed');
  const session = (await cluster.query(`
    SELECT a.usename, r.rolsuper, r.rolcanlogin, r.rolbypassrls,
           EXISTS (SELECT 1 FROM pg_roles s WHERE s.rolsuper AND pg_has_role(a.usesysid, s.oid, 'MEMBER')) AS member_of_superuser
    FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.backend_type = 'pg_diagnosis worker'`)).rows;
  assert.deepEqual(session, [{ usename: 'diagnosis_worker', rolsuper: false, rolcanlogin: false, rolbypassrls: false,
    member_of_superuser: false }]);
  const actors = (await cluster.query('SELECT event, actor FROM diagnosis.audit_log WHERE run_id = $1 ORDER BY id', [id])).rows;
  assert.deepEqual(actors.map((a) => `${a.event}:${a.actor}`),
    ['ENQUEUED:pgd_lp_admin', 'LOCKED:diagnosis_worker', 'COMPLETED:diagnosis_worker']);
});

test('no role but superusers holds UPDATE, DELETE or TRUNCATE on a table of the schema, the worker\'s role none', async () => {
  const holders = (await cluster.query(`
    SELECT c.relname, coalesce(g.rolname, 'PUBLIC') AS grantee, a.privilege_type
    FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE c.relnamespace = 'diagnosis'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
      AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE') AND a.grantee <> c.relowner
    UNION ALL
    SELECT c.relname || '.' || at.attname, coalesce(g.rolname, 'PUBLIC'), a.privilege_type
    FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid CROSS JOIN LATERAL aclexplode(at.attacl) a
    LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE c.relnamespace = 'diagnosis'::regnamespace AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    ORDER BY 1, 2, 3`)).rows;
  assert.deepEqual(holders, []);
  // The worker's role holds no table privilege at all: it executes the run's lifecycle functions.
  const worker = (await cluster.query(`
    SELECT c.relname, a.privilege_type FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
    WHERE c.relnamespace = 'diagnosis'::regnamespace AND a.grantee = 'diagnosis_worker'::regrole`)).rows;
  assert.deepEqual(worker, []);
  // What it may execute that PUBLIC may not: exactly the run's lifecycle functions (docs/SECURITY.md).
  const executable = (await cluster.query(`
    SELECT p.proname FROM pg_proc p
    WHERE p.pronamespace = 'diagnosis'::regnamespace AND has_function_privilege('diagnosis_worker', p.oid, 'EXECUTE')
      AND NOT has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1`)).rows.map((r) => r.proname);
  assert.deepEqual(executable, ['_claim_runs', '_finalize_runs', '_next_due', '_record_tasks', '_recover_runs',
    '_result_schemas', '_runs_to_cancel', '_write_progress']);
});

test('LOCK TABLE in every mode on every table and view: refused to an outsider, a clinician and an admin, or harmless', async () => {
  const tables = (await cluster.query(`SELECT c.relname FROM pg_class c
    WHERE c.relnamespace = 'diagnosis'::regnamespace AND c.relkind IN ('r', 'p', 'v') ORDER BY 1`)).rows.map((r) => r.relname);
  assert.ok(tables.length >= 13, tables.join());
  for (const role of ['pgd_lp_outsider', 'pgd_lp_clin', 'pgd_lp_admin']) {
    const client = await cluster.connect(role);
    try {
      const granted = [];
      for (const table of tables) {
        for (const mode of LOCK_MODES) {
          await client.query('BEGIN');
          try {
            await client.query(`LOCK TABLE diagnosis.${table} IN ${mode} MODE NOWAIT`);
            granted.push(`${table}:${mode}`);
          } catch (error) {
            assert.equal(error.code, '42501', `${role} LOCK ${table} IN ${mode}: ${error.message}`);
          } finally {
            await client.query('ROLLBACK');
          }
        }
      }
      for (const lock of granted) assert.ok(HARMLESS_MODES.includes(lock.split(':')[1]), `${role} got ${lock}`);
      // The attack of the issue: members and patients in ACCESS EXCLUSIVE mode, then hold it.
      await client.query('BEGIN');
      await assert.rejects(client.query('LOCK TABLE diagnosis.members, diagnosis.patients IN ACCESS EXCLUSIVE MODE'),
        (error) => error.code === '42501');
      await client.query('ROLLBACK');
      // Hold every lock this role can take, all at once, while the other organization works.
      await client.query('BEGIN');
      for (const lock of granted) {
        const [table, mode] = lock.split(':');
        await client.query(`LOCK TABLE diagnosis.${table} IN ${mode} MODE NOWAIT`);
      }
      const id = await enqueueAs('pgd_lp_admin_b', PATIENT_B);
      await waitTerminal(cluster, [id], 20000);
      assert.equal((await statusOf(id)).status, 'completed', `${role} holding ${granted.join(', ')}`);
      const seen = (await cluster.query('SELECT count(*)::int AS n FROM diagnosis.patients', [], 'pgd_lp_clin_b')).rows[0].n;
      assert.equal(seen, 1);
      await client.query('ROLLBACK');
    } finally {
      await client.end();
    }
  }
});

test('changes go through functions with the policies\' checks; an id of the caller\'s choosing probes nothing', async () => {
  // The probe of issue 27: an explicit id that exists in another organization answered 23505, a fresh one did not.
  for (const id of [PATIENT_B, randomUUID()]) {
    assert.equal(await sqlstateAs('pgd_lp_admin', 'INSERT INTO diagnosis.patients (id, organization_id) VALUES ($1, $2)', [id, ORG_A]), '42501');
    assert.equal(await sqlstateAs('pgd_lp_admin',
      'INSERT INTO diagnosis.patients (id, organization_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [id, ORG_A]), '42501');
  }
  assert.equal(await sqlstateAs('pgd_lp_admin', `INSERT INTO diagnosis.patients (organization_id, display_name) VALUES ($1, 'new')`, [ORG_A]), 'ok');
  // Direct writes are refused to everyone but the superuser.
  assert.equal(await sqlstateAs('pgd_lp_admin', `UPDATE diagnosis.patients SET display_name = 'x' WHERE id = $1`, [PATIENT_A]), '42501');
  assert.equal(await sqlstateAs('pgd_lp_admin', 'DELETE FROM diagnosis.observations'), '42501');
  assert.equal(await sqlstateAs('pgd_lp_admin', `UPDATE diagnosis.organizations SET name = 'x'`), '42501');
  // The functions: an admin of the organization may; a clinician may not (42501); another organization's patient
  // is reported like an unknown one (22023); NULL is 22004.
  assert.equal(await sqlstateAs('pgd_lp_admin', `SELECT diagnosis.update_patient($1, 'renamed')`, [PATIENT_A]), 'ok');
  assert.equal((await cluster.query('SELECT display_name FROM diagnosis.patients WHERE id = $1', [PATIENT_A])).rows[0].display_name, 'renamed');
  assert.equal(await sqlstateAs('pgd_lp_clin', `SELECT diagnosis.update_patient($1, 'x')`, [PATIENT_A]), '42501');
  assert.equal(await sqlstateAs('pgd_lp_admin', `SELECT diagnosis.update_patient($1, 'x')`, [PATIENT_B]), '22023');
  assert.equal(await sqlstateAs('pgd_lp_admin', `SELECT diagnosis.update_patient($1, 'x')`, [randomUUID()]), '22023');
  assert.equal(await sqlstateAs('pgd_lp_admin', 'SELECT diagnosis.update_patient(NULL)'), '22004');
  assert.equal(await sqlstateAs('pgd_lp_admin', 'SELECT diagnosis.delete_patient($1)', [PATIENT_B]), '22023');
  assert.equal(await sqlstateAs('pgd_lp_admin', `SELECT diagnosis.rename_organization($1, 'x')`, [ORG_B]), '22023');
  assert.equal(await sqlstateAs('pgd_lp_clin', `SELECT diagnosis.rename_organization($1, 'x')`, [ORG_A]), '42501');
  assert.equal(await sqlstateAs('pgd_lp_admin', `SELECT diagnosis.rename_organization($1, 'A renamed')`, [ORG_A]), 'ok');
  assert.equal(await sqlstateAs('pgd_lp_admin_b', `SELECT diagnosis.remove_member('pgd_lp_clin', $1)`, [ORG_A]), '22023');
  const obs = (await cluster.query('SELECT id FROM diagnosis.observations WHERE patient_id = $1', [PATIENT_A])).rows[0].id;
  assert.equal(await sqlstateAs('pgd_lp_admin_b', 'SELECT diagnosis.delete_observation($1)', [obs]), '22023');
  assert.equal(await sqlstateAs('pgd_lp_admin', 'SELECT diagnosis.update_observation($1, value => 23)', [obs]), 'ok');
  assert.equal(Number((await cluster.query('SELECT value FROM diagnosis.observations WHERE id = $1', [obs])).rows[0].value), 23);
});

test('the FHIR source is read as its owner: an index-predicate trap of its loader gains nothing, the run completes', async () => {
  const marker = `/tmp/pgdiag-lp-trap-${process.pid}`;
  rmSync(marker, { force: true });
  await cluster.query(`CREATE ROLE pgd_lp_loader LOGIN; CREATE SCHEMA fhir AUTHORIZATION pgd_lp_loader;`);
  // The loader (no superuser) owns the source and plants a predicate the planner evaluates: trap() is IMMUTABLE
  // and calls a VOLATILE function that, run by a superuser, makes the loader one and runs a program.
  await cluster.query(`
    CREATE TABLE fhir.observation (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, resource jsonb NOT NULL);
    CREATE FUNCTION fhir.escalate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$
    BEGIN
        RAISE LOG 'pgd_lp trap ran as % (superuser: %)', current_user,
            (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            ALTER ROLE pgd_lp_loader SUPERUSER;
            COPY (SELECT 1) TO PROGRAM 'touch ${marker}';
        END IF;
        RETURN true;
    END;
    $f$;
    CREATE FUNCTION fhir.trap() RETURNS boolean LANGUAGE sql IMMUTABLE AS $f$ SELECT fhir.escalate() $f$;
    CREATE INDEX observation_trap_idx ON fhir.observation ((resource -> 'subject' ->> 'reference')) WHERE fhir.trap();
    INSERT INTO fhir.observation (resource) SELECT r FROM jsonb_array_elements($1::jsonb) r;`
    .replace('$1::jsonb', `'${JSON.stringify([
      respiratoryRate('lp-rr', PATIENT_A2, '2026-01-01T10:00:00Z', 24),
      heartRate('lp-hr', PATIENT_A2, '2026-01-01T10:00:00Z', 120),
      oxygenSaturation('lp-spo2', PATIENT_A2, '2026-01-01T10:00:00Z', 91),
    ])}'::jsonb`), [], 'pgd_lp_loader');
  // The worker needs no grant on the hospital's table.
  const granted = (await cluster.query(`SELECT has_table_privilege('diagnosis_worker', 'fhir.observation', 'SELECT') AS s`)).rows[0].s;
  assert.equal(granted, false);
  await cluster.reload({ 'diagnosis.context_pack_function': 'diagnosis.fhir_context_pack', 'diagnosis.fhir_source': 'fhir.observation' });
  try {
    const id = await enqueueAs('pgd_lp_admin', PATIENT_A2);
    await waitTerminal(cluster, [id]);
    assert.deepEqual(await statusOf(id), { status: 'completed', error_code: null, error_message: null });
    const pack = (await cluster.query(`SELECT artifact_data FROM diagnosis.artifacts WHERE run_id = $1 AND artifact_type = 'context_pack'`, [id]))
      .rows[0].artifact_data;
    assert.equal(pack.source, 'fhir:fhir.observation');
    assert.equal(pack.observations.length, 3);
    // The trap ran where the FHIR pack is built, in a pack builder of the worker's (the attack path is live), as
    // the loader, and gained nothing.
    const ran = cluster.log().match(/.* pgd_lp trap ran as \S+ \(superuser: \w+\)/g) ?? [];
    assert.ok(ran.some((line) => line.includes('pg_diagnosis pack builder LOG:  pgd_lp trap ran as pgd_lp_loader (superuser: f)')),
      ran.join('\n'));
    assert.deepEqual(ran.filter((line) => !line.endsWith('pgd_lp trap ran as pgd_lp_loader (superuser: f)')), []);
    assert.equal((await cluster.query(`SELECT rolsuper FROM pg_roles WHERE rolname = 'pgd_lp_loader'`)).rows[0].rolsuper, false);
    assert.equal(existsSync(marker), false);
  } finally {
    await cluster.reload({ 'diagnosis.context_pack_function': '', 'diagnosis.fhir_source': '' });
  }
  // Control: the same query planned by a superuser springs the trap.
  await cluster.query(`SELECT count(*) FROM fhir.observation WHERE (resource -> 'subject' ->> 'reference') = 'x'`);
  assert.equal((await cluster.query(`SELECT rolsuper FROM pg_roles WHERE rolname = 'pgd_lp_loader'`)).rows[0].rolsuper, true);
  assert.equal(existsSync(marker), true);
  rmSync(marker, { force: true });
  await cluster.query('ALTER ROLE pgd_lp_loader NOSUPERUSER; DROP INDEX fhir.observation_trap_idx');
});

test('settings a non-superuser database owner attaches do not steer the worker', async () => {
  await cluster.query(`
    CREATE ROLE pgd_lp_dbowner LOGIN; ALTER DATABASE postgres OWNER TO pgd_lp_dbowner;
    CREATE FUNCTION public.slow_pack(patient_id uuid) RETURNS jsonb LANGUAGE sql
        AS $f$ SELECT diagnosis.build_context_pack(patient_id) FROM pg_sleep(0.3) $f$;`);
  await cluster.query(`
    ALTER DATABASE postgres SET role = 'pgd_lp_dbowner';
    ALTER DATABASE postgres SET statement_timeout = '100ms';
    ALTER DATABASE postgres SET lock_timeout = '1ms';
    ALTER DATABASE postgres SET search_path = public, pg_catalog;
    ALTER DATABASE postgres SET row_security = off;
    ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';`, [], 'pgd_lp_dbowner');
  // The test's own sessions set theirs back; every later connection of the worker gets the owner's.
  const su = async (sql, params = []) => {
    const client = await cluster.connect();
    try {
      await client.query('SET ROLE NONE; SET statement_timeout = 0; SET row_security = on; RESET search_path; SET default_transaction_isolation = \'read committed\'');
      return await client.query(sql, params);
    } finally {
      await client.end();
    }
  };
  try {
    const before = (await su('SELECT pid FROM diagnosis.worker_status()')).rows[0].pid;
    await su('SELECT pg_terminate_backend($1)', [before]);
    await cluster.waitFor(async () => {
      const w = (await su('SELECT pid, state FROM diagnosis.worker_status()')).rows[0];
      return w && w.pid !== before && w.state === 'idle';
    }, { what: 'the worker back, connected with the owner\'s settings' });
    const pid = (await su('SELECT pid FROM diagnosis.worker_status()')).rows[0].pid;
    cluster.setSettings({ 'diagnosis.context_pack_function': 'public.slow_pack' });
    await su('SELECT pg_reload_conf()');
    const ids = [];
    for (const p of [PATIENT_A, PATIENT_A2, PATIENT_B]) {
      ids.push((await su('SELECT diagnosis.enqueue_diagnosis($1, $2::jsonb) AS id', [p, JSON.stringify({ n: randomUUID() })])).rows[0].id);
    }
    await cluster.waitFor(async () => (await su(`SELECT count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) AND status IN ('queued', 'running')`, [ids])).rows[0].n === 0,
      { what: 'the runs to finish' });
    const runs = (await su('SELECT status, error_code FROM diagnosis.runs WHERE id = ANY($1)', [ids])).rows;
    assert.deepEqual(runs, ids.map(() => ({ status: 'completed', error_code: null })));
    const worker = (await su(`SELECT a.pid, a.usename FROM pg_stat_activity a WHERE a.backend_type = 'pg_diagnosis worker'`)).rows;
    assert.deepEqual(worker, [{ pid, usename: 'diagnosis_worker' }]);
  } finally {
    await su(`ALTER DATABASE postgres RESET ALL; ALTER DATABASE postgres OWNER TO postgres`);
    await cluster.reload({ 'diagnosis.context_pack_function': '' });
  }
});

test('a worker configured with a superuser\'s role, or a member of one, refuses to work: one log line, no claims; a member of diagnosis_worker works', async () => {
  await cluster.query('CREATE ROLE pgd_lp_su_member NOLOGIN; GRANT postgres TO pgd_lp_su_member');
  cluster.stop();
  cluster.setSettings({ 'diagnosis.worker_role': 'pgd_lp_su_member' });
  cluster.start();
  const refusing = await cluster.waitFor(async () => {
    const w = await workerState();
    return w?.state === 'config_error' ? w : null;
  }, { what: 'the worker to refuse' });
  assert.match(refusing.last_error, /"pgd_lp_su_member" is a superuser or a member of one; the worker refuses/);
  const id = await enqueueAs('pgd_lp_admin', PATIENT_A);
  // At poll_interval_ms = 200 the worker looks again ten times a second: two seconds are ten looks.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  assert.equal((await statusOf(id)).status, 'queued');
  const still = await workerState();
  assert.equal(still.pid, refusing.pid);
  assert.equal(still.state, 'config_error');
  assert.equal(cluster.log().match(/is a superuser or a member of one; the worker refuses/g).length, 1);
  const usename = (await cluster.query(`SELECT usename FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker'`)).rows[0].usename;
  assert.equal(usename, 'postgres'); // connected, acting as nobody yet: it runs no statement of its own
  // A role of the DBA's that is a member of diagnosis_worker (README, Installing): the queued run completes.
  await cluster.query('CREATE ROLE pgd_lp_custom NOLOGIN; GRANT diagnosis_worker TO pgd_lp_custom');
  cluster.stop();
  cluster.setSettings({ 'diagnosis.worker_role': 'pgd_lp_custom' });
  cluster.start();
  await waitTerminal(cluster, [id]);
  assert.equal((await statusOf(id)).status, 'completed');
  const acting = (await cluster.query(`SELECT usename FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker'`)).rows;
  assert.deepEqual(acting, [{ usename: 'pgd_lp_custom' }]);
});
