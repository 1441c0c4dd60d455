/** Where this checkout's files are, whether running from the TypeScript sources (tests) or from the bundle in dist/cli. */
import * as fs from 'node:fs';
import * as path from 'node:path';

function findRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    try {
      if (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).name === 'moe-devtools') return dir;
    } catch {
      // no package.json here; keep looking upwards
    }
    if (path.dirname(dir) === dir) throw new Error(`cannot find the moe-devtools checkout above ${start}`);
  }
}

export const REPO_ROOT = findRoot(__dirname);

/** The folder holding the moe_probe package, which the host injects from (MOE_DEVTOOLS_PROBE_ROOT overrides, as for the host). */
export const PROBE_ROOT = process.env.MOE_DEVTOOLS_PROBE_ROOT ?? path.join(REPO_ROOT, 'native-host');

export const WANDB_WRITER = path.join(REPO_ROOT, 'cli/export/wandb_offline.py');
