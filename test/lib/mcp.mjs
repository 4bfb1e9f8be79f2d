// The reference MCP server as a child process on 127.0.0.1 and a free port, stopped when the process exits.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const SERVER = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'mcp-server', 'src', 'server.js');
const live = new Set();
process.on('exit', () => {
  for (const server of live) server.proc.kill('SIGKILL');
});

export class McpServer {
  constructor(proc, url) {
    this.proc = proc;
    this.url = url;
    this.base = new URL(url).origin;
  }

  async stats() {
    const res = await fetch(`${this.base}/stats`);
    return res.json();
  }

  async resetStats() {
    // The server accepts writes only as application/json (a web page cannot send that cross-origin).
    const res = await fetch(`${this.base}/stats/reset`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    if (!res.ok) throw new Error(`POST /stats/reset: ${res.status}`);
  }

  /**
   * Changes runtime settings (fault_rate, fault_kinds, latency_ms, reply, retry_after, session_expiry_calls, hang_ms,
   * task_poll_ms, task_ttl_ms).
   */
  async configure(settings) {
    const res = await fetch(`${this.base}/config`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(settings),
    });
    if (!res.ok) throw new Error(`POST /config: ${res.status}`);
  }

  /** Leaves the server running after this process exits (the demo's --keep). */
  detach() {
    live.delete(this);
    this.proc.stdout.destroy();
    this.proc.stderr.destroy();
    this.proc.unref();
  }

  /** SIGTERM, then SIGKILL if it has not exited within 5 s. */
  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
      live.delete(this);
      return;
    }
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    live.delete(this);
  }
}

/**
 * Starts the reference server with the given flags (e.g. ['--reply', 'json'], ['--era', 'legacy'], ['--tasks',
 * '--task-dir', dir]; mcp-server/README.md lists them) and resolves once it listens.
 */
export function startMcpServer(args = [], env = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [SERVER, '--host', '127.0.0.1', '--port', String(env.PORT ?? 0), ...args], {
      env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`MCP server did not start: ${stderr}`));
    }, 15000);
    proc.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-4000); });
    proc.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = stdout.match(/MCP_URL=(\S+)/);
      if (match) {
        clearTimeout(timer);
        const server = new McpServer(proc, match[1]);
        live.add(server);
        resolve(server);
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`MCP server exited with ${code}: ${stderr}`));
    });
  });
}
