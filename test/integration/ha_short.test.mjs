// The short HA run of the test command: one failover of a pg_auto_failover formation with a few hundred runs. The
// full one (three consecutive failovers, thousands of runs, a minute of standby CPU) is scripts/ha.sh
// (docs/RELIABILITY.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runHa, formatReport, failures, isLostConnection } from '../ha/ha.mjs';

test('ha: losing the primary node loses and duplicates nothing; the standby worker stays idle', { timeout: 600000 },
  async () => {
    const report = await runHa({ failovers: 1, minRuns: 300, rate: 30, cpuSeconds: 10 });
    console.log(formatReport(report).replace(/^/gm, '# '));
    assert.deepEqual(failures(report, 1), []);
    assert.equal(report.lost, 0, 'lost runs');
    assert.equal(report.duplicated, 0, 'duplicated diagnoses or terminal events');
    assert.ok(report.failovers[0].recovered > 0, 'runs in flight at the kill were recovered on the new primary');
    assert.ok(report.calls_repeated <= report.recovered, 'only recovered runs are called again');
  });

test('ha enqueuers retry only a lost connection (psql exit 2)', () => {
  assert.ok(isLostConnection({ code: 2 }));
  for (const code of [0, 1, 3, -1]) assert.ok(!isLostConnection({ code }), String(code));
});
