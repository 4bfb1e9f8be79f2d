// Fixture tools for the official conformance suite (`--conformance-fixtures`, used only by
// test/conformance/server.sh). Its server scenarios call tools by fixed names; these give those names to features
// the reference server really has (text results, isError results, progress, SSE polling, JSON Schema 2020-12
// tool schemas, task-backed calls through the task store, -32021 for an undeclared client capability), through the
// same SDK paths run_diagnosis uses. They are not offered otherwise.
//
// A fixture has `run(args, ctx, client)` (a synchronous call; `client` is the caller's declared capabilities) and,
// when it supports tasks (`taskSupport` 'optional' or 'required'), `task(args)`: the outcome its task reveals
// ({ result } or { error }) and after how long (latencyMs), as the task store runs run_diagnosis tasks.
import { ProtocolError } from '@modelcontextprotocol/server';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (value) => ({ content: [{ type: 'text', text: value }] });
const NO_ARGUMENTS = { type: 'object', properties: {} };
const INVALID_PARAMS = -32602;
const INTERNAL_ERROR = -32603;
export const MISSING_CAPABILITY = -32021;

/** A sleep the caller's cancellation ends early (a synchronous slow_compute must not outlive its request). */
const abortableSleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal?.aborted) return reject(new Error('cancelled'));
  const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
  const onAbort = () => { clearTimeout(timer); reject(new Error('cancelled')); };
  signal?.addEventListener('abort', onAbort, { once: true });
});

/** slow_compute's `seconds` (a non-negative number, at most an hour), or Invalid params. */
function seconds(args) {
  const value = args?.seconds;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 3600) {
    throw new ProtocolError(INVALID_PARAMS, 'slow_compute: seconds must be a number from 0 to 3600');
  }
  return value;
}

const computed = (args) => text(`Computed ${args.label ?? 'result'} after ${seconds(args)} s`);
const FAILING_JOB_RESULT = { ...text('failing_job failed: the job reported an error'), isError: true };
const PROTOCOL_ERROR = { code: INTERNAL_ERROR, message: 'protocol_error_job: internal failure' };

export const FIXTURES = {
  test_simple_text: {
    description: 'Returns a text result',
    inputSchema: NO_ARGUMENTS,
    run: async () => text('This is a simple text response for testing.'),
  },
  test_error_handling: {
    description: 'Returns a tool error (isError: true)',
    inputSchema: NO_ARGUMENTS,
    run: async () => ({ ...text('This tool intentionally returns an error for testing'), isError: true }),
  },
  test_tool_with_progress: {
    description: 'Reports progress 0, 50 and 100 of 100',
    inputSchema: NO_ARGUMENTS,
    run: async (args, ctx) => {
      const token = ctx.mcpReq._meta?.progressToken;
      for (const progress of [0, 50, 100]) {
        if (token !== undefined) {
          await ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken: token, progress, total: 100 } });
        }
        if (progress < 100) await sleep(50);
      }
      return text('Progress reported');
    },
  },
  test_reconnection: {
    description: 'Closes its SSE stream mid-call when the server polls (--sse-polling), then answers',
    inputSchema: NO_ARGUMENTS,
    run: async (args, ctx) => {
      ctx.http?.closeSSE?.();
      await sleep(100);
      return text('Reconnection test completed successfully');
    },
  },
  json_schema_2020_12_tool: {
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: { address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
    run: async () => text('ok'),
  },
  // The tasks extension's scenarios (tasks-*).
  greet: {
    description: 'Synchronous only: returns Hello, {name}!',
    inputSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
    run: async (args) => {
      if (typeof args?.name !== 'string') throw new ProtocolError(INVALID_PARAMS, 'greet: name must be a string');
      return text(`Hello, ${args.name}!`);
    },
  },
  slow_compute: {
    description: 'Supports tasks: computes for `seconds` seconds, then returns a text result',
    inputSchema: { type: 'object', properties: { seconds: { type: 'number', minimum: 0, maximum: 3600 },
      label: { type: 'string' } }, required: ['seconds'] },
    taskSupport: 'optional',
    run: async (args, ctx) => {
      await abortableSleep(seconds(args) * 1000, ctx.mcpReq.signal);
      return computed(args);
    },
    task: (args) => ({ result: computed(args), latencyMs: seconds(args) * 1000 }),
  },
  failing_job: {
    description: 'Requires tasks: after about a second its task completes with a tool error (isError: true)',
    inputSchema: NO_ARGUMENTS,
    taskSupport: 'required',
    task: () => ({ result: FAILING_JOB_RESULT, latencyMs: 1000 }),
  },
  protocol_error_job: {
    description: 'Requires tasks: its task fails with a JSON-RPC internal error',
    inputSchema: NO_ARGUMENTS,
    taskSupport: 'required',
    task: () => ({ error: PROTOCOL_ERROR, latencyMs: 200 }),
  },
  confirm_delete: {
    description: 'Would delete `filename` once the user confirms; this server asks the client for no input ' +
      '(no elicitation), so it cannot ask and answers with a tool error, deleting nothing',
    inputSchema: { type: 'object', properties: { filename: { type: 'string' } }, required: ['filename'] },
    run: async (args) => ({ ...text(`Not deleted: ${args?.filename ?? 'the file'} needs a confirmation this server ` +
      'cannot ask the client for (it sends no elicitation requests)'), isError: true }),
  },
  // server-stateless's diagnostic tools.
  test_missing_capability: {
    description: 'Needs the client\'s sampling capability: refused with -32021 when it is not declared',
    inputSchema: NO_ARGUMENTS,
    run: async (args, ctx, client) => {
      if (!client?.sampling) {
        throw new ProtocolError(MISSING_CAPABILITY, 'Missing required client capability: sampling',
          { requiredCapabilities: { sampling: {} } });
      }
      // The server never sends sampling requests; a declaring client only learns that it was accepted.
      return text('The client declared sampling');
    },
  },
  test_streaming_elicitation: {
    description: 'Streams progress notifications on the response stream, then its result; it never sends the ' +
      'client a request (the server asks for no input)',
    inputSchema: NO_ARGUMENTS,
    run: async (args, ctx) => {
      const token = ctx.mcpReq._meta?.progressToken;
      for (const progress of [1, 2]) {
        if (token !== undefined) {
          await ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken: token, progress, total: 2 } });
        }
      }
      return text('Streamed without asking the client anything');
    },
  },
  test_logging_tool: {
    description: 'Does its work without logging: the server has no logging capability (deprecated in 2026-07-28), ' +
      'so it sends no notifications/message, with or without a requested log level',
    inputSchema: NO_ARGUMENTS,
    run: async () => text('Done; nothing logged (the server has no logging capability)'),
  },
};

/** The fixtures' tools/list entries; a 2025-11-25 listing with tasks on names each one's taskSupport. */
export const fixtureTools = (era, tasks) => Object.entries(FIXTURES).map(([name, { description, inputSchema, taskSupport }]) => ({
  name, description, inputSchema,
  ...(tasks && era === 'legacy' ? { execution: { taskSupport: taskSupport ?? 'forbidden' } } : {}),
}));

/**
 * The client capabilities a fixture call cannot be served without ({ sampling: {} }, or the tasks extension for a
 * fixture that runs only as a task while tasks are on), or undefined when nothing it needs is missing from
 * `declared`. server.js checks this before dispatch so that, on the 2026-07-28 wire, the -32021 goes out with
 * HTTP 400 (an error thrown inside the handler would ride a 200 SSE stream).
 */
export function missingCapabilities(name, declared, { tasks, extension }) {
  const fixture = Object.hasOwn(FIXTURES, name) ? FIXTURES[name] : null;
  if (name === 'test_missing_capability' && !declared?.sampling) return { sampling: {} };
  if (tasks && fixture?.taskSupport === 'required' && !declared?.extensions?.[extension]) {
    return { extensions: { [extension]: {} } };
  }
  return undefined;
}

/** The -32021 a required-task fixture answers a caller that did not declare the tasks extension with. */
export function tasksRequired(name, extension) {
  return new ProtocolError(MISSING_CAPABILITY, `Tool ${name} runs only as a task: declare the ${extension} extension`,
    { requiredCapabilities: { extensions: { [extension]: {} } } });
}
