// A 2025-11-25 server on the official SDK v1 (@modelcontextprotocol/sdk 1.32.2), sessionful, with the experimental
// tasks form: run_diagnosis is a task tool (taskSupport optional) whose task completes after 400 ms with a valid
// diagnosis. On 127.0.0.1, a free port printed as "PORT n". GET /counts: tools/call count per run_id and the
// sessions still open (0 once the client DELETEd its session).
import express from 'express';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { InMemoryTaskStore, InMemoryTaskMessageQueue } from '@modelcontextprotocol/sdk/experimental/tasks/stores/in-memory.js';
import { z } from 'zod';

const diagnosis = { risk_level: 'low', confidence_score: 0.7, summary: 'sdk1 task', primary_findings: ['a'],
  recommendations: [{ text: 'r' }] };
const taskStore = new InMemoryTaskStore();
const counts = {};

function newServer() {
  const server = new McpServer({ name: 'sdk1-tasks', version: '1.32.2' }, {
    capabilities: { tasks: { requests: { tools: { call: {} } }, cancel: {} } }, taskStore,
    taskMessageQueue: new InMemoryTaskMessageQueue() });
  server.experimental.tasks.registerToolTask('run_diagnosis', { description: 'test diagnosis as a task',
    inputSchema: { run_id: z.string() }, execution: { taskSupport: 'optional' } }, {
    async createTask({ run_id }, { taskStore, taskRequestedTtl }) {
      counts[run_id] = (counts[run_id] || 0) + 1;
      const task = await taskStore.createTask({ ttl: taskRequestedTtl ?? 60000, pollInterval: 100 });
      setTimeout(() => taskStore.storeTaskResult(task.taskId, 'completed', {
        content: [{ type: 'text', text: JSON.stringify(diagnosis) }], structuredContent: diagnosis }), 400);
      return { task };
    },
    async getTask(_args, { taskId, taskStore }) { return await taskStore.getTask(taskId); },
    async getTaskResult(_args, { taskId, taskStore }) { return await taskStore.getTaskResult(taskId); },
  });
  return server;
}

const sessions = new Map();
const app = express();
app.use(express.json());
app.get('/counts', (req, res) => res.json({ counts, sessions: sessions.size }));
app.post('/mcp', async (req, res) => {
  const sid = req.headers['mcp-session-id'];
  let transport = sid ? sessions.get(sid) : undefined;
  if (!transport) {
    if (sid || !isInitializeRequest(req.body))
      return res.status(sid ? 404 : 400).json({ jsonrpc: '2.0', id: null,
        error: { code: -32000, message: 'Bad Request: No valid session ID provided' } });
    transport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: id => sessions.set(id, transport) });
    transport.onclose = () => sessions.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});
app.delete('/mcp', async (req, res) => {
  const transport = sessions.get(req.headers['mcp-session-id']);
  if (!transport) return res.status(404).end();
  await transport.handleRequest(req, res);
});
const server = app.listen(0, '127.0.0.1', () => console.log('PORT', server.address().port));
