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

describe('history database settings', () => {
  it('puts the database in the user data folder unless told otherwise, and reads the retention', async () => {
    const { historySettingsFromEnv } = await import('../../native-host/src/env-settings');
    const { historyDbPath } = await import('../../native-host/src/paths');
    expect(historyDbPath({}, 'linux', '/home/ada')).toBe('/home/ada/.local/share/moe-devtools/history.sqlite');
    expect(historyDbPath({ XDG_DATA_HOME: '/data' }, 'linux', '/home/ada')).toBe('/data/moe-devtools/history.sqlite');
    expect(historyDbPath({ XDG_DATA_HOME: 'relative' }, 'linux', '/home/ada')).toBe('/home/ada/.local/share/moe-devtools/history.sqlite');
    expect(historyDbPath({}, 'darwin', '/Users/ada')).toBe('/Users/ada/Library/Application Support/moe-devtools/history.sqlite');
    expect(historyDbPath({ MOE_DEVTOOLS_DB: '/tmp/h.sqlite' }, 'linux', '/home/ada')).toBe('/tmp/h.sqlite');
    expect(historyDbPath({ MOE_DEVTOOLS_DB: 'off' }, 'linux', '/home/ada')).toBeNull();
    const warnings: string[] = [];
    const s = historySettingsFromEnv({ MOE_DEVTOOLS_DB: '/tmp/h.sqlite', MOE_DEVTOOLS_DB_MB: '100', MOE_DEVTOOLS_DB_DAYS: '7', MOE_DEVTOOLS_DB_HZ: '10', MOE_DEVTOOLS_DB_TOKENS_PER_S: 'lots' }, (l) => warnings.push(l));
    expect(s).toMatchObject({ file: '/tmp/h.sqlite', maxBytes: 100 * 1024 * 1024, maxDays: 7, snapshotsPerS: 10, tokenPassesPerS: 1 });
    expect(warnings).toEqual(['MOE_DEVTOOLS_DB_TOKENS_PER_S=lots is not a positive number; using 1']);
    const defaults = historySettingsFromEnv({ MOE_DEVTOOLS_DB: 'off' }, () => {});
    expect(defaults).toMatchObject({ file: null, maxBytes: 4096 * 1024 * 1024, maxDays: 30, snapshotsPerS: Infinity });
    expect(defaults.wouldBe).toMatch(/moe-devtools\/history\.sqlite$/);
  });
});
