#!/usr/bin/env node
// Runs the TypeScript sources through tsx (a dependency), so the binary works from a clean clone with no build step.
import { register } from 'tsx/esm/api';

register();
const { runAgentHost } = await import('../agent-host/run.ts');
await runAgentHost(process.argv);
