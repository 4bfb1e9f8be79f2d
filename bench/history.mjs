// Reading runs at scale: the time of a patient's last 20 runs and of a requester's last 20 runs with 1,000,000 runs
// in the table (test/lib/scale.mjs), as a superuser and as the patient's clinician under row-level security.
//   node bench/history.mjs [--runs N] [--repeat N]
// Each query runs --repeat times (default 200) on one connection with warm caches, over patients picked at random;
// prints the median and 95th percentile in ms (client round trip included), and the plan's index and pages.
import { startCluster } from '../test/lib/cluster.mjs';
import { fillRuns, explain, PATIENT_HISTORY, REQUESTER_RUNS, SCALE_ORG } from '../test/lib/scale.mjs';

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const RUNS = option('runs', 1_000_000);
const REPEAT = option('repeat', 200);
const PATIENTS = Math.max(1, Math.round(RUNS / 100));

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

async function time(cluster, role, sql, params) {
  const client = await cluster.connect(role);
  try {
    for (let i = 0; i < 20; i++) await client.query(sql, params(i)); // warm-up
    const ms = [];
    for (let i = 0; i < REPEAT; i++) {
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

const cluster = await startCluster({ settings: { 'diagnosis.workers': 0, shared_buffers: '256MB', max_wal_size: '4GB' } });
try {
  const insertMs = await fillRuns(cluster, { runs: RUNS, patients: PATIENTS });
  const patients = (await cluster.query('SELECT id FROM diagnosis.patients ORDER BY random()')).rows.map((r) => r.id);
  await cluster.query('CREATE ROLE pgd_scale_clin_0 LOGIN');
  await cluster.query(`INSERT INTO diagnosis.members VALUES ('pgd_scale_clin_0', $1, 'clinician')`, [SCALE_ORG]);
  // The clinician is assigned 100 patients (a ward), each read in turn.
  const ward = patients.slice(0, 100);
  await cluster.query(`INSERT INTO diagnosis.patient_assignments SELECT unnest($1::uuid[]), 'pgd_scale_clin_0'`, [ward]);
  console.log(`${RUNS} runs over ${PATIENTS} patients, inserted in ${insertMs} ms; ${REPEAT} queries each\n`);
  const rows = [
    ["a patient's last 20 runs", 'superuser', 'postgres', PATIENT_HISTORY, (i) => [patients[i % patients.length]]],
    ["a patient's last 20 runs", 'clinician (RLS)', 'pgd_scale_clin_0', PATIENT_HISTORY, (i) => [ward[i % ward.length]]],
    ["a requester's last 20 runs", 'superuser', 'postgres', REQUESTER_RUNS, (i) => [`pgd_scale_clin_${i % 50}`]],
  ];
  console.log('query                       | as              | median ms | p95 ms | plan');
  for (const [what, who, role, sql, params] of rows) {
    const t = await time(cluster, role, sql, params);
    const e = await explain(cluster, sql, params(0), role);
    const scan = e.nodes.find((n) => n['Relation Name'] === 'runs');
    console.log(`${what.padEnd(27)} | ${who.padEnd(15)} | ${t.median.toFixed(3).padStart(9)} | ${t.p95.toFixed(3).padStart(6)} | ` +
      `${scan['Node Type']} using ${scan['Index Name'] ?? '-'}, ${e.pages} pages`);
  }
} finally {
  cluster.destroy();
}
