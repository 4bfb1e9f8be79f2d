// The reference server's settings: each flag also has an environment variable (README.md "Flags").
export const FAULT_KINDS = [
  'http_500', 'http_502', 'http_503', 'http_429', 'http_400', 'http_401', 'http_404_session', 'session_expiry',
  'hang', 'drop', 'is_error', 'invalid_result', 'jsonrpc_error', 'malformed_json', 'wrong_id', 'truncated_sse',
  'huge_line', 'non_utf8', 'slowloris',
];

export const ERAS = ['dual', 'legacy', 'modern'];

// name -> [environment variable, default]; a default of false marks a switch (a flag that takes no value).
const OPTIONS = {
  host: ['MCP_HOST', '127.0.0.1'], port: ['MCP_PORT', '0'], path: ['MCP_PATH', '/mcp'], mode: ['MCP_MODE', 'stateful'],
  reply: ['MCP_REPLY', 'sse'], 'latency-ms': ['MCP_LATENCY_MS', '0'],
  'session-expiry-calls': ['MCP_SESSION_EXPIRY_CALLS', '0'], 'session-expiry-seconds': ['MCP_SESSION_EXPIRY_SECONDS', '0'],
  'fault-rate': ['MCP_FAULT_RATE', '0'], 'fault-kinds': ['MCP_FAULT_KINDS', ''], 'retry-after': ['MCP_RETRY_AFTER', ''],
  'hang-ms': ['MCP_HANG_MS', '0'], 'auth-token': ['MCP_AUTH_TOKEN', ''],
  era: ['MCP_ERA', 'dual'],
  tasks: ['MCP_TASKS', false], 'task-dir': ['MCP_TASK_DIR', ''], 'task-ttl-ms': ['MCP_TASK_TTL_MS', '600000'],
  'task-poll-ms': ['MCP_TASK_POLL_MS', '250'],
  'sse-polling': ['MCP_SSE_POLLING', false], 'sse-retry-ms': ['MCP_SSE_RETRY_MS', '200'],
  'allowed-hosts': ['MCP_ALLOWED_HOSTS', ''], 'allowed-origins': ['MCP_ALLOWED_ORIGINS', ''],
  'conformance-fixtures': ['MCP_CONFORMANCE_FIXTURES', false],
};

const isSwitch = (name) => OPTIONS[name][1] === false;
const truthy = (value) => ['1', 'true', 'yes', 'on'].includes(String(value).toLowerCase());
const list = (text) => String(text).split(',').map((item) => item.trim()).filter(Boolean);

/** Settings from flags, then environment, then defaults. A switch is `--tasks` alone or `--tasks=0|1`. */
export function parseSettings(argv = [], env = process.env) {
  const raw = {};
  for (const [name, [variable, fallback]] of Object.entries(OPTIONS)) {
    raw[name] = env[variable] ?? fallback;
    if (isSwitch(name)) raw[name] = truthy(raw[name]);
  }
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const name = flag.replace(/^--/, '');
    if (!(name in OPTIONS)) throw new Error(`unknown option ${argv[i]}`);
    if (isSwitch(name)) raw[name] = inline === undefined ? true : truthy(inline);
    else raw[name] = inline ?? argv[++i];
  }
  if (!['stateless', 'stateful'].includes(raw.mode)) throw new Error('--mode must be stateless or stateful');
  if (!['sse', 'json'].includes(raw.reply)) throw new Error('--reply must be sse or json');
  if (!ERAS.includes(raw.era)) throw new Error(`--era must be one of ${ERAS.join(', ')}`);
  if (raw['sse-polling'] && (raw.mode !== 'stateful' || raw.reply !== 'sse')) {
    // Resumption is a GET on the session with Last-Event-ID: it needs sessions and SSE replies.
    throw new Error('--sse-polling needs --mode stateful and --reply sse');
  }
  const kinds = raw['fault-kinds'] ? list(raw['fault-kinds'])
    : FAULT_KINDS.filter((k) => k !== 'hang' && k !== 'slowloris');
  for (const k of kinds) if (!FAULT_KINDS.includes(k)) throw new Error(`unknown fault kind ${k}`);
  return {
    host: raw.host, port: Number(raw.port), path: raw.path, mode: raw.mode, reply: raw.reply,
    latency_ms: Number(raw['latency-ms']), session_expiry_calls: Number(raw['session-expiry-calls']),
    session_expiry_seconds: Number(raw['session-expiry-seconds']), fault_rate: Number(raw['fault-rate']),
    fault_kinds: kinds, retry_after: raw['retry-after'] === '' ? null : Number(raw['retry-after']),
    hang_ms: Number(raw['hang-ms']), auth_token: raw['auth-token'],
    era: raw.era, tasks: raw.tasks, task_dir: raw['task-dir'], task_ttl_ms: Number(raw['task-ttl-ms']),
    task_poll_ms: Number(raw['task-poll-ms']), sse_polling: raw['sse-polling'], sse_retry_ms: Number(raw['sse-retry-ms']),
    allowed_hosts: list(raw['allowed-hosts']), allowed_origins: list(raw['allowed-origins']),
    conformance_fixtures: raw['conformance-fixtures'],
  };
}

/** The settings POST /config may change at run time. */
export const RUNTIME_SETTINGS = ['fault_rate', 'fault_kinds', 'latency_ms', 'reply', 'retry_after', 'session_expiry_calls',
  'hang_ms', 'task_poll_ms', 'task_ttl_ms'];
