// Where the project's Python lives: .venv at the repository root (made by `npm run setup-python`),
// or MOE_PYTHON to use another interpreter that has torch and transformers.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const VENV_PYTHON = path.join(ROOT, '.venv/bin/python');

export function projectPython() {
  return process.env.MOE_PYTHON ?? VENV_PYTHON;
}

export function requireProjectPython() {
  const python = projectPython();
  if (!fs.existsSync(python)) {
    console.error(`No Python environment at ${python}. Run \`npm run setup-python\` first (or set MOE_PYTHON).`);
    process.exit(1);
  }
  return python;
}
