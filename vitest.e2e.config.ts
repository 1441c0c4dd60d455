import * as os from 'node:os';
import * as path from 'node:path';
import { defineConfig } from 'vitest/config';

// End-to-end tests start real Python jobs and a real Chromium: run them one file
// at a time (2-core machines) with generous timeouts. Every host they start (directly or
// through the browser) keeps its history in a scratch database, never in the user's data
// folder; tests that check the history give their hosts a file of their own.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.test.ts'],
    environment: 'node',
    testTimeout: 180_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    pool: 'forks',
    env: { MOE_DEVTOOLS_DB: path.join(os.tmpdir(), `moe-devtools-e2e-${process.pid}`, 'history.sqlite') },
  },
});
