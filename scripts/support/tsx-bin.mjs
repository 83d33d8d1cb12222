#!/usr/bin/env node
/**
 * The binaries as they ran before dist/ (issue 18), kept for the startup
 * benchmark to compare against: the TypeScript sources through tsx's loader,
 * registered at every start. `node scripts/support/tsx-bin.mjs control-plane|agent-host …`.
 */
import { register } from 'tsx/esm/api';

register();
const [binary] = process.argv.splice(2, 1);
if (binary === 'control-plane') {
  const { runControlPlane } = await import('../../control-plane/run.ts');
  await runControlPlane(process.argv);
} else if (binary === 'agent-host') {
  const { runAgentHost } = await import('../../agent-host/run.ts');
  await runAgentHost(process.argv);
} else {
  console.error('usage: tsx-bin.mjs control-plane|agent-host [args…]');
  process.exitCode = 2;
}
