// PostgreSQL's client programs (pg_dump, pg_restore, psql) against a test cluster, and whole-table snapshots of
// the diagnosis schema for comparing two databases row for row (backup.test.mjs, upgrade.test.mjs).
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';

// The same installation as test/lib/cluster.mjs (PGDIAG_PG_BINDIR or pg_config's).
const BINDIR = process.env.PGDIAG_PG_BINDIR || execFileSync('pg_config', ['--bindir']).toString().trim();

/** Runs a client program against the cluster as postgres (args name the database); returns stdout. */
export function pgTool(cluster, program, args, { input } = {}) {
  const connection = ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres'];
  const result = spawnSync(join(BINDIR, program), [...connection, ...args], { input, encoding: 'utf8', maxBuffer: 1 << 30 });
  if (result.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  return result.stdout;
}

/** Every table that holds data, and how to order its rows. */
export const DATA_TABLES = ['organizations', 'members', 'patients', 'patient_assignments', 'observations',
  'result_schemas', 'runs', 'artifacts', 'audit_log', 'acknowledgements'];
export const SEQUENCES = ['observations_id_seq', 'audit_log_id_seq', 'acknowledgements_id_seq'];
// Added after the first release: a database from before it has none (dataColumns leaves them out).
const SINCE = { acknowledgements: '0.3.0' };

/**
 * Every row of every data table (in the record's text form, sorted) and the identity sequences' positions, read
 * with `client` (inside whatever snapshot it holds). columns: {table: [column, ...]} reads only those columns
 * (the upgrade test compares the columns a release had before and after its update).
 */
export async function snapshotData(client, columns = {}) {
  const tables = {};
  // Read with another database's columns: only the tables it had.
  const only = Object.keys(columns).length > 0;
  for (const t of DATA_TABLES) {
    if (only && !columns[t]) continue;
    const row = columns[t] ? `ROW(${columns[t].map((c) => `t."${c}"`).join(', ')})::text` : 't::text';
    const r = await client.query(`SELECT ${row} AS row FROM diagnosis.${t} t ORDER BY 1`);
    tables[t] = r.rows.map((x) => x.row);
  }
  for (const s of SEQUENCES) {
    if (only && !columns[s.replace(/_id_seq$/, '')]) continue;
    const r = await client.query(`SELECT last_value, is_called FROM diagnosis.${s}`);
    tables[s] = [`${r.rows[0].last_value} ${r.rows[0].is_called}`];
  }
  return tables;
}

/** The columns each data table has now, in order: {table: [column, ...]}. */
export async function dataColumns(client) {
  const columns = {};
  for (const t of DATA_TABLES) {
    const r = await client.query(`SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0
      AND NOT attisdropped ORDER BY attnum`, [`diagnosis.${t}`]);
    if (r.rows.length > 0 || !SINCE[t]) columns[t] = r.rows.map((x) => x.attname);
  }
  return columns;
}

/**
 * pg_dump's output as a sorted list of its entries (each from its "-- Name: ..." header to the next), with what
 * differs between two equal databases removed: comments, \restrict keys and binary-upgrade OIDs.
 */
export function dumpEntries(text) {
  const entries = [];
  let current = null;
  for (const line of text.split('\n')) {
    if (/^-- (Data for )?Name: /.test(line)) {
      current = [line];
      entries.push(current);
    } else if (current && line !== '' && !/^--/.test(line) && !/^\\(un)?restrict /.test(line)
               && !/binary_upgrade_set_next_/.test(line)) {
      current.push(line
        .replace(/(binary_upgrade_create_empty_extension\([^{]*)'\{[0-9,]*\}'/, "$1'{<oids>}'")
        .replace(/^SET relfrozenxid = '\d+', relminmxid = '\d+'$/, 'SET relfrozenxid = <xid>, relminmxid = <mxid>')
        .replace(/^WHERE oid = '\d+';$/, 'WHERE oid = <oid>;'));
    }
  }
  // Sequence positions are data (a binary-upgrade dump carries them); backup.test.mjs compares those.
  return entries.filter((e) => !/; Type: SEQUENCE SET;/.test(e[0])).map((e) => e.join('\n')).sort();
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
