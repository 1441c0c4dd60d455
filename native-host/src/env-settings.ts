/**
 * Host settings from the environment, read the same way by the native host (main.ts) and the
 * command line (cli/commands/record.ts): MOE_DEVTOOLS_HISTORY_MB (history cap),
 * MOE_DEVTOOLS_ATTACH_TIMEOUT_MS (how long an attach waits for the probe once it is queued: the
 * job's main thread must reach Python) and MOE_DEVTOOLS_ATTACH_METHODS (which attach methods to
 * try, in order, e.g. "gdb" to force gdb).
 */
import type { HostOptions } from './host';
import { parseAttachMethods } from './inject';
import { historyDbPath } from './paths';

export function hostSettingsFromEnv(env: NodeJS.ProcessEnv, warn: (line: string) => void): Partial<HostOptions> {
  const historyMB = Number(env.MOE_DEVTOOLS_HISTORY_MB);
  const attachTimeoutMs = Number(env.MOE_DEVTOOLS_ATTACH_TIMEOUT_MS);
  let methods: ReturnType<typeof parseAttachMethods>;
  try {
    methods = parseAttachMethods(env.MOE_DEVTOOLS_ATTACH_METHODS);
  } catch (err) {
    warn(`${(err as Error).message}; using the default order`);
  }
  return {
    ...(historyMB > 0 ? { historyBytes: historyMB * 1024 * 1024 } : {}),
    ...(attachTimeoutMs > 0 ? { attachTimeoutMs } : {}),
    ...(methods ? { methods } : {}),
  };
}

/** The history database's settings (native host only; the command line writes no history). */
export interface HistorySettings {
  /** The database file, or null when history is off. */
  file: string | null;
  /** Where it would be, for messages when it is off. */
  wouldBe: string;
  maxBytes: number;
  maxDays: number;
  tokenPassesPerS: number;
  snapshotsPerS: number;
}

export const DEFAULT_DB_MB = 4096;
export const DEFAULT_DB_DAYS = 30;
export const DEFAULT_DB_TOKEN_PASSES_PER_S = 1;

/**
 * MOE_DEVTOOLS_DB (the file, or "off"), MOE_DEVTOOLS_DB_MB (size cap, default 4096 MiB),
 * MOE_DEVTOOLS_DB_DAYS (sessions older are removed, default 30), MOE_DEVTOOLS_DB_TOKENS_PER_S
 * (sampled token passes kept per second per job, default 1) and MOE_DEVTOOLS_DB_HZ (most counts
 * snapshots kept per second per job; default: every one, about 30 a second).
 */
export function historySettingsFromEnv(env: NodeJS.ProcessEnv, warn: (line: string) => void): HistorySettings {
  const number = (name: string, fallback: number) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (n > 0 && Number.isFinite(n)) return n;
    warn(`${name}=${raw} is not a positive number; using ${fallback}`);
    return fallback;
  };
  const file = historyDbPath(env);
  return {
    file,
    wouldBe: file ?? historyDbPath({ ...env, MOE_DEVTOOLS_DB: '' })!,
    maxBytes: number('MOE_DEVTOOLS_DB_MB', DEFAULT_DB_MB) * 1024 * 1024,
    maxDays: number('MOE_DEVTOOLS_DB_DAYS', DEFAULT_DB_DAYS),
    tokenPassesPerS: number('MOE_DEVTOOLS_DB_TOKENS_PER_S', DEFAULT_DB_TOKEN_PASSES_PER_S),
    snapshotsPerS: number('MOE_DEVTOOLS_DB_HZ', Infinity),
  };
}
