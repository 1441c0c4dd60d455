// Runs the project's Python (see python-env.mjs) with the given arguments, e.g. `-m pytest`.
import { spawnSync } from 'node:child_process';
import { requireProjectPython } from './python-env.mjs';

const result = spawnSync(requireProjectPython(), process.argv.slice(2), { stdio: 'inherit' });
process.exit(result.status ?? 1);
