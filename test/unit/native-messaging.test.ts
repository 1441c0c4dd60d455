import { describe, expect, it } from 'vitest';
import { MAX_INBOUND_BYTES, NativeMessageReader, encodeNativeMessage } from '../../native-host/src/native-messaging';
import { MAX_HOST_MESSAGE_BYTES } from '../../src/protocol/panel';

function frame(body: string | Buffer): Buffer {
  const data = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const head = Buffer.alloc(4);
  head.writeUInt32LE(data.length, 0);
  return Buffer.concat([head, data]);
}

const messages: unknown[] = [
  { type: 'hello', version: 1 },
  { type: 'list' },
  { type: 'attach', pid: 1234 },
  { type: 'detach', pid: 99999 },
  { nested: { deep: [1, 2, { x: 'ünïcødé ✓ 🚀' }] }, n: -1.5, nothing: null },
  'just a string',
  [],
];

describe('encodeNativeMessage', () => {
  it('writes a 4-byte little-endian length, then UTF-8 JSON', () => {
    const out = encodeNativeMessage({ type: 'list', s: 'é' });
    const body = JSON.stringify({ type: 'list', s: 'é' });
    expect(out.readUInt32LE(0)).toBe(Buffer.byteLength(body));
    expect(out.subarray(4).toString('utf8')).toBe(body);
    expect(out.length).toBe(4 + Buffer.byteLength(body));
  });

  it('round-trips through NativeMessageReader', () => {
    const reader = new NativeMessageReader();
    const got = messages.flatMap((m) => reader.feed(encodeNativeMessage(m)));
    expect(got).toEqual(messages);
  });

  it('refuses a message over Chrome’s 1 MiB limit instead of sending it', () => {
    // JSON adds the two quotes: this string is exactly at the limit, one more byte is over.
    const atLimit = 'x'.repeat(MAX_HOST_MESSAGE_BYTES - 2);
    expect(encodeNativeMessage(atLimit).length).toBe(4 + MAX_HOST_MESSAGE_BYTES);
    expect(() => encodeNativeMessage(`${atLimit}x`)).toThrow(RangeError);
    expect(() => encodeNativeMessage({ counts: new Array(300_000).fill(12345) })).toThrow(/over Chrome's 1 MiB limit/);
  });
});

describe('NativeMessageReader', () => {
  const stream = Buffer.concat(messages.map((m) => encodeNativeMessage(m)));

  it('reassembles messages split across many chunks (one byte at a time)', () => {
    const reader = new NativeMessageReader();
    const got: unknown[] = [];
    for (let i = 0; i < stream.length; i++) got.push(...reader.feed(stream.subarray(i, i + 1)));
    expect(got).toEqual(messages);
  });

  it('reassembles messages whatever the chunk boundaries', () => {
    for (let size = 2; size < 40; size += 3) {
      const reader = new NativeMessageReader();
      const got: unknown[] = [];
      for (let i = 0; i < stream.length; i += size) got.push(...reader.feed(stream.subarray(i, i + size)));
      expect(got).toEqual(messages);
    }
  });

  it('returns many messages from one chunk, and keeps a partial tail for later', () => {
    const reader = new NativeMessageReader();
    const extra = encodeNativeMessage({ type: 'list', tail: true });
    expect(reader.feed(Buffer.concat([stream, extra.subarray(0, 6)]))).toEqual(messages);
    expect(reader.feed(Buffer.alloc(0))).toEqual([]);
    expect(reader.feed(extra.subarray(6))).toEqual([{ type: 'list', tail: true }]);
  });

  it('handles empty chunks and a header split across chunks', () => {
    const reader = new NativeMessageReader();
    const one = encodeNativeMessage({ type: 'list' });
    expect(reader.feed(Buffer.alloc(0))).toEqual([]);
    expect(reader.feed(one.subarray(0, 1))).toEqual([]);
    expect(reader.feed(Buffer.alloc(0))).toEqual([]);
    expect(reader.feed(one.subarray(1, 3))).toEqual([]);
    expect(reader.feed(one.subarray(3))).toEqual([{ type: 'list' }]);
  });

  it('gives an Error entry for invalid JSON and goes on with the next message', () => {
    const reader = new NativeMessageReader();
    const chunk = Buffer.concat([
      encodeNativeMessage({ type: 'list' }),
      frame('{"type": "attach", pid: 3}'),
      frame(''),
      frame(Buffer.from([0xff, 0xfe, 0x7b])),
      encodeNativeMessage({ type: 'detach', pid: 3 }),
    ]);
    const got = reader.feed(chunk);
    expect(got).toHaveLength(5);
    expect(got[0]).toEqual({ type: 'list' });
    for (const bad of got.slice(1, 4)) {
      expect(bad).toBeInstanceOf(Error);
      expect((bad as Error).message).toMatch(/^message is not valid JSON: /);
    }
    expect(got[4]).toEqual({ type: 'detach', pid: 3 });
    expect(reader.feed(encodeNativeMessage({ type: 'list' }))).toEqual([{ type: 'list' }]);
  });

  it('accepts a large inbound message (over 1 MiB: the browser may send up to 64 MiB)', () => {
    const big = { type: 'blob', data: 'y'.repeat(3 * 1024 * 1024) };
    const body = frame(JSON.stringify(big));
    const reader = new NativeMessageReader();
    const got: unknown[] = [];
    for (let i = 0; i < body.length; i += 65536) got.push(...reader.feed(body.subarray(i, i + 65536)));
    expect(got).toEqual([big]);
  });

  it('throws when a message declares more than 64 MiB, before waiting for the bytes', () => {
    const reader = new NativeMessageReader();
    const head = Buffer.alloc(4);
    head.writeUInt32LE(MAX_INBOUND_BYTES + 1, 0);
    expect(() => reader.feed(head)).toThrow(/over the 64 MiB limit/);
    const atLimit = new NativeMessageReader();
    head.writeUInt32LE(MAX_INBOUND_BYTES, 0);
    expect(atLimit.feed(head)).toEqual([]); // at the limit: waits for the body
    const huge = new NativeMessageReader();
    expect(() => huge.feed(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toThrow(/declares 4294967295 bytes/);
  });
});
