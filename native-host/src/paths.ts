/** The per-user folder where probes listen; must match native-host/moe_probe/paths.py. */
import * as os from 'node:os';
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

/**
 * The history database file: MOE_DEVTOOLS_DB when set (a path; "off" turns history off), else
 * history.sqlite in the user's data folder: $XDG_DATA_HOME/moe-devtools (default
 * ~/.local/share/moe-devtools) on Linux, ~/Library/Application Support/moe-devtools on macOS.
 * Null when history is off.
 */
export function historyDbPath(env: NodeJS.ProcessEnv = process.env, platform = process.platform, home = os.homedir()): string | null {
  const set = env.MOE_DEVTOOLS_DB?.trim();
  if (set) return /^(off|0|false|no|none)$/i.test(set) ? null : path.resolve(set);
  const base = platform === 'darwin'
    ? path.join(home, 'Library', 'Application Support')
    : env.XDG_DATA_HOME && path.isAbsolute(env.XDG_DATA_HOME) ? env.XDG_DATA_HOME : path.join(home, '.local', 'share');
  return path.join(base, 'moe-devtools', 'history.sqlite');
}
