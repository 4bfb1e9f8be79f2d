/* pg_diagnosis 0.2.0 -> 0.3.0 (ALTER EXTENSION pg_diagnosis UPDATE). Each feature in its own section, marked with
   its issue; the result must equal a fresh 0.3.0 install (test/integration/upgrade.test.mjs compares the catalogs).
   Sections: least-privilege worker (#25), the run's lifecycle functions (#26), bounds (#27), MCP in production
   (#28), clinical data and the clinician's day (#29). */
\echo Use "ALTER EXTENSION pg_diagnosis UPDATE TO '0.3.0'" to load this file. \quit
