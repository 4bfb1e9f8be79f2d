// Security: the MCP bearer token is sent but never shown (SHOW, pg_settings, current_setting, error messages, the
// server log), TLS verification cannot be turned off, and a server that rejects the token fails runs permanently.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, chownSync, chmodSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import https from 'node:https';
import os from 'node:os';
import { startCluster } from '../lib/cluster.mjs';
import { startMcpServer } from '../lib/mcp.mjs';
import { createOrganization, enqueue, run, waitTerminal } from '../lib/fixtures.mjs';

const TOKEN = 'sk-pgdiag-' + Math.random().toString(36).slice(2) + '-secret';
let dir;
let server;
let cluster;
let patients;

before(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'pgdiag-sec-'));
  const tokenFile = join(dir, 'mcp.token');
  writeFileSync(tokenFile, `${TOKEN}\n`);
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
  chownSync(dir, uid, uid);
  chownSync(tokenFile, uid, uid);
  chmodSync(tokenFile, 0o600);
  server = await startMcpServer(['--mode', 'stateless', '--reply', 'json', '--auth-token', TOKEN]);
  cluster = await startCluster({ settings: {
    'diagnosis.mcp_url': server.url, 'diagnosis.mcp_auth_token': `file:${tokenFile}`, 'diagnosis.retry_base_delay_ms': 50,
  } });
  ({ patients } = await createOrganization(cluster, { patients: 5 }));
  await cluster.query('CREATE ROLE pgd_sec_app LOGIN');
});

after(async () => {
  cluster?.destroy();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('the token is sent: a server that requires it completes the run', async () => {
  const id = await enqueue(cluster, patients[0]);
  await waitTerminal(cluster, [id]);
  assert.equal((await run(cluster, id)).status, 'completed');
});

test('the token is invisible to non-superusers and masked for superusers', async () => {
  await assert.rejects(cluster.query('SHOW diagnosis.mcp_auth_token', [], 'pgd_sec_app'), (e) => e.code === '42501');
  await assert.rejects(cluster.query(`SELECT current_setting('diagnosis.mcp_auth_token')`, [], 'pgd_sec_app'), (e) => e.code === '42501');
  const visible = (await cluster.query(`SELECT count(*)::int AS n FROM pg_settings WHERE name = 'diagnosis.mcp_auth_token'`, [], 'pgd_sec_app')).rows[0].n;
  assert.equal(visible, 0);
  assert.equal((await cluster.query('SHOW diagnosis.mcp_auth_token')).rows[0]['diagnosis.mcp_auth_token'], '********');
  const all = (await cluster.query(`SELECT string_agg(setting, ' ') AS s FROM pg_settings`)).rows[0].s;
  assert.ok(!all.includes(TOKEN));
  // Changing it at reload through the file form never puts the token in the log either.
  await cluster.reloadApplied({ 'diagnosis.mcp_auth_token': `file:${join(dir, 'mcp.token')}` });
  assert.ok(!cluster.log().includes(TOKEN), 'the token appears in the server log');
});

test('a server that rejects the token pauses claiming (401 is a setting, not the run): the run stays queued, unspent, and the token is never shown', async () => {
  const other = await startMcpServer(['--mode', 'stateless', '--reply', 'json', '--auth-token', 'a-different-token']);
  try {
    await cluster.reloadApplied({ 'diagnosis.mcp_url': other.url });
    const id = await enqueue(cluster, patients[1]);
    const status = await cluster.waitFor(async () => {
      const s = (await cluster.query('SELECT state, last_error FROM diagnosis.worker_status()')).rows[0];
      return s.state === 'config_error' ? s : null;
    }, { what: 'the worker paused' });
    assert.match(status.last_error, /401/);
    assert.ok(!status.last_error.includes(TOKEN));
    const r = await run(cluster, id);
    assert.equal(r.status, 'queued');
    assert.equal(r.attempt, 0, 'the rejected call did not spend an attempt');
    assert.ok(!JSON.stringify(r).includes(TOKEN));
    assert.ok(!cluster.log().includes(TOKEN));
    // The right endpoint (and token) again: the run completes.
    await cluster.reload({ 'diagnosis.mcp_url': server.url });
    await waitTerminal(cluster, [id]);
    assert.equal((await run(cluster, id)).status, 'completed');
  } finally {
    await cluster.reload({ 'diagnosis.mcp_url': server.url });
    await other.stop();
  }
});

test('TLS verification is always on: a self-signed endpoint pauses claiming (0.3: a setting that cannot work), no run fails, and no setting turns verification off', async () => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-days', '1',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  const tls = https.createServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) },
    (req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
  await new Promise((r) => tls.listen(0, '127.0.0.1', r));
  let id;
  try {
    await cluster.reloadApplied({ 'diagnosis.mcp_url': `https://127.0.0.1:${tls.address().port}/mcp` });
    id = await enqueue(cluster, patients[2]);
    const w = await cluster.waitFor(async () => {
      const row = (await cluster.query('SELECT state, last_error FROM diagnosis.worker_status()')).rows[0];
      return row && /TLS verification failed/.test(row.last_error ?? '') ? row : null;
    }, { what: 'the worker to pause on the self-signed certificate' });
    assert.equal(w.state, 'config_error');
    const r = await run(cluster, id);
    assert.equal(r.status, 'queued');
    assert.equal(r.attempt, 0, 'the refused handshake did not spend an attempt');
    // Verification has no off switch: the TLS settings only name files (a CA bundle, a client certificate and key).
    const knobs = (await cluster.query(`SELECT name FROM pg_settings WHERE name LIKE 'diagnosis.%'
                                        AND (name ~ '(ssl|tls|verify|insecure|cert|ca_file|client_key)')
                                        ORDER BY name`)).rows.map((row) => row.name);
    assert.deepEqual(knobs, ['diagnosis.mcp_ca_file', 'diagnosis.mcp_client_cert', 'diagnosis.mcp_client_key']);
  } finally {
    await cluster.reload({ 'diagnosis.mcp_url': server.url });
    tls.closeAllConnections();
    await new Promise((r) => tls.close(r));
  }
  await waitTerminal(cluster, [id], 60000); // back on the good endpoint, the paused run completes
  assert.equal((await run(cluster, id)).status, 'completed');
});
