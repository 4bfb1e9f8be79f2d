// Reading runs at scale: the time of a patient's last 20 runs and of a requester's last 20 runs with 1,000,000 runs
// in the table (test/lib/scale.mjs), as a superuser and as the patient's clinician under row-level security.
//   node bench/history.mjs [--runs N] [--repeat N]
// Each query runs --repeat times (default 200) on one connection with warm caches, over patients picked at random;
// prints the median and 95th percentile in ms (client round trip included), and the plan's index and pages.
import { fileURLToPath } from 'node:url';
import { startCluster } from '../test/lib/cluster.mjs';
import { fillRuns, explain, PATIENT_HISTORY, REQUESTER_RUNS, SCALE_ORG } from '../test/lib/scale.mjs';

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

async function time(cluster, role, sql, params, repeat) {
  const client = await cluster.connect(role);
  try {
    for (let i = 0; i < 20; i++) await client.query(sql, params(i)); // warm-up
    const ms = [];
    for (let i = 0; i < repeat; i++) {
      const t0 = process.hrtime.bigint();
      const r = await client.query(sql, params(i));
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (r.rows.length !== 20) throw new Error(`${r.rows.length} rows, not 20`);
    }
    ms.sort((a, b) => a - b);
    return { median: percentile(ms, 0.5), p95: percentile(ms, 0.95) };
  } finally {
    await client.end();
  }
}

/** Measures on a cluster of its own; row(measure, value, unit, note) reports each figure (bench/bench.mjs's row). */
export async function historyReads({ runs = 1_000_000, repeat = 200, row, settings = {} }) {
  const patientCount = Math.max(1, Math.round(runs / 100));
  const cluster = await startCluster({ settings: { ...settings, 'diagnosis.workers': 0, max_wal_size: '4GB' } });
  try {
    const { ms: insertMs } = await fillRuns(cluster, { runs, patients: patientCount });
    const patients = (await cluster.query('SELECT id FROM diagnosis.patients ORDER BY random()')).rows.map((r) => r.id);
    await cluster.query('CREATE ROLE pgd_scale_clin_0 LOGIN');
    await cluster.query(`INSERT INTO diagnosis.members VALUES ('pgd_scale_clin_0', $1, 'clinician')`, [SCALE_ORG]);
    // The clinician is assigned 100 patients (a ward), each read in turn.
    const ward = patients.slice(0, 100);
    await cluster.query(`INSERT INTO diagnosis.patient_assignments SELECT unnest($1::uuid[]), 'pgd_scale_clin_0'`, [ward]);
    const count = runs.toLocaleString('en');
    const cases = [
      [`a patient's last 20 runs at ${count} runs, superuser`, 'postgres', PATIENT_HISTORY, (i) => [patients[i % patients.length]]],
      [`a patient's last 20 runs at ${count} runs, clinician (RLS)`, 'pgd_scale_clin_0', PATIENT_HISTORY, (i) => [ward[i % ward.length]]],
      [`a requester's last 20 runs at ${count} runs, superuser`, 'postgres', REQUESTER_RUNS, (i) => [`pgd_scale_clin_${i % 50}`]],
    ];
    for (const [measure, role, sql, params] of cases) {
      const t = await time(cluster, role, sql, params, repeat);
      const e = await explain(cluster, sql, params(0), role);
      const scan = e.nodes.find((n) => n['Relation Name'] === 'runs');
      row(measure, t.median.toFixed(3), 'ms', `median of ${repeat} round trips, p95 ${t.p95.toFixed(3)} ms; ` +
        `${scan['Node Type']} using ${scan['Index Name'] ?? '-'}, ${e.pages} pages; runs inserted in ${(insertMs / 1000).toFixed(0)} s`);
    }
  } finally {
    cluster.destroy();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const option = (name, fallback) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : fallback;
  };
  await historyReads({ runs: option('runs', 1_000_000), repeat: option('repeat', 200), settings: { shared_buffers: '256MB' },
    row: (measure, value, unit, note) => console.log(`${measure.padEnd(58)} ${String(value).padStart(8)} ${unit}   (${note})`) });
}
