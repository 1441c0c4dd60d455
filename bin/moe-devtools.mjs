#!/usr/bin/env node
// The `moe-devtools` command (package.json "bin"; `npx moe-devtools` in a checkout).
// It (re)builds the bundle from the TypeScript sources when they changed, then runs it.
import { createRequire } from 'node:module';
import { ensureCli } from '../scripts/build-cli.mjs';

const { main } = createRequire(import.meta.url)(await ensureCli());
const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything is closed by now; should a handle linger, do not let it keep the command alive.
setTimeout(() => process.exit(code), 2000).unref();
