// The short chaos run of the test command: the full one is `npm run chaos -- --runs 10000 ...` (docs/RELIABILITY.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runChaos, formatReport, isConnectionLoss } from '../chaos/chaos.mjs';

/** Prints the report and checks what every chaos run must show. */
function assertNothingLostOrDuplicated(report) {
  console.log(formatReport(report).replace(/^/gm, '# '));
  assert.equal(report.lost, 0, 'lost runs');
  assert.equal(report.duplicated, 0, 'duplicated diagnoses or terminal events');
  assert.equal(report.not_terminal, 0, 'runs not terminal');
  assert.equal(report.illegal, 0, 'illegal audit chains');
  assert.equal(report.incomplete_artifact_sets, 0, 'completed runs without three artifacts');
  assert.equal(report.diagnoses_on_unfinished_runs, 0, 'diagnoses on runs that did not complete');
  assert.equal(report.calls_after_completion, 0, 'MCP calls for a run after it completed');
}

test('chaos: crashes, restarts and faults lose and duplicate nothing', { timeout: 600000 }, async () => {
  const report = await runChaos({ runs: 1500, workerKills: 3, immediateRestarts: 3, serverRestarts: 2, faultRate: 0.1 });
  assertNothingLostOrDuplicated(report);
  assert.equal(report.total, 1500, 'exactly one run per idempotency key');
  assert.ok(report.crashes.worker_kill === 3 && report.crashes.immediate_restart === 3, 'every crash happened');
});

test('chaos with task-backed calls: crashes lose and duplicate nothing; polls, not calls, after a crash', { timeout: 600000 }, async () => {
  const report = await runChaos({ runs: 600, workerKills: 2, immediateRestarts: 2, serverRestarts: 1, faultRate: 0,
    tasks: true, seed: 7 });
  assertNothingLostOrDuplicated(report);
  assert.ok(report.task_polls > 0, 'the calls were task-backed');
  // A crash after a task id is committed never calls again (test/integration/durable.test.mjs proves exactly one
  // call per run then); a crash between the server creating a task and the worker committing its id can (README,
  // "Call guarantee"). No run is ever called twice without such a crash.
  assert.equal(report.repeated_without_crash, 0, 'runs called again without a crash');
});

test('chaos enqueuers retry a crash, never a real error', () => {
  for (const error of [new Error('Connection terminated unexpectedly'), { code: 'ECONNREFUSED' }, { code: 'ECONNRESET' },
    { code: '08006' }, { code: '57P01' }, { code: '57P02' }, { code: '57P03' }]) {
    assert.ok(isConnectionLoss(error), JSON.stringify(error.code ?? error.message));
  }
  for (const code of ['22023', '42501', '23505', '40P01', 'XX000', '57014']) {
    assert.ok(!isConnectionLoss({ code }), code);
  }
});
