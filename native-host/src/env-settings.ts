/**
 * Host settings from the environment, read the same way by the native host (main.ts) and the
 * command line (cli/commands/record.ts): MOE_DEVTOOLS_HISTORY_MB (history cap),
 * MOE_DEVTOOLS_ATTACH_TIMEOUT_MS (how long an attach waits for the probe once it is queued: the
 * job's main thread must reach Python) and MOE_DEVTOOLS_ATTACH_METHODS (which attach methods to
 * try, in order, e.g. "gdb" to force gdb).
 */
import type { HostOptions } from './host';
import { parseAttachMethods } from './inject';

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
