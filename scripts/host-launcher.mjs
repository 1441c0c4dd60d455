// The executable Chrome starts for the native host. Chrome execs it directly with its own
// environment; naming node's absolute path keeps it working when the browser's PATH has no
// node (desktop launchers often don't). Written by both the build and install-host, so a
// rebuild never leaves a registered host pointing at a missing file.
import * as fs from 'node:fs';
import * as path from 'node:path';

export function writeHostLauncher(hostDir) {
  const launcher = path.join(hostDir, 'moe-devtools-host');
  const script = `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(hostDir, 'host.cjs'))} "$@"\n`;
  fs.writeFileSync(launcher, script, { mode: 0o755 });
  return launcher;
}
