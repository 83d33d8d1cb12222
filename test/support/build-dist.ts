/**
 * Vitest globalSetup: brings dist/ up to date with the sources before any test
 * runs (`scripts/build.ts`, incremental), because the tests that spawn the
 * binaries (`node bin/…`) run the compiled JavaScript: a stale dist/ would make
 * them pass or fail for code that is no longer there.
 */
import { build } from '../../scripts/build.js';

export function setup(): void {
  build();
}
