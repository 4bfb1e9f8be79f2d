// PostgreSQL's client programs (pg_dump, pg_restore, psql) against a test cluster, and whole-table snapshots of
// the diagnosis schema for comparing two databases row for row (backup.test.mjs, upgrade.test.mjs).
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';

// The same installation as test/lib/cluster.mjs (PGDIAG_PG_BINDIR or pg_config's).
const BINDIR = process.env.PGDIAG_PG_BINDIR || execFileSync('pg_config', ['--bindir']).toString().trim();

/** Runs a client program against the cluster as postgres (args name the database); returns stdout. */
export function pgTool(cluster, program, args, { input } = {}) {
  const result = spawnSync(join(BINDIR, program), ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', ...args],
    { input, encoding: 'utf8', maxBuffer: 1 << 30 });
  if (result.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  return result.stdout;
}

/** Every table that holds data, and how to order its rows. */
export const DATA_TABLES = ['organizations', 'members', 'patients', 'patient_assignments', 'observations',
  'result_schemas', 'runs', 'artifacts', 'audit_log'];
export const SEQUENCES = ['observations_id_seq', 'audit_log_id_seq'];

/**
 * Every row of every data table (in the record's text form, sorted) and the identity sequences' positions, read
 * with `client` (inside whatever snapshot it holds).
 */
export async function snapshotData(client) {
  const tables = {};
  for (const t of DATA_TABLES) {
    const r = await client.query(`SELECT t::text AS row FROM diagnosis.${t} t ORDER BY 1`);
    tables[t] = r.rows.map((x) => x.row);
  }
  for (const s of SEQUENCES) {
    const r = await client.query(`SELECT last_value, is_called FROM diagnosis.${s}`);
    tables[s] = [`${r.rows[0].last_value} ${r.rows[0].is_called}`];
  }
  return tables;
}

/** Lines "table: missing <row>" / "table: extra <row>", for an assertion message; empty when equal. */
export function diffSnapshots(expected, actual, { limit = 20 } = {}) {
  const lines = [];
  for (const t of Object.keys(expected)) {
    const want = new Set(expected[t]);
    const got = new Set(actual[t] ?? []);
    for (const row of want) if (!got.has(row)) lines.push(`${t}: missing ${row}`);
    for (const row of got) if (!want.has(row)) lines.push(`${t}: extra   ${row}`);
  }
  return lines.length > limit ? [...lines.slice(0, limit), `... and ${lines.length - limit} more`] : lines;
}
