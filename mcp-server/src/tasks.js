// The task store behind run_diagnosis tasks: the tasks extension (io.modelcontextprotocol/tasks, SEP-2663) and the
// 2025-11-25 experimental tasks (SEP-1686). A task is written to disk (one JSON file, fsynced, renamed into place)
// before its CreateTaskResult is sent, so neither the client's crash nor this server's own restart loses it.
// The diagnosis is deterministic, so it is computed when the task is created and revealed once the configured
// latency has passed: the task is `working` until then, `completed` after, unless it was cancelled first.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class TaskStore {
  /** `dir` (optional) makes the store durable; without it tasks live as long as the process. */
  constructor(dir) {
    this.dir = dir || null;
    this.tasks = new Map();
    if (this.dir) this.load();
  }

  load() {
    fs.mkdirSync(this.dir, { recursive: true });
    for (const name of fs.readdirSync(this.dir)) {
      if (!name.endsWith('.json')) continue;
      try {
        const task = JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8'));
        this.tasks.set(task.taskId, task);
      } catch {
        // A file cut short by a crash mid-write never got renamed into place; anything else unreadable is skipped.
      }
    }
  }

  persist(task) {
    if (!this.dir) return;
    const file = path.join(this.dir, `${task.taskId}.json`);
    const temporary = `${file}.tmp`;
    const fd = fs.openSync(temporary, 'w');
    try {
      fs.writeSync(fd, JSON.stringify(task));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temporary, file);
  }

  forget(taskId) {
    this.tasks.delete(taskId);
    if (this.dir) fs.rmSync(path.join(this.dir, `${taskId}.json`), { force: true });
  }

  /**
   * Creates a durable task whose outcome becomes visible after `latencyMs`: `result` (a CallToolResult; the task
   * then completes) or `error` (a JSON-RPC error; the task then fails).
   */
  create({ runId, attempt, era, result, error, latencyMs, ttlMs, pollIntervalMs }) {
    const now = Date.now();
    const task = {
      taskId: randomUUID(), runId, attempt, era, status: 'working', createdMs: now, dueMs: now + latencyMs,
      updatedMs: now, ttlMs, pollIntervalMs, result, error,
    };
    this.persist(task);
    this.tasks.set(task.taskId, task);
    return this.refresh(task);
  }

  /** The task's state now: `working` turns `completed` (or `failed`) when its latency has passed. */
  refresh(task) {
    if (task.status === 'working' && Date.now() >= task.dueMs) {
      task.status = task.error ? 'failed' : 'completed';
      task.updatedMs = task.dueMs;
    }
    return task;
  }

  /** { task } for a live task, { expired: true } for one past its ttl (then dropped), {} for an unknown id. */
  lookup(taskId) {
    const task = this.tasks.get(taskId);
    if (!task) return {};
    if (task.ttlMs !== null && Date.now() > task.createdMs + task.ttlMs) {
      this.forget(taskId);
      return { expired: true };
    }
    return { task: this.refresh(task) };
  }

  /** Marks a non-terminal task cancelled (durably); returns the task, or null when it was already terminal. */
  cancel(task) {
    if (TERMINAL.has(task.status)) return null;
    task.status = 'cancelled';
    task.updatedMs = Date.now();
    this.persist(task);
    return task;
  }

  /** Resolves when the task is terminal (tasks/result blocks until then), or rejects when `signal` aborts. */
  async settle(task, signal) {
    while (!TERMINAL.has(this.refresh(task).status)) {
      if (signal?.aborted) throw new Error('request cancelled');
      await sleep(Math.max(5, Math.min(100, task.dueMs - Date.now())));
    }
    return task;
  }

  /** Drops every task past its ttl. */
  sweep() {
    for (const taskId of [...this.tasks.keys()]) this.lookup(taskId);
  }

  get size() {
    return this.tasks.size;
  }
}

export const isTerminal = (task) => TERMINAL.has(task.status);

/** The Task object on the wire: `ttlMs`/`pollIntervalMs` (the extension) or `ttl`/`pollInterval` (2025-11-25). */
export function taskView(task, era) {
  const common = {
    taskId: task.taskId, status: task.status, createdAt: new Date(task.createdMs).toISOString(),
    lastUpdatedAt: new Date(task.updatedMs).toISOString(),
  };
  if (task.status === 'cancelled') common.statusMessage = 'The task was cancelled by request.';
  if (task.status === 'failed') common.statusMessage = `Tool execution failed: ${task.error.message}`;
  if (era === 'modern') return { ...common, ttlMs: task.ttlMs, pollIntervalMs: task.pollIntervalMs };
  return { ...common, ttl: task.ttlMs, pollInterval: task.pollIntervalMs };
}
