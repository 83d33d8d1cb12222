import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // The bound that only catches a hang; never tuned to the machine's speed.
    testTimeout: 60_000,
    hookTimeout: 30_000,
    execArgv: ['--expose-gc'],
  },
});
