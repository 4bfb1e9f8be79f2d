// Issue 28: the workers against a protected MCP server as a hospital runs one: HTTPS with a private CA, mutual TLS,
// and OAuth client credentials from an authorization server of our own (test/lib/oauth_tls.mjs), with tokens that
// live three seconds while runs are in flight.
//   - with no CA configured the certificate cannot be verified: claiming pauses (last_error says so), no run fails;
//     once diagnosis.mcp_ca_file names the CA the same runs complete;
//   - client_secret_basic, then private_key_jwt: every run completes exactly once, and tokens are fetched per expiry,
//     not per call (renewed ahead of expiry, so no call meets an expired token);
//   - no secret (client secret, private key, access tokens) appears in the server log, in pg_settings for a
//     non-superuser, in worker_status(), in audit rows or in artifacts.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, waitTerminal } from '../lib/fixtures.mjs';
import { makePki, startAuthServer, startProtectedMcp } from '../lib/oauth_tls.mjs';

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const CLIENT_ID = 'pg-diagnosis-hospital';
const LIFETIME_S = 3;

async function statuses(cluster, ids) {
  const r = await cluster.query(
    'SELECT status, count(*)::int AS n FROM diagnosis.runs WHERE id = ANY($1) GROUP BY status ORDER BY status', [ids]);
  return Object.fromEntries(r.rows.map((row) => [row.status, row.n]));
}

/** Each run's COMPLETED audit rows: exactly one each. */
async function completedOnce(cluster, ids) {
  const r = await cluster.query(`
    SELECT r.id, count(a.*) FILTER (WHERE a.event = 'COMPLETED')::int AS completed, r.attempt
    FROM diagnosis.runs r LEFT JOIN diagnosis.audit_log a ON a.run_id = r.id
    WHERE r.id = ANY($1) GROUP BY r.id, r.attempt`, [ids]);
  return r.rows.filter((row) => row.completed !== 1).map((row) => row.id);
}

test('HTTPS with a private CA and mutual TLS, OAuth client credentials (secret, then JWT), tokens of 3 s', { timeout: 120000 }, async (t) => {
  const pgUid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const pki = makePki(pgUid);
  cleanups.push(() => pki.destroy());
  const upstream = await startMcpServer(['--latency-ms', '400']);
  cleanups.push(() => upstream.stop());
  const as = await startAuthServer(pki, { clientId: CLIENT_ID, lifetimeS: LIFETIME_S });
  cleanups.push(() => as.stop());
  const mcp = await startProtectedMcp(pki, as, upstream.url);
  cleanups.push(() => mcp.stop());

  const cluster = await startCluster({
    settings: {
      'diagnosis.mcp_url': mcp.url,
      'diagnosis.mcp_oauth_client_id': CLIENT_ID,
      'diagnosis.mcp_oauth_client_secret': `file:${pki.file('secret')}`,
      'diagnosis.mcp_client_cert': pki.file('client.pem'),
      'diagnosis.mcp_client_key': pki.file('client.key'),
      'diagnosis.max_inflight': 16,
      'diagnosis.retry_base_delay_ms': 100,
    },
  });
  cleanups.push(async () => cluster.destroy());
  const { patients } = await createOrganization(cluster, { patients: 40 });

  // 1. No CA: the server's certificate cannot be verified. Claiming pauses with the reason; nothing fails.
  const first = [];
  for (const p of patients.slice(0, 4)) first.push(await enqueue(cluster, p));
  const paused = await cluster.waitFor(async () => {
    const w = (await cluster.query('SELECT state, last_error FROM diagnosis.worker_status()')).rows[0];
    return w && /TLS verification failed/.test(w.last_error ?? '') ? w : null;
  }, { timeout: 30000, what: 'the worker to pause on the unverifiable certificate' }).catch(async (e) => {
    console.log(JSON.stringify((await cluster.query('SELECT * FROM diagnosis.worker_status()')).rows));
    console.log(JSON.stringify(await statuses(cluster, first)), JSON.stringify((await cluster.query('SELECT status, error_code, error_message FROM diagnosis.runs')).rows));
    console.log(cluster.log().slice(-3000));
    throw e;
  });
  assert.equal(paused.state, 'config_error');
  assert.match(paused.last_error, /certificate/i);
  const before = await statuses(cluster, first);
  assert.equal(before.failed, undefined, `no run fails on an unverifiable certificate: ${JSON.stringify(before)}`);
  assert.equal(as.stats.issued, 0);

  // 2. The CA configured: the same runs complete (mutual TLS: the front saw our client certificate).
  await cluster.reload({ 'diagnosis.mcp_ca_file': pki.file('ca.pem') });
  await waitTerminal(cluster, first, 60000);
  assert.deepEqual(await statuses(cluster, first), { completed: first.length });
  assert.ok(mcp.stats.peers.has('client'), 'the MCP front saw the client certificate');

  // 3. client_secret_basic while tokens expire every 3 s: 24 runs of 400 ms each, 16 at a time, spread over a few
  //    token lifetimes by enqueueing them in waves.
  const issuedBefore = as.stats.issued;
  const started = Date.now();
  const secretRuns = [];
  for (const p of patients.slice(4, 28)) {
    secretRuns.push(await enqueue(cluster, p));
    await new Promise((r) => setTimeout(r, 250));
  }
  await waitTerminal(cluster, secretRuns, 60000);
  const elapsedS = (Date.now() - started) / 1000;
  assert.deepEqual(await statuses(cluster, secretRuns), { completed: secretRuns.length });
  assert.deepEqual(await completedOnce(cluster, [...first, ...secretRuns]), []);
  const fetched = as.stats.issued - issuedBefore;
  t.diagnostic(`client_secret_basic: ${secretRuns.length} runs in ${elapsedS.toFixed(1)} s, ${fetched} tokens of ${LIFETIME_S} s, ` +
    `${mcp.stats.unauthorized} 401s in all so far, ${mcp.stats.used.size} distinct tokens used`);
  // Renewed at 4/5 of the 3 s life: about one token per 2.4 s, never one per call.
  assert.ok(fetched >= 1, 'tokens were renewed while runs were in flight');
  assert.ok(fetched <= Math.ceil(elapsedS / (LIFETIME_S * 0.8)) + 2,
    `${fetched} tokens in ${elapsedS.toFixed(1)} s of ${LIFETIME_S} s tokens: fetched per expiry`);
  assert.ok(fetched < secretRuns.length / 2, `${fetched} tokens for ${secretRuns.length} calls`);
  assert.equal(as.stats.jwt, 0);
  assert.ok(as.stats.basic >= 1);

  // 4. private_key_jwt: the secret goes, the key comes; runs complete with tokens from signed assertions.
  await cluster.reload({
    'diagnosis.mcp_oauth_client_secret': '',
    'diagnosis.mcp_oauth_private_key': `file:${pki.file('jwt.key')}`,
  });
  const jwtRuns = [];
  for (const p of patients.slice(28, 40)) {
    jwtRuns.push(await enqueue(cluster, p));
    await new Promise((r) => setTimeout(r, 250));
  }
  await waitTerminal(cluster, jwtRuns, 60000);
  assert.deepEqual(await statuses(cluster, jwtRuns), { completed: jwtRuns.length });
  assert.deepEqual(await completedOnce(cluster, jwtRuns), []);
  assert.ok(as.stats.jwt >= 1, 'tokens came from private_key_jwt');
  assert.equal(as.stats.refused, 0);

  // 5. Secrets appear nowhere a non-superuser or an operator's log reader could see them.
  const secrets = [pki.secret, ...as.tokens.keys(), pki.jwtKeyPem.split('\n')[1]];
  assert.ok(secrets.length >= 3);
  await cluster.query('CREATE ROLE pgd_oauth_reader LOGIN');
  const visible = (await cluster.query(
    "SELECT string_agg(name || '=' || setting, ' ') AS s FROM pg_settings WHERE name LIKE 'diagnosis.%'", [],
    'pgd_oauth_reader')).rows[0].s;
  assert.doesNotMatch(visible, /mcp_oauth_client_secret|mcp_oauth_private_key|mcp_client_key/);
  const superuserView = (await cluster.query('SHOW diagnosis.mcp_oauth_private_key')).rows[0];
  assert.ok(superuserView, 'a superuser sees the key setting (a file name)');
  const surfaces = {
    log: cluster.log(),
    settings: visible,
    worker_status: JSON.stringify((await cluster.query('SELECT * FROM diagnosis.worker_status()')).rows),
    audit: JSON.stringify((await cluster.query('SELECT * FROM diagnosis.audit_log')).rows),
    artifacts: JSON.stringify((await cluster.query('SELECT * FROM diagnosis.artifacts')).rows),
    runs: JSON.stringify((await cluster.query('SELECT * FROM diagnosis.runs')).rows),
  };
  for (const [where, text] of Object.entries(surfaces))
    for (const secret of secrets)
      assert.ok(!text.includes(secret), `a secret (${secret.slice(0, 6)}...) appears in ${where}`);
  // The upstream MCP server never received a token: the front strips it, and the worker sends it only to the MCP
  // origin (the authorization server, another origin, never saw a bearer token: it got client credentials).
  assert.equal(mcp.stats.unauthorized >= 1, true);
});

/** pg_diagnosis_mcp_check of the core's CMake build (build/ at the top of the checkout, or PGDIAG_MCP_CHECK). */
const MCP_CHECK = process.env.PGDIAG_MCP_CHECK ??
  fileURLToPath(new URL('../../build/pg_diagnosis_mcp_check', import.meta.url));

test('authorization code: an operator logs in once with the CLI, the workers refresh from the stored token and keep it rotated', { timeout: 120000 }, async (t) => {
  const pgUid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const pki = makePki(pgUid);
  cleanups.push(() => pki.destroy());
  const upstream = await startMcpServer(['--latency-ms', '200']);
  cleanups.push(() => upstream.stop());
  const as = await startAuthServer(pki, { clientId: CLIENT_ID, lifetimeS: LIFETIME_S });
  cleanups.push(() => as.stop());
  const mcp = await startProtectedMcp(pki, as, upstream.url);
  cleanups.push(() => mcp.stop());
  const tls = { 'diagnosis.mcp_ca_file': pki.file('ca.pem'), 'diagnosis.mcp_client_cert': pki.file('client.pem'),
    'diagnosis.mcp_client_key': pki.file('client.key') };
  const cluster = await startCluster({ settings: { 'diagnosis.mcp_url': mcp.url, ...tls, 'diagnosis.retry_base_delay_ms': 100 } });
  cleanups.push(async () => cluster.destroy());
  const store = join(cluster.data, 'pg_diagnosis_oauth.json');

  // The login step, as the README tells the operator: as postgres, into the data directory.
  // Asynchronously: the authorization server and the MCP front run in this process and must answer meanwhile.
  const login = await new Promise((resolve) => {
    execFile('runuser', ['-u', 'postgres', '--', MCP_CHECK, '--login', '--oauth-headless',
    '--oauth-client-id', CLIENT_ID, '--oauth-store', store, '--ca-file', pki.file('ca.pem'),
    '--client-cert', pki.file('client.pem'), '--client-key', pki.file('client.key'), mcp.url], { encoding: 'utf8', timeout: 30000 },
      (error, stdout, stderr) => resolve({ status: error ? (error.code ?? 1) : 0, stdout, stderr }));
  });
  assert.equal(login.status, 0, `${login.stdout}\n${login.stderr}`);
  assert.equal(as.stats.code, 1);
  const st = statSync(store);
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.uid, pgUid);
  const loggedIn = JSON.parse(readFileSync(store, 'utf8'));
  assert.equal(loggedIn.client_id, CLIENT_ID);
  assert.equal(loggedIn.issuer, as.issuer);
  assert.ok(!login.stdout.includes(loggedIn.refresh_token), 'the CLI does not print the refresh token');

  // The workers: no client credentials at all, only the stored login. Runs over several token lifetimes.
  const { patients } = await createOrganization(cluster, { patients: 12 });
  const ids = [];
  for (const p of patients) {
    ids.push(await enqueue(cluster, p));
    await new Promise((r) => setTimeout(r, 400));
  }
  await waitTerminal(cluster, ids, 60000);
  assert.deepEqual(await statuses(cluster, ids), { completed: ids.length });
  assert.deepEqual(await completedOnce(cluster, ids), []);
  t.diagnostic(`refresh grants: ${as.stats.refresh}, refused: ${as.stats.refused}`);
  assert.ok(as.stats.refresh >= 2, 'the workers refreshed, more than once');
  assert.equal(as.stats.refused, 0, 'every refresh used the live (rotated) refresh token');
  const rotated = JSON.parse(readFileSync(store, 'utf8'));
  assert.notEqual(rotated.refresh_token, loggedIn.refresh_token, 'the store holds the rotated refresh token');
  assert.equal(statSync(store).mode & 0o777, 0o600);
  const surfaces = [cluster.log(), JSON.stringify((await cluster.query('SELECT * FROM diagnosis.audit_log')).rows),
    JSON.stringify((await cluster.query('SELECT * FROM diagnosis.worker_status()')).rows)].join('\n');
  for (const secret of as.tokens.keys()) assert.ok(!surfaces.includes(secret), 'a token or refresh token leaked');
});
