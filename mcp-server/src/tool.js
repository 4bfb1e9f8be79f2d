// The MCP surface of the reference server, one official-SDK `Server` per serving unit (a request, or a legacy
// session): the tool `run_diagnosis` (NEWS2), and with tasks on, the task methods of the era it serves.
// Built on the low-level `Server` rather than `McpServer` because a task-backed tools/call answers with a
// CreateTaskResult, which McpServer's output-schema check would turn into a tool error.
import { createHash } from 'node:crypto';
import { Server, ProtocolError, SUPPORTED_PROTOCOL_VERSIONS, RELATED_TASK_META_KEY,
  CLIENT_CAPABILITIES_META_KEY } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { diagnose } from './news2.js';
import { isTerminal, taskView } from './tasks.js';
import { FIXTURES, fixtureTools, tasksRequired } from './fixtures.js';
import { faultOutcome } from './faults.js';

export const TASKS_EXTENSION = 'io.modelcontextprotocol/tasks';
export const MODERN_VERSION = '2026-07-28';
/** The handshake revisions served (2024-era ones are the SDK's, kept for old clients). */
export const LEGACY_VERSIONS = SUPPORTED_PROTOCOL_VERSIONS;

const RESULT_SCHEMA = z.object({
  risk_level: z.enum(['low', 'medium', 'high', 'critical']),
  confidence_score: z.number().min(0).max(1),
  summary: z.string().max(4000),
  primary_findings: z.array(z.string()).max(50),
  recommendations: z.array(z.object({ text: z.string(), priority: z.enum(['routine', 'soon', 'urgent']).optional() })).max(50),
  differential: z.array(z.object({ condition: z.string(), probability: z.number().min(0).max(1).optional() })).optional(),
  // The scores behind the result (news2.js), an extra property that schema v1 allows: SDK clients check
  // structuredContent against this schema, which refuses properties it does not name.
  news2: z.record(z.string(), z.any()).optional(),
});

const INPUT_SCHEMA = z.object({
  run_id: z.string(), patient_id: z.string(), attempt: z.number().int(), schema_version: z.string(),
  inputs: z.record(z.string(), z.any()), context_pack: z.record(z.string(), z.any()),
});

const TASK_ID_PARAMS = z.object({ taskId: z.string() }).passthrough();
const STEPS = ['reading observations', 'scoring respiration rate and SpO2', 'scoring blood pressure and pulse',
  'scoring consciousness and temperature', 'building recommendations'];
const INVALID_PARAMS = -32602;
const MISSING_CAPABILITY = -32021;

/** Whether a 2026-era request's envelope declares the tasks extension among the client's capabilities. */
const declaresTasks = (ctx) =>
  Boolean(ctx.mcpReq.envelope?.[CLIENT_CAPABILITIES_META_KEY]?.extensions?.[TASKS_EXTENSION]);

/** The server's own id for a call: deterministic, so a retried call gets the same id. */
export function callId(runId, attempt) {
  return 'mcp-' + createHash('sha256').update(`${runId}:${attempt}`).digest('hex').slice(0, 16);
}

function toolDefinition(era, tasks) {
  const tool = {
    name: 'run_diagnosis',
    title: 'NEWS2 diagnosis',
    description: 'Computes the NEWS2 early-warning score from the latest vital signs in a pg_diagnosis context pack.',
    inputSchema: z.toJSONSchema(INPUT_SCHEMA, { io: 'input' }),
    outputSchema: z.toJSONSchema(RESULT_SCHEMA, { io: 'output' }),
  };
  // 2025-11-25 tool-level negotiation; the 2026 era has no such field (the server decides per request).
  if (tasks && era === 'legacy') tool.execution = { taskSupport: 'optional' };
  return tool;
}

/** The CallToolResult of a diagnosis (what a task's result and a synchronous call both carry). */
function diagnosisResult(args) {
  const result = diagnose(args.context_pack);
  return {
    content: [{ type: 'text', text: JSON.stringify(result) }],
    structuredContent: result,
    _meta: { run_id: callId(args.run_id, args.attempt) },
  };
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal.aborted) return reject(new Error('cancelled'));
  const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
  const onAbort = () => { clearTimeout(timer); reject(new Error('cancelled')); };
  signal.addEventListener('abort', onAbort, { once: true });
});

/**
 * Builds one SDK server for `era` ('modern' or 'legacy') from the live settings, the task store and `record`,
 * the /stats hooks (call, taskCreated, poll, result, cancelled, streamClosed) and `takeTaskFault`.
 */
export function buildServer(era, { settings, store, record }) {
  const tasks = settings.tasks;
  const capabilities = { tools: {} };
  // Declared with the empty listings they stand for (registerEmptyListings).
  if (settings.conformance_fixtures) Object.assign(capabilities, { prompts: {}, resources: {} });
  if (tasks && era === 'modern') capabilities.extensions = { [TASKS_EXTENSION]: {} };
  if (tasks && era === 'legacy') capabilities.tasks = { cancel: {}, requests: { tools: { call: {} } } };
  const supportedProtocolVersions = settings.era === 'legacy' ? LEGACY_VERSIONS : [MODERN_VERSION, ...LEGACY_VERSIONS];
  const server = new Server({ name: 'pg-diagnosis-reference', version: '0.2.0' }, { capabilities, supportedProtocolVersions });

  const fixtures = settings.conformance_fixtures ? FIXTURES : {};
  server.setRequestHandler('tools/list', () => ({
    tools: [toolDefinition(era, tasks), ...(settings.conformance_fixtures ? fixtureTools(era, tasks) : [])] }));
  if (settings.conformance_fixtures) registerEmptyListings(server);

  server.setRequestHandler('tools/call', async (request, ctx) => {
    if (Object.hasOwn(fixtures, request.params.name)) return callFixture(request, ctx);
    if (request.params.name !== 'run_diagnosis') {
      throw new ProtocolError(INVALID_PARAMS, `Tool ${request.params.name} not found`);
    }
    const headers = ctx.http?.req?.headers;
    const meta = ctx.mcpReq._meta ?? {};
    record.call(request.params.arguments, era, { header: headers?.get('traceparent'), meta: meta.traceparent,
      tracestate: headers?.get('tracestate') ?? meta.tracestate });
    const parsed = INPUT_SCHEMA.safeParse(request.params.arguments ?? {});
    if (!parsed.success) {
      return { content: [{ type: 'text', text: `Invalid arguments for tool run_diagnosis: ${parsed.error.message}` }], isError: true };
    }
    const args = parsed.data;
    const wantsTask = era === 'modern' ? declaresTasks(ctx) : request.params.task !== undefined;
    if (tasks && wantsTask) return createTask(args, request.params.task);
    return runNow(args, ctx);
  });

  /**
   * A fixture's call: a task when it supports tasks and the caller asked as its era does (modern: declared the
   * extension; legacy: sent `task`), -32021 when it requires a task the caller cannot take, else synchronous.
   */
  function callFixture(request, ctx) {
    const { name } = request.params;
    const fixture = fixtures[name];
    const args = request.params.arguments ?? {};
    const wantsTask = era === 'modern' ? declaresTasks(ctx) : request.params.task !== undefined;
    if (tasks && fixture.taskSupport && wantsTask) {
      const { latencyMs, ...outcome } = fixture.task(args);
      const task = store.create({ runId: `fixture:${name}`, attempt: null, era, ...outcome, latencyMs,
        ttlMs: settings.task_ttl_ms, pollIntervalMs: settings.task_poll_ms });
      record.taskCreated(task);
      return era === 'modern' ? { resultType: 'task', ...taskView(task, era) } : { task: taskView(task, era), content: [] };
    }
    if (fixture.taskSupport === 'required') throw tasksRequired(name, TASKS_EXTENSION);
    const client = era === 'modern' ? ctx.mcpReq.envelope?.[CLIENT_CAPABILITIES_META_KEY] : server.getClientCapabilities();
    return fixture.run(args, ctx, client);
  }

  /** Records a durable task and answers with its CreateTaskResult; a result-level fault due shows at its end. */
  function createTask(args, requested) {
    // A requested ttl (2025-11-25) is honoured up to the server's maximum; none, null (unlimited) or junk: the maximum.
    const asked = Number(requested?.ttl);
    const ttl = requested?.ttl != null && asked > 0 ? Math.min(asked, settings.task_ttl_ms) : settings.task_ttl_ms;
    const fault = record.takeTaskFault(args.run_id, args.attempt);
    const outcome = fault ? faultOutcome(fault) : { result: diagnosisResult(args) };
    const task = store.create({
      runId: args.run_id, attempt: args.attempt, era, ...outcome, latencyMs: settings.latency_ms,
      ttlMs: ttl, pollIntervalMs: settings.task_poll_ms,
    });
    record.taskCreated(task);
    if (era === 'modern') return { resultType: 'task', ...taskView(task, era) };
    // The SDK checks every 2025-era tools/call result as a CallToolResult, and refuses a `task` body without
    // `content`; an empty content list satisfies it and a 2025-11-25 client reads the CreateTaskResult's `task`.
    return { task: taskView(task, era), content: [] };
  }

  /** The synchronous call: progress spread over the latency; stops when the caller cancels. */
  async function runNow(args, ctx) {
    const token = ctx.mcpReq._meta?.progressToken;
    const signal = ctx.mcpReq.signal;
    const pause = settings.latency_ms > 0 ? settings.latency_ms / STEPS.length : 0;
    try {
      for (let i = 0; i < STEPS.length; i++) {
        if (token !== undefined) {
          await ctx.mcpReq.notify({ method: 'notifications/progress',
            params: { progressToken: token, progress: i, total: STEPS.length, message: STEPS[i] } });
        }
        // SSE polling: end the response stream after the priming event and the first step; the rest of the
        // stream (progress and the result) waits in the event store for the client's GET with Last-Event-ID.
        // The SDK offers closeSSE only where it sent a priming event (event store on, client on 2025-11-25+),
        // so an older client, which could not resume, keeps its stream.
        if (i === 0 && settings.sse_polling && ctx.http?.closeSSE) {
          ctx.http.closeSSE();
          record.streamClosed(args.run_id);
        }
        if (pause) await sleep(pause, signal);
      }
    } catch (error) {
      if (signal.aborted) record.cancelled(args.run_id, era === 'modern' ? 'stream_closed' : 'notifications/cancelled');
      throw error;
    }
    return diagnosisResult(args);
  }

  if (tasks) registerTaskMethods(server, era, { store, record });
  return server;
}

/**
 * Empty prompt and resource listings (--conformance-fixtures only): the suite's `caching` scenario checks the
 * caching hints (ttlMs, cacheScope) of prompts/list, resources/list and resources/templates/list too. The server
 * has no prompts or resources, so the listings are empty; prompts/get and resources/read stay unknown methods.
 */
function registerEmptyListings(server) {
  server.setRequestHandler('prompts/list', () => ({ prompts: [] }));
  server.setRequestHandler('resources/list', () => ({ resources: [] }));
  server.setRequestHandler('resources/templates/list', () => ({ resourceTemplates: [] }));
}

/** tasks/get and tasks/cancel (both eras), and tasks/result (2025-11-25 only: the extension inlines the result). */
function registerTaskMethods(server, era, { store, record }) {
  const find = (taskId, ctx) => {
    if (era === 'modern' && !declaresTasks(ctx)) {
      throw new ProtocolError(MISSING_CAPABILITY, 'Missing required client capability',
        { requiredCapabilities: { extensions: { [TASKS_EXTENSION]: {} } } });
    }
    const { task, expired } = store.lookup(taskId);
    if (expired) throw new ProtocolError(INVALID_PARAMS, 'Failed to retrieve task: Task has expired');
    if (!task) throw new ProtocolError(INVALID_PARAMS, 'Failed to retrieve task: Task not found');
    return task;
  };

  server.setRequestHandler('tasks/get', { params: TASK_ID_PARAMS }, (params, ctx) => {
    const task = find(params.taskId, ctx);
    record.poll(task);
    const view = taskView(task, era);
    if (era === 'modern' && task.status === 'completed') view.result = task.result;
    if (era === 'modern' && task.status === 'failed') view.error = task.error;
    return view;
  });

  server.setRequestHandler('tasks/cancel', { params: TASK_ID_PARAMS }, (params, ctx) => {
    const task = find(params.taskId, ctx);
    const cancelled = store.cancel(task);
    if (cancelled) record.cancelled(task.runId, 'tasks/cancel');
    if (era === 'modern') return {}; // an acknowledgement, whatever the task's state (SEP-2663)
    if (!cancelled) throw new ProtocolError(INVALID_PARAMS, `Cannot cancel task ${task.taskId}: it is already ${task.status}`);
    return taskView(task, era);
  });

  if (era === 'modern') {
    // The extension's tasks/update delivers inputResponses to a task waiting for input. These tasks never wait for
    // input, so there is nothing to deliver: the update of a live task is acknowledged, as the extension asks; an
    // undeclared extension is MissingRequiredClientCapability (-32021, in find), an unknown task Invalid params.
    server.setRequestHandler('tasks/update', { params: TASK_ID_PARAMS }, (params, ctx) => {
      find(params.taskId, ctx);
      return {};
    });
  }

  if (era === 'legacy') {
    server.setRequestHandler('tasks/result', { params: TASK_ID_PARAMS }, async (params, ctx) => {
      const task = await store.settle(find(params.taskId, ctx), ctx.mcpReq.signal);
      record.result(task);
      // What the call itself would have returned: its JSON-RPC error for a failed task.
      if (task.status === 'failed') throw new ProtocolError(task.error.code, task.error.message);
      if (task.status !== 'completed' || !isTerminal(task)) {
        throw new ProtocolError(-32603, `Task ${task.taskId} was ${task.status}`);
      }
      return { ...task.result, _meta: { ...task.result._meta, [RELATED_TASK_META_KEY]: { taskId: task.taskId } } };
    });
  }
}
