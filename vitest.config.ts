import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The binaries the tests spawn run dist/: compiled (incrementally) before any test, never stale.
    globalSetup: ['test/support/build-dist.ts'],
    pool: 'forks',
    // Most files wait on real sockets and child processes: three at once keep two cores busy (the default is one).
    maxWorkers: 3,
    // The bound that only catches a hang; never tuned to the machine's speed.
    testTimeout: 60_000,
    hookTimeout: 30_000,
    execArgv: ['--expose-gc'],
  },
});
