// Preloaded with `node --import` to run @modelcontextprotocol/conformance (0.2.0-alpha.12, which declares Node >= 22)
// on Node 20. Its bundle imports
// `globSync` from 'fs' (added in Node 22) at the top of the file, so on Node 20 the whole program fails to link,
// although only a command the runner never uses (a scenario-file glob) calls it. This resolve hook hands that one
// package, and nothing else, an 'fs' that also exports a `globSync` which throws if it is ever called.
import { register } from 'node:module';

const SHIM = `import fs from 'node:fs';
export * from 'node:fs';
export default fs;
export function globSync() { throw new Error('globSync needs Node >= 22'); }`;

const HOOKS = `
const SHIM_URL = 'data:text/javascript,' + encodeURIComponent(${JSON.stringify(SHIM)});
export async function resolve(specifier, context, next) {
  const fromConformance = context.parentURL?.includes('/@modelcontextprotocol/conformance/');
  if (fromConformance && (specifier === 'fs' || specifier === 'node:fs')) return { url: SHIM_URL, shortCircuit: true };
  return next(specifier, context);
}`;

register('data:text/javascript,' + encodeURIComponent(HOOKS));
