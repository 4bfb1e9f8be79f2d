import { readFileSync } from 'node:fs';
import { startCluster } from './lib/cluster.mjs';
const c = await startCluster({ settings: { 'diagnosis.fhir_source': 'fhir.observation' } });
try {
  const client = await c.connect();
  await client.query(`SELECT set_config('demo.patients', '2000', false), set_config('demo.seed', '11', false)`);
  await client.query(readFileSync('../demo/cohort.sql', 'utf8'));
  await client.query(readFileSync('../demo/fhir_cohort.sql', 'utf8'));
  await client.query(readFileSync('/tmp/fhir-work/old_funcs.sql', 'utf8')); await client.query(readFileSync('/tmp/fhir-work/new_funcs.sql', 'utf8'));
  for (let round = 0; round < 4; round++) {
    for (const f of ['public.old_fhir_context_pack', 'diagnosis.fhir_context_pack']) {
      const t = Date.now();
      await client.query(`SELECT count(${f}(id)) FROM diagnosis.patients`);
      console.log(f, Date.now() - t, 'ms');
    }
  }
  const same = await client.query(`SELECT count(*) FILTER (WHERE o -> 'observations' = n -> 'observations') AS same, count(*) AS n
    FROM (SELECT public.old_fhir_context_pack(id) o, diagnosis.fhir_context_pack(id) n FROM diagnosis.patients) x`);
  console.log('packs with identical observations', same.rows[0]);
  await client.end();
} finally { c.destroy(); }
