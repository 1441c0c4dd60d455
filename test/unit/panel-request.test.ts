import { describe, expect, it } from 'vitest';
import { PANEL_PROTOCOL_VERSION, parsePanelRequest } from '../../src/protocol/panel';

describe('parsePanelRequest', () => {
  it.each([
    [{ type: 'hello', version: PANEL_PROTOCOL_VERSION }, { type: 'hello', version: PANEL_PROTOCOL_VERSION }],
    [{ type: 'hello', version: 99 }, { type: 'hello', version: 99 }], // the host answers with its own version
    [{ type: 'list' }, { type: 'list' }],
    [{ type: 'list', extra: 'ignored' }, { type: 'list' }],
    [{ type: 'attach', pid: 1 }, { type: 'attach', pid: 1 }],
    [{ type: 'attach', pid: 4194304 }, { type: 'attach', pid: 4194304 }],
    [{ type: 'detach', pid: 2 ** 31 - 1 }, { type: 'detach', pid: 2 ** 31 - 1 }],
    [{ type: 'detach', pid: 77, other: [1, 2] }, { type: 'detach', pid: 77 }],
  ])('accepts %j', (message, request) => {
    expect(parsePanelRequest(message)).toEqual(request);
  });

  it('copies only the known fields (nothing else from the message leaks through)', () => {
    const request = parsePanelRequest(JSON.parse('{"type":"attach","pid":5,"__proto__":{"evil":true},"cmd":"rm -rf /"}'));
    expect(Object.keys(request)).toEqual(['type', 'pid']);
    expect((request as Record<string, unknown>).evil).toBeUndefined();
  });

  it.each([
    [null, 'message should be a JSON object'],
    [undefined, 'message should be a JSON object'],
    [42, 'message should be a JSON object'],
    ['list', 'message should be a JSON object'],
    [[{ type: 'list' }], 'message should be a JSON object'],
    [{}, 'unknown request type undefined'],
    [{ type: 'LIST' }, 'unknown request type "LIST"'],
    [{ type: 'exec', cmd: 'id' }, 'unknown request type "exec"'],
    [{ type: 7 }, 'unknown request type 7'],
    [{ type: 'hello' }, 'hello needs a version number'],
    [{ type: 'hello', version: '1' }, 'hello needs a version number'],
    [{ type: 'attach' }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: '123' }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: 0 }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: -1 }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: 1.5 }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: 2 ** 31 }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: Number.NaN }, 'attach needs a positive integer pid'],
    [{ type: 'attach', pid: Number.POSITIVE_INFINITY }, 'attach needs a positive integer pid'],
    [{ type: 'detach', pid: null }, 'detach needs a positive integer pid'],
    [{ type: 'detach', pid: [3] }, 'detach needs a positive integer pid'],
  ])('rejects %j', (message, error) => {
    expect(parsePanelRequest(message)).toEqual({ error });
  });

  it('never throws, whatever JSON.parse can produce', () => {
    const inputs = ['{"type":{"toString":1}}', '{"type":"attach","pid":1e400}', '{"type":"hello","version":-0}', '[[[[[]]]]]', '"\\u0000"', 'true'];
    for (const text of inputs) {
      const result = parsePanelRequest(JSON.parse(text));
      expect(typeof result).toBe('object');
    }
    expect(parsePanelRequest(JSON.parse('{"type":"attach","pid":1e400}'))).toEqual({ error: 'attach needs a positive integer pid' });
  });

  it('does not throw on a deeply nested or huge type, and keeps the error short', () => {
    // Found by fuzzing: JSON.stringify of the type overflowed the stack and crashed the host's stdin handler.
    const deep = JSON.parse(`{"type":${'['.repeat(50_000)}${']'.repeat(50_000)}}`);
    expect(parsePanelRequest(deep)).toEqual({ error: 'unknown request type object' });
    const huge = parsePanelRequest({ type: 'x'.repeat(5_000_000) });
    expect('error' in huge && huge.error.length).toBeLessThan(200);
  });
});

describe('history requests', () => {
  it.each([
    [{ type: 'sessions' }, { type: 'sessions' }],
    [{ type: 'session-open', session: 3 }, { type: 'session-open', session: 3 }],
    [{ type: 'session-open', session: 3, from: 1.5, to: 9, points: 500, purpose: 'export', x: 1 }, { type: 'session-open', session: 3, from: 1.5, to: 9, points: 500, purpose: 'export' }],
    [{ type: 'session-delete', session: 2 }, { type: 'session-delete', session: 2 }],
    [{ type: 'session-import', name: 'a.moerec', part: 0, done: true, text: '{}' }, { type: 'session-import', name: 'a.moerec', part: 0, done: true, text: '{}' }],
    [{ type: 'configure', dbMaxMB: 512, dbMaxDays: 7 }, { type: 'configure', dbMaxMB: 512, dbMaxDays: 7 }],
  ])('accepts %j', (message, request) => {
    expect(parsePanelRequest(message)).toEqual(request);
  });

  it.each([
    [{ type: 'session-open' }, 'session-open needs a session id'],
    [{ type: 'session-open', session: 0 }, 'session-open needs a session id'],
    [{ type: 'session-delete', session: 1.5 }, 'session-delete needs a session id'],
    [{ type: 'session-open', session: 1, from: 'now' }, 'session-open: from should be a number (seconds since the epoch)'],
    [{ type: 'session-open', session: 1, points: 1 }, 'session-open: points should be a whole number of at least 2'],
    [{ type: 'session-open', session: 1, purpose: 'print' }, 'session-open: purpose should be "view" or "export"'],
    [{ type: 'session-import', name: 'a', part: 0, done: true }, 'session-import needs a name and the text of a .moerec file'],
    [{ type: 'session-import', name: 'a', part: -1, done: true, text: '' }, 'session-import needs a part number and done'],
    [{ type: 'configure', dbMaxMB: 0 }, 'configure: dbMaxMB should be between 1 and 16777216'],
    [{ type: 'configure', dbMaxDays: -1 }, 'configure: dbMaxDays should be between 0.001 and 36500'],
  ])('rejects %j', (message, error) => {
    expect(parsePanelRequest(message)).toEqual({ error });
  });
});
