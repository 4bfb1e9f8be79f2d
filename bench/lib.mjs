// What the benchmark scripts share: the minimal MCP endpoint as a child process, and the patients every run is for.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));

/** Starts bench/fast-mcp.mjs on a free port; resolves to { url, proc, stop() }. */
export function startFastEndpoint() {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [join(here, 'fast-mcp.mjs')], { stdio: ['ignore', 'pipe', 'inherit'] });
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
