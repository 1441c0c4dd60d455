#!/usr/bin/env node
// The `moe-devtools` command (package.json "bin"; `npx moe-devtools` in a checkout).
// It (re)builds the bundle from the TypeScript sources when they changed, then runs it.
import { createRequire } from 'node:module';

let main;
try {
  const { ensureCli } = await import('../scripts/build-cli.mjs');
  ({ main } = createRequire(import.meta.url)(await ensureCli()));
} catch (err) {
  process.stderr.write(`moe-devtools: cannot build the command line from its sources (run \`npm install\` in the checkout): ${String(err.message ?? err).split('\n')[0]}\n`);
  process.exit(2);
}
const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything is closed by now; should a handle linger, do not let it keep the command alive.
setTimeout(() => process.exit(code), 2000).unref();
