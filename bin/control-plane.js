#!/usr/bin/env node
// Runs the compiled JavaScript in dist/ with plain Node. The package ships dist/; in a clone, `npm ci` (prepare),
// `npm start` and `npm test` build it, and `npm run build` brings it up to date after the sources change.
import { URL } from 'node:url';

const entry = new URL('../dist/control-plane/run.js', import.meta.url);
/** @type {typeof import('../dist/control-plane/run.js')} */
let main;
try {
  main = await import(entry.href);
} catch (err) {
  if (err instanceof Error && 'code' in err && err.code === 'ERR_MODULE_NOT_FOUND' && err.message.includes(entry.pathname)) {
    console.error('control-plane: dist/ is not built; run `npm run build` (or `npm ci`) first');
    process.exit(1);
  }
  throw err;
}
await main.runControlPlane(process.argv);
