// A pg_auto_failover formation on one machine for the HA test: a monitor and two data nodes on 127.0.0.1 ports in a
// temporary directory, run as the `postgres` user without systemd (pg_autoctl keeps its configuration, state and
// pid files under XDG_CONFIG_HOME, XDG_DATA_HOME and XDG_RUNTIME_DIR, pointed into that directory for every call).
// pg_diagnosis is preloaded on both data nodes; everything started here is stopped when the process exits, even
// after a failure, by the PIDs this module started; the directory is removed too (PGDIAG_HA_KEEP=1 keeps it, with
// the logs, for a post-mortem).
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, appendFileSync, readFileSync, readdirSync, existsSync, openSync, closeSync, rmSync,
  chownSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import pg from 'pg';
import { freePort } from '../lib/cluster.mjs';

// The data nodes run the PostgreSQL that loads pg_diagnosis (PGDIAG_PG_BINDIR: a private copy, scripts/private_pg.sh);
// the monitor runs the installed one, which has the pgautofailover extension.
const SYSTEM_BINDIR = execFileSync('pg_config', ['--bindir']).toString().trim();
const NODE_BINDIR = process.env.PGDIAG_PG_BINDIR || SYSTEM_BINDIR;
const PG_UID = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Failover in seconds instead of the defaults' ~50 s. The monitor marks a node unhealthy after its health checks fail
// and it has not reported for node_considered_unhealthy_timeout; it then waits primary_demote_timeout before letting
// the secondary take writes, which must stay above the nodes' network_partition_timeout (after which a primary that
// lost the monitor and its standby demotes itself), so that two primaries never take writes at once.
export const MONITOR_TIMEOUTS = {
  'pgautofailover.health_check_period': 1000,
  'pgautofailover.health_check_timeout': 1000,
  'pgautofailover.health_check_max_retries': 1,
  'pgautofailover.health_check_retry_delay': 500,
  'pgautofailover.node_considered_unhealthy_timeout': 2000,
  'pgautofailover.primary_demote_timeout': 4000,
};
export const NODE_TIMEOUTS = { 'timeout.network_partition_timeout': 2 };

const live = new Set();
process.on('exit', () => {
  for (const formation of live) {
    formation.killAllSync();
    if (!process.env.PGDIAG_HA_KEEP) rmSync(formation.dir, { recursive: true, force: true });
  }
});

function settingLine(key, value) {
  if (typeof value === 'number' || typeof value === 'boolean') return `${key} = ${value}\n`;
  return `${key} = '${String(value).replace(/'/g, "''")}'\n`;
}

/** The PIDs of a process tree, root first, read from /proc (children of every thread). */
export function processTree(pid) {
  const pids = [pid];
  for (let i = 0; i < pids.length; i++) {
    const taskDir = `/proc/${pids[i]}/task`;
    if (!existsSync(taskDir)) continue;
    for (const task of readdirSync(taskDir)) {
      try {
        for (const child of readFileSync(join(taskDir, task, 'children'), 'utf8').trim().split(/\s+/)) {
          if (child) pids.push(Number(child));
        }
      } catch { /* the process exited meanwhile */ }
    }
  }
  return pids;
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** utime + stime of one process, in clock ticks (/proc/<pid>/stat fields 14 and 15). */
export function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** The process title of a PID ('' once it has exited). */
export function processTitle(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0+$/, '').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

export class DataNode {
  constructor(formation, name, port) {
    this.formation = formation;
    this.name = name;
    this.port = port;
    this.pgdata = join(formation.dir, name);
    this.logFile = join(formation.dir, `${name}.pg_autoctl.log`);
    this.proc = null;
  }

  config(database) {
    return { host: '127.0.0.1', port: this.port, user: 'postgres', database };
  }

  /** One query on a fresh connection to this node. */
  async query(sql, params = [], database = this.formation.database) {
    const client = new pg.Client({ ...this.config(database), connectionTimeoutMillis: 3000 });
    client.on('error', () => {});
    await client.connect();
    try {
      return await client.query(sql, params);
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** The postmaster's PID from postmaster.pid, or null when it is not running. */
  postmasterPid() {
    try {
      const pid = Number(readFileSync(join(this.pgdata, 'postmaster.pid'), 'utf8').split('\n')[0]);
      return pid && alive(pid) ? pid : null;
    } catch {
      return null;
    }
  }

  /** The PIDs of the postmaster's children whose title says they are pg_diagnosis workers. */
  workerProcesses() {
    const pm = this.postmasterPid();
    if (!pm) return [];
    return processTree(pm).slice(1).filter((pid) => /pg_diagnosis worker/.test(processTitle(pid)));
  }

  /** The PIDs of the walsenders streaming to the other node. */
  walsenderPids() {
    const pm = this.postmasterPid();
    if (!pm) return [];
    return processTree(pm).slice(1).filter((pid) => /walsender/.test(processTitle(pid)));
  }

  /** The server log files (logging_collector writes them under pgdata/log). */
  serverLog() {
    const dir = join(this.pgdata, 'log');
    if (!existsSync(dir)) return '';
    return readdirSync(dir).sort().map((f) => readFileSync(join(dir, f), 'utf8')).join('');
  }

  autoctlLog() {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  /** Starts `pg_autoctl run` (keeper and postmaster) for this node. */
  run() {
    this.proc = this.formation.spawnAutoctl(['run', '--pgdata', this.pgdata], this.logFile);
  }

  /**
   * Loses the node as a machine loss would: SIGKILL, at once, to the keeper, its postmaster and every process
   * under them, collected from /proc before the first signal so that none is restarted in between.
   */
  kill() {
    const pids = new Set(this.proc ? processTree(this.proc.pid) : []);
    const pm = this.postmasterPid();
    if (pm) for (const pid of processTree(pm)) pids.add(pid);
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    this.proc = null;
    return [...pids];
  }

  /** Waits until every process of this node is gone. */
  async waitGone(timeout = 10000) {
    const deadline = Date.now() + timeout;
    while (this.postmasterPid() !== null) {
      if (Date.now() > deadline) throw new Error(`${this.name}: the postmaster survived the kill`);
      await sleep(20);
    }
  }
}

export class Formation {
  constructor(dir) {
    this.dir = dir;
    this.xdg = { XDG_CONFIG_HOME: join(dir, 'xdg', 'config'), XDG_DATA_HOME: join(dir, 'xdg', 'data'),
      XDG_RUNTIME_DIR: join(dir, 'xdg', 'run') };
    this.database = 'diagnosis';
    this.monitorData = join(dir, 'monitor');
    this.monitorLog = join(dir, 'monitor.pg_autoctl.log');
    this.monitorProc = null;
    this.nodes = [];
  }

  /** Runs pg_autoctl as postgres with this formation's environment and waits for it. */
  autoctl(args) {
    const result = spawnSync('runuser', ['-u', 'postgres', '--', 'env', ...Object.entries(this.xdg).map(([k, v]) => `${k}=${v}`),
      'pg_autoctl', ...args], { encoding: 'utf8', cwd: os.tmpdir() });
    if (result.status !== 0) throw new Error(`pg_autoctl ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
    return result.stdout;
  }

  /** Starts a long-running pg_autoctl (`run`) as postgres, its output appended to logFile. */
  spawnAutoctl(args, logFile) {
    const fd = openSync(logFile, 'a');
    const proc = spawn('runuser', ['-u', 'postgres', '--', 'env', ...Object.entries(this.xdg).map(([k, v]) => `${k}=${v}`),
      'pg_autoctl', ...args], { stdio: ['ignore', fd, fd], cwd: os.tmpdir() });
    closeSync(fd);
    proc.on('error', () => {});
    return proc;
  }

  monitorUri() {
    return `postgres://autoctl_node@127.0.0.1:${this.monitorPort}/pg_auto_failover?sslmode=disable`;
  }

  /** The libpq connection string an application uses: both nodes, the one that takes writes. */
  conninfo() {
    return `host=${this.nodes.map(() => '127.0.0.1').join(',')} port=${this.nodes.map((n) => n.port).join(',')} ` +
      `dbname=${this.database} user=postgres target_session_attrs=read-write connect_timeout=2`;
  }

  /** The monitor's view: [{name, port, reported, assigned, health}] ordered by node id. */
  async state() {
    const client = new pg.Client({ host: '127.0.0.1', port: this.monitorPort, user: 'autoctl_node',
      database: 'pg_auto_failover', connectionTimeoutMillis: 3000 });
    client.on('error', () => {});
    await client.connect();
    try {
      const r = await client.query(`SELECT nodename AS name, nodeport AS port, reportedstate::text AS reported,
                                           goalstate::text AS assigned, health
                                    FROM pgautofailover.node ORDER BY nodeid`);
      return r.rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Waits until one node is a stable primary and the other a stable secondary; returns {primary, secondary}. */
  async waitHealthy({ timeout = 120000, what = 'a primary and a secondary' } = {}) {
    const deadline = Date.now() + timeout;
    let last = [];
    for (;;) {
      try {
        last = await this.state();
        const stable = (role) => last.find((s) => s.reported === role && s.assigned === role);
        const p = stable('primary');
        const s = stable('secondary');
        if (p && s && last.length === this.nodes.length) {
          return { primary: this.node(p.name), secondary: this.node(s.name) };
        }
      } catch { /* the monitor is starting */ }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
      await sleep(100);
    }
  }

  node(name) {
    return this.nodes.find((n) => n.name === name);
  }

  /** Kills whatever this formation started, synchronously (the exit handler). */
  killAllSync() {
    for (const node of this.nodes) node.kill();
    if (this.monitorProc) {
      const pids = processTree(this.monitorProc.pid);
      const pm = Number(readFileSafe(join(this.monitorData, 'postmaster.pid')).split('\n')[0]);
      if (pm && alive(pm)) pids.push(...processTree(pm));
      for (const pid of pids) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
      this.monitorProc = null;
    }
    live.delete(this);
  }

  /** Stops the nodes and the monitor (pg_autoctl stop: a fast shutdown), then removes the directory. */
  async destroy() {
    const procs = [...this.nodes.map((n) => n.proc), this.monitorProc].filter(Boolean);
    for (const pgdata of [...this.nodes.filter((n) => n.proc).map((n) => n.pgdata),
      ...(this.monitorProc ? [this.monitorData] : [])]) {
      try { this.autoctl(['stop', '--pgdata', pgdata]); } catch { /* killed below */ }
    }
    const deadline = Date.now() + 30000;
    while (procs.some((p) => p.exitCode === null && p.signalCode === null) && Date.now() < deadline) await sleep(100);
    this.killAllSync();
    if (!process.env.PGDIAG_HA_KEEP) rmSync(this.dir, { recursive: true, force: true });
  }
}

function readFileSafe(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/**
 * Creates and starts the formation. nodeSettings: postgresql.conf lines for both data nodes (diagnosis.mcp_url,
 * ...); setup(node): called once on the first primary after it runs (CREATE EXTENSION, fixtures), before the
 * secondary is cloned from it. replicationQuorum false makes both nodes
 * asynchronous standbys when they are not the primary (pg_autoctl --replication-quorum).
 */
export async function startFormation({ nodeSettings = {}, setup = async () => {}, replicationQuorum = true,
  log = () => {} } = {}) {
  const dir = mkdtempSync(join(os.tmpdir(), 'pgdiag-ha-'));
  const formation = new Formation(dir);
  for (const d of Object.values(formation.xdg)) mkdirSync(d, { recursive: true, mode: 0o700 });
  execFileSync('chown', ['-R', `${PG_UID}:${PG_UID}`, dir]);
  chownSync(dir, PG_UID, PG_UID);
  live.add(formation);
  try {
    const t0 = Date.now();
    formation.monitorPort = await freePort();
    formation.autoctl(['create', 'monitor', '--pgdata', formation.monitorData, '--pgport', String(formation.monitorPort),
      '--hostname', '127.0.0.1', '--auth', 'trust', '--no-ssl', '--pgctl', join(SYSTEM_BINDIR, 'pg_ctl')]);
    // pg_autoctl starts PostgreSQL with -h <listen_addresses from its own configuration>: only 127.0.0.1.
    formation.autoctl(['config', 'set', '--pgdata', formation.monitorData, 'postgresql.listen_addresses', '127.0.0.1']);
    // pg_autoctl rewrites its included file at every start: our settings go after the include line. Its tuning gives
    // every instance 25 % of RAM as shared_buffers; three instances share this machine with the other tests.
    appendFileSync(join(formation.monitorData, 'postgresql.conf'),
      Object.entries({ shared_buffers: '16MB', ...MONITOR_TIMEOUTS }).map(([k, v]) => settingLine(k, v)).join(''));
    formation.monitorProc = formation.spawnAutoctl(['run', '--pgdata', formation.monitorData], formation.monitorLog);
    log(`ha: monitor on port ${formation.monitorPort}`);

    for (const [i, name] of ['node_a', 'node_b'].entries()) {
      const node = new DataNode(formation, name, await freePort());
      formation.nodes.push(node);
      formation.autoctl(['create', 'postgres', '--pgdata', node.pgdata, '--pgport', String(node.port),
        '--listen', '127.0.0.1', '--hostname', '127.0.0.1', '--auth', 'trust', '--no-ssl', '--dbname', formation.database,
        '--name', name, '--monitor', formation.monitorUri(), '--pgctl', join(NODE_BINDIR, 'pg_ctl'),
        '--replication-quorum', String(replicationQuorum)]);
      for (const [key, value] of Object.entries(NODE_TIMEOUTS)) {
        formation.autoctl(['config', 'set', '--pgdata', node.pgdata, key, String(value)]);
      }
      if (i === 0) {
        // The secondary is cloned from this data directory (pg_basebackup copies postgresql.conf): one edit serves
        // both nodes. pg_autoctl preloads pg_stat_statements in its included file; the later line wins.
        appendFileSync(join(node.pgdata, 'postgresql.conf'), '# pg_diagnosis on this data node (after pg_autoctl\'s include)\n' +
          Object.entries({
            shared_preload_libraries: 'pg_stat_statements,pg_diagnosis',
            shared_buffers: '32MB',
            log_line_prefix: '%m [%p] %b ',
            'diagnosis.database': formation.database,
            ...nodeSettings,
          }).map(([k, v]) => settingLine(k, v)).join(''));
      }
      node.run();
      if (i === 0) {
        await waitFor(async () => (await formation.state()).some((s) => s.reported === 'single' && s.assigned === 'single'),
          60000, 'the first node to run as a single primary');
        await waitFor(async () => (await node.query('SELECT 1')).rows.length === 1, 60000, 'the first node to accept connections');
        await setup(node);
        await node.query('CHECKPOINT'); // pg_basebackup of the secondary then does not wait for one
      }
      log(`ha: ${name} on port ${node.port} (${Math.round((Date.now() - t0) / 100) / 10} s)`);
    }
    await formation.waitHealthy({ timeout: 120000 });
    log(`ha: formation healthy in ${Math.round((Date.now() - t0) / 100) / 10} s`);
    return formation;
  } catch (error) {
    error.message += `\n--- ${dir}: monitor log tail ---\n${readFileSafe(formation.monitorLog).slice(-3000)}` +
      formation.nodes.map((n) => `\n--- ${n.name} pg_autoctl log tail ---\n${n.autoctlLog().slice(-3000)}`).join('');
    await formation.destroy();
    throw error;
  }
}

/** Polls predicate() (async) every 50 ms until it is truthy; errors count as false until the deadline. */
export async function waitFor(predicate, timeout, what) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
    await sleep(50);
  }
}
