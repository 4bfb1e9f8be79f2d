// A throwaway PostgreSQL cluster for tests: initdb as the unprivileged `postgres` user in a temporary directory,
// listening on 127.0.0.1 on a free port, with pg_diagnosis preloaded. Every cluster started here is stopped when
// the process exits, even after a failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, appendFileSync, readFileSync, rmSync, chownSync, existsSync, openSync, readSync, closeSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import os from 'node:os';
import pg from 'pg';

// PGDIAG_PG_BINDIR: another PostgreSQL installation's bin directory (scripts/sanitize.sh points it at a private copy
// whose server loads the sanitized build of pg_diagnosis).
const BINDIR = process.env.PGDIAG_PG_BINDIR || execFileSync('pg_config', ['--bindir']).toString().trim();
const live = new Set();

process.on('exit', () => {
  for (const cluster of live) cluster.stopSync('immediate');
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function asPostgres(args, options = {}) {
  // From /tmp: the checkout may live where the postgres user cannot enter.
  const result = spawnSync('runuser', ['-u', 'postgres', '--', ...args], { encoding: 'utf8', cwd: os.tmpdir(), ...options });
  if (result.status !== 0) {
    throw new Error(`${args.join(' ')} failed (${result.status}): ${result.stderr || result.stdout}`);
  }
  return result.stdout;
}

function pgUid() {
  return Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
}

function settingLine(key, value) {
  if (typeof value === 'number' || typeof value === 'boolean') return `${key} = ${value}\n`;
  return `${key} = '${String(value).replace(/'/g, "''")}'\n`;
}

/**
 * True when `bindir`'s postgres is scripts/sanitize.sh's wrapper (the server with ASan preloaded): ASan reserves
 * terabytes of address space for its shadow memory, so an address-space limit cannot apply there.
 */
export function isSanitizedServer(bindir = BINDIR) {
  const fd = openSync(join(bindir, 'postgres'), 'r');
  try {
    const head = Buffer.alloc(2);
    readSync(fd, head, 0, 2, 0);
    return head.toString() === '#!';
  } finally {
    closeSync(fd);
  }
}

export class Cluster {
  /** addressSpaceKb: the postmaster (and so every backend and worker) starts under `ulimit -v` of this many KiB. */
  constructor(dir, port, bindir = BINDIR, { addressSpaceKb = 0 } = {}) {
    this.dir = dir;
    this.port = port;
    this.bindir = bindir;
    this.addressSpaceKb = addressSpaceKb;
    this.data = join(dir, 'data');
    this.logFile = join(dir, 'postgres.log');
  }

  connectionConfig(user = 'postgres', database = 'postgres') {
    return { host: '127.0.0.1', port: this.port, user, database };
  }

  /** A connected pg.Client; the caller ends it. */
  async connect(user = 'postgres', database = 'postgres') {
    const client = new pg.Client(this.connectionConfig(user, database));
    // A server that dies (the crash tests kill it) also emits 'error' on the client; the pending query already
    // rejects with it, so the event itself needs no handling beyond not being fatal.
    client.on('error', () => {});
    await client.connect();
    return client;
  }

  /** One query on a fresh connection. */
  async query(sql, params = [], user = 'postgres') {
    const client = await this.connect(user);
    try {
      return await client.query(sql, params);
    } finally {
      await client.end();
    }
  }

  setSettings(settings) {
    let text = '';
    for (const [key, value] of Object.entries(settings)) text += settingLine(key, value);
    appendFileSync(join(this.data, 'postgresql.conf'), text);
  }

  start() {
    const start = [join(this.bindir, 'pg_ctl'), '-D', this.data, '-l', this.logFile, '-w', '-t', '60', 'start'];
    if (this.addressSpaceKb > 0) {
      // pg_ctl passes the limit on to the postmaster, whose children inherit it.
      asPostgres(['sh', '-c', `ulimit -v ${Number(this.addressSpaceKb)} && exec "$@"`, 'sh', ...start]);
    } else {
      asPostgres(start);
    }
    live.add(this);
  }

  stop(mode = 'fast') {
    asPostgres([join(this.bindir, 'pg_ctl'), '-D', this.data, '-m', mode, '-w', '-t', '60', 'stop']);
    live.delete(this);
  }

  stopSync(mode = 'immediate') {
    spawnSync('runuser', ['-u', 'postgres', '--', join(this.bindir, 'pg_ctl'), '-D', this.data, '-m', mode, '-w', 'stop'],
      { stdio: 'ignore', cwd: os.tmpdir() });
    live.delete(this);
  }

  /** SIGHUP the server after appending settings. */
  async reload(settings = {}) {
    this.setSettings(settings);
    await this.query('SELECT pg_reload_conf()');
  }

  /**
   * Reloads `settings` and waits until every worker has applied them, a state rather than a time: the same SIGHUP
   * also pauses the workers (diagnosis.enabled = off, shown as state 'paused'), and a second one resumes them. For
   * a test whose precondition is the new setting (a fixed sleep after pg_reload_conf() is too short on a loaded
   * machine). Only while no run is in flight: a paused worker claims nothing.
   */
  async reloadApplied(settings = {}) {
    const states = async () => (await this.query('SELECT state FROM diagnosis.worker_status()')).rows.map((r) => r.state);
    await this.reload({ ...settings, 'diagnosis.enabled': 'off' });
    await this.waitFor(async () => { const s = await states(); return s.length > 0 && s.every((x) => x === 'paused'); },
      { what: 'the workers to apply the reload (paused)' });
    await this.reload({ 'diagnosis.enabled': 'on' });
    await this.waitFor(async () => { const s = await states(); return s.length > 0 && s.every((x) => x !== 'paused'); },
      { what: 'the workers to resume' });
  }

  log() {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  /** pids of the pg_diagnosis workers, from pg_stat_activity. */
  async workerPids() {
    const r = await this.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_diagnosis worker' ORDER BY pid");
    return r.rows.map((row) => row.pid);
  }

  /** Waits until `predicate()` (async) is truthy, polling every `interval` ms, for at most `timeout` ms. */
  async waitFor(predicate, { timeout = 30000, interval = 50, what = 'condition' } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      let value;
      try {
        value = await predicate();
      } catch (error) {
        if (Date.now() > deadline) throw error;
      }
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, interval));
    }
  }

  /** Leaves the cluster running after this process exits (the demo's --keep). */
  detach() {
    live.delete(this);
  }

  destroy() {
    if (live.has(this)) this.stopSync('immediate');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts a cluster with pg_diagnosis preloaded and the extension created in `postgres`.
 * settings: extra postgresql.conf lines (e.g. {'diagnosis.mcp_url': url}); bindir: another installation (the
 * upgrade test starts a released version's, then the same data directory with this one: cluster.bindir = ...);
 * addressSpaceKb: start the postmaster under `ulimit -v` (see Cluster).
 */
export async function startCluster({ settings = {}, createExtension = true, bindir = BINDIR, addressSpaceKb = 0 } = {}) {
  const dir = mkdtempSync(join(os.tmpdir(), 'pgdiag-cluster-'));
  chownSync(dir, pgUid(), pgUid());
  const cluster = new Cluster(dir, await freePort(), bindir, { addressSpaceKb });
  asPostgres([join(bindir, 'initdb'), '-D', cluster.data, '-U', 'postgres', '--auth=trust', '--no-sync',
    '-E', 'UTF8', '--locale=C']);
  cluster.setSettings({
    listen_addresses: '127.0.0.1',
    port: cluster.port,
    unix_socket_directories: dir,
    shared_preload_libraries: 'pg_diagnosis',
    max_worker_processes: 32,
    max_connections: 200,
    fsync: 'off',
    log_line_prefix: '%m [%p] %b ',
    'diagnosis.database': 'postgres',
    ...settings,
  });
  cluster.start();
  if (createExtension) await cluster.query('CREATE EXTENSION pg_diagnosis');
  return cluster;
}
