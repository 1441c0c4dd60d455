import { describe, expect, it } from 'vitest';
import { hostSettingsFromEnv } from '../../native-host/src/env-settings';

describe('host settings from the environment (native host and command line alike)', () => {
  it('reads the history cap, attach timeout and attach methods, and ignores what is unset', () => {
    const warnings: string[] = [];
    expect(hostSettingsFromEnv({}, (l) => warnings.push(l))).toEqual({});
    expect(hostSettingsFromEnv({ MOE_DEVTOOLS_HISTORY_MB: '2', MOE_DEVTOOLS_ATTACH_TIMEOUT_MS: '5000', MOE_DEVTOOLS_ATTACH_METHODS: 'gdb, ptrace' }, (l) => warnings.push(l)))
      .toEqual({ historyBytes: 2 * 1024 * 1024, attachTimeoutMs: 5000, methods: ['gdb', 'ptrace'] });
    expect(warnings).toEqual([]);
  });

  it('warns about an unknown attach method and keeps the default order', () => {
    const warnings: string[] = [];
    expect(hostSettingsFromEnv({ MOE_DEVTOOLS_ATTACH_METHODS: 'telepathy' }, (l) => warnings.push(l))).toEqual({});
    expect(warnings).toEqual([expect.stringMatching(/unknown method telepathy.*; using the default order$/)]);
  });
});
