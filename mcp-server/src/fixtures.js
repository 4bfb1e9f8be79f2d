// Fixture tools for the official conformance suite (`--conformance-fixtures`, used only by
// test/conformance/server.sh). Its server scenarios call tools by fixed names; these give those names to features
// the reference server really has (text results, isError results, progress, SSE polling, JSON Schema 2020-12
// tool schemas), through the same SDK paths run_diagnosis uses. They are not offered otherwise.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (value) => ({ content: [{ type: 'text', text: value }] });
const NO_ARGUMENTS = { type: 'object', properties: {} };

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
    run: async (ctx) => {
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
    run: async (ctx) => {
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
};

export const fixtureTools = () => Object.entries(FIXTURES).map(([name, { description, inputSchema }]) => ({ name, description, inputSchema }));
