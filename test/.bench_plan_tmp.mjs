import { readFileSync } from 'node:fs';
import { startCluster } from './lib/cluster.mjs';
const c = await startCluster({ settings: { 'diagnosis.fhir_source': 'fhir.observation' } });
try {
  const client = await c.connect();
  await client.query(`SELECT set_config('demo.patients', '50', false), set_config('demo.seed', '11', false)`);
  await client.query(readFileSync('../demo/cohort.sql', 'utf8'));
  await client.query(readFileSync('../demo/fhir_cohort.sql', 'utf8'));
  await client.query(readFileSync('/tmp/fhir-work/new_funcs.sql', 'utf8'));
  const id = (await client.query('SELECT id FROM diagnosis.patients LIMIT 1')).rows[0].id;
  await client.query(`SELECT diagnosis.fhir_context_pack($1)`, [id]);
  client.on('notice', (n) => { if (/_fhir_observations|WITH vital/.test(n.message) || n.message.includes('vital')) console.log(n.message); });
  await client.query(`LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;
    SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice; SET auto_explain.log_timing = on`);
  await client.query(`SELECT diagnosis.fhir_context_pack($1)`, [id]);
  await client.end();
} finally { c.destroy(); }
