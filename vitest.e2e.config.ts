import { defineConfig } from 'vitest/config';

// End-to-end tests start real Python jobs and a real Chromium: run them one file
// at a time (2-core machines) with generous timeouts.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.test.ts'],
    environment: 'node',
    testTimeout: 180_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    pool: 'forks',
  },
});
