/** The per-user folder where probes listen; must match native-host/moe_probe/paths.py. */
import * as path from 'node:path';

export const SOCKET_PREFIX = 'probe-';
export const SOCKET_SUFFIX = '.sock';

export function socketDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MOE_DEVTOOLS_SOCKET_DIR) return env.MOE_DEVTOOLS_SOCKET_DIR;
  // A fixed place rather than XDG_RUNTIME_DIR or TMPDIR: the job and the browser
  // often run with different environments (ssh vs desktop session).
  return `/tmp/moe-devtools-${process.getuid?.() ?? 0}`;
}

export function probeSocketPath(pid: number, dir = socketDir()): string {
  return path.join(dir, `${SOCKET_PREFIX}${pid}${SOCKET_SUFFIX}`);
}

export function probeStatusPath(pid: number, dir = socketDir()): string {
  return path.join(dir, `${SOCKET_PREFIX}${pid}.status.json`);
}
