#!/usr/bin/env node
// Runs the TypeScript sources through tsx (a dependency), so the binary works from a clean clone with no build step.
import { register } from 'tsx/esm/api';

register();
const { runControlPlane } = await import('../control-plane/run.ts');
await runControlPlane(process.argv);
