// Bundles the command line (cli/main.ts) into dist/cli/moe-devtools.cjs, and rebuilds it only
// when a source it was built from has changed since: the `moe-devtools` launcher calls this on
// every run, so a checkout never runs a stale bundle and never needs a separate build step.
import * as esbuild from 'esbuild';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI_BUNDLE = path.join(root, 'dist/cli/moe-devtools.cjs');
const INPUTS = path.join(root, 'dist/cli/inputs.json');

export async function buildCli() {
  // Built in memory and renamed into place: two commands starting at once in a fresh checkout
  // must never run a half-written bundle.
  const result = await esbuild.build({
    entryPoints: [path.join(root, 'cli/main.ts')],
    outfile: CLI_BUNDLE,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    sourcemap: 'linked',
    logLevel: 'warning',
    legalComments: 'none',
    absWorkingDir: root,
    metafile: true,
    write: false,
  });
  fs.mkdirSync(path.dirname(CLI_BUNDLE), { recursive: true });
  copySqliteWasm(path.dirname(CLI_BUNDLE)); // before the bundle that loads it is in place
  for (const file of [...result.outputFiles, { path: INPUTS, contents: Buffer.from(JSON.stringify(Object.keys(result.metafile.inputs))) }]) {
    const tmp = `${file.path}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, file.contents);
    fs.renameSync(tmp, file.path);
  }
  return CLI_BUNDLE;
}

/** node-sqlite3-wasm reads SQLite's WebAssembly from the folder of the script that bundles it (the history database). */
export function copySqliteWasm(dir) {
  const wasm = path.join(root, 'node_modules/node-sqlite3-wasm/dist/node-sqlite3-wasm.wasm');
  const dest = path.join(dir, 'node-sqlite3-wasm.wasm');
  const tmp = `${dest}.${process.pid}.tmp`;
  fs.copyFileSync(wasm, tmp);
  fs.renameSync(tmp, dest);
}

/** True when the bundle exists and none of the files it was built from is newer. */
export function cliIsFresh() {
  try {
    const built = fs.statSync(CLI_BUNDLE).mtimeMs;
    const inputs = JSON.parse(fs.readFileSync(INPUTS, 'utf8'));
    return inputs.every((input) => fs.statSync(path.join(root, input)).mtimeMs <= built);
  } catch {
    return false; // missing bundle, missing list, or a source that was removed
  }
}

export async function ensureCli() {
  return cliIsFresh() ? CLI_BUNDLE : buildCli();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildCli();
  console.log(`built ${path.relative(root, CLI_BUNDLE)}`);
}
