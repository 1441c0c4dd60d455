import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { MAX_PROBE_FRAME_BYTES, ProtocolError, type ProbeFrame } from '../../src/protocol/probe';
import { ProbeFrameReader, decodeProbeFrameBody, encodeFrameHeader } from '../../native-host/src/probe-frames';
import { int64Bytes, layerInfo } from './layer-fixture';
import { prng } from './prng';

const packr = new Packr({ useRecords: false, variableMapSize: true });

function counts(seq: number): Record<string, unknown> {
  const payload = Buffer.alloc(2 * 3 * 8);
  for (let i = 0; i < 6; i++) payload.writeBigInt64LE(BigInt(seq * 10 + i), i * 8);
  return { t: 'counts', model: 0, seq, ts: 1700000000.5 + seq, passes: seq, layers: 2, widths: [3, 3], counts: payload, tokens: int64Bytes([seq, seq]), dropped: 0 };
}

const hello = {
  t: 'hello', v: 2, pid: 42, mode: 'injected', framework: 'torch', framework_version: '2.13.0', python: '3.12.1', argv: ['job.py'],
  models: [{ id: 0, class: 'M', model_type: 'mixtral', device: 'cpu', dtype: 'float32',
    layers: [layerInfo(0, 3, 2), layerInfo(1, 3, 2)] }],
};

const values: Record<string, unknown>[] = [hello, counts(1), counts(2), { t: 'error', code: 'probe_failed', message: 'boom', detail: 'trace' }, counts(3), { t: 'bye', reason: 'detached' }];

function encode(value: unknown): Buffer {
  const body = packr.pack(value);
  return Buffer.concat([encodeFrameHeader(body.length), body]);
}

const stream = Buffer.concat(values.map(encode));

/** Plain JSON-comparable form of a frame (Buffers as arrays of numbers). */
function plain(frame: unknown): unknown {
  return JSON.parse(JSON.stringify(frame, (_k, v) => (v && v.type === 'Buffer' ? v.data : v)));
}

function expectFrames(frames: ProbeFrame[]) {
  expect(frames.map(plain)).toEqual(values.map(plain));
}


function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('ProbeFrameReader', () => {
  it('decodes a stream fed in one chunk', () => {
    expectFrames(new ProbeFrameReader().feed(stream));
  });

  it('decodes a stream fed one byte at a time', () => {
    const reader = new ProbeFrameReader();
    const frames: ProbeFrame[] = [];
    for (let i = 0; i < stream.length; i++) frames.push(...reader.feed(stream.subarray(i, i + 1)));
    expectFrames(frames);
  });

  it('decodes a stream split at arbitrary places (200 random splittings)', () => {
    const random = prng(7);
    for (let round = 0; round < 200; round++) {
      const reader = new ProbeFrameReader();
      const frames: ProbeFrame[] = [];
      let pos = 0;
      while (pos < stream.length) {
        const size = random() < 0.2 ? 0 : 1 + Math.floor(random() * random() * 200);
        frames.push(...reader.feed(stream.subarray(pos, pos + size)));
        pos += size;
      }
      expectFrames(frames);
    }
  });

  it('does not keep or rewrite the bytes it was given', () => {
    const copy = Buffer.from(stream);
    const reader = new ProbeFrameReader();
    reader.feed(copy.subarray(0, 10));
    reader.feed(copy.subarray(10));
    expect(copy.equals(stream)).toBe(true);
  });

  it('refuses a frame that declares more than the limit, without waiting for it', () => {
    const head = encodeFrameHeader(MAX_PROBE_FRAME_BYTES + 1);
    const err = thrown(() => new ProbeFrameReader().feed(head));
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as Error).message).toBe(`frame declares ${MAX_PROBE_FRAME_BYTES + 1} bytes, over the ${MAX_PROBE_FRAME_BYTES} byte limit`);
    // Also when the header arrives after good frames, split across chunks.
    const reader = new ProbeFrameReader();
    expect(reader.feed(Buffer.concat([encode({ t: 'bye', reason: 'x' }), Buffer.from([0xff, 0xff])])).map((f) => f.t)).toEqual(['bye']);
    expect(() => reader.feed(Buffer.from([0xff, 0xff]))).toThrow(/over the 16777216 byte limit/);
    // At the limit it waits for the body.
    expect(new ProbeFrameReader().feed(encodeFrameHeader(MAX_PROBE_FRAME_BYTES))).toEqual([]);
  });

  it('turns corrupt MessagePack into a ProtocolError', () => {
    const bodies = [
      Buffer.from([0x82, 0xa1, 0x74]), // map cut short
      Buffer.from([0xa5, 0x61]), // string cut short
      Buffer.from([0x81, 0xa1, 0x74, 0xa3, 0x62, 0x79, 0x65, 0x00]), // trailing byte
      Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]), // array of 2^32-1 items, none there
      Buffer.from([0xdb, 0x7f, 0xff, 0xff, 0xff]), // huge string, no bytes
      Buffer.alloc(0),
    ];
    for (const body of bodies) {
      const err = thrown(() => new ProbeFrameReader().feed(Buffer.concat([encodeFrameHeader(body.length), body])));
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as Error).message).toMatch(/^(frame is not valid MessagePack: .+|frame should be a MessagePack map)$/);
    }
  });

  it('rejects valid MessagePack that is not a valid frame', () => {
    // 0xc1 is "never used"; msgpackr reads it as a marker object, which is no frame either.
    expect(() => new ProbeFrameReader().feed(Buffer.from([1, 0, 0, 0, 0xc1]))).toThrow(ProtocolError);
    expect(() => new ProbeFrameReader().feed(encode({ t: 'counts', ...counts(1), layers: 3 }))).toThrow(ProtocolError);
    expect(() => new ProbeFrameReader().feed(encode(42))).toThrow('frame should be a MessagePack map');
    expect(() => new ProbeFrameReader().feed(encode(null))).toThrow('frame should be a MessagePack map');
    expect(() => new ProbeFrameReader().feed(encode(Buffer.from('{}')))).toThrow('frame should be a MessagePack map');
  });

  it('rejects a frame type that cannot be written as JSON with a ProtocolError, not a TypeError', () => {
    // Found by fuzzing: {t: <msgpackr BigInt extension>} made the error message itself throw.
    const bigint = Buffer.from('81a174d5420001', 'hex');
    const err = thrown(() => decodeProbeFrameBody(bigint));
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as Error).message).toBe('unknown frame type bigint');
    const long = thrown(() => decodeProbeFrameBody(packr.pack({ t: 'x'.repeat(100_000) })));
    expect(long).toBeInstanceOf(ProtocolError);
    expect((long as Error).message.length).toBeLessThan(200);
  });
});

describe('decodeProbeFrameBody', () => {
  it('decodes the probe’s fixmap encoding and msgpackr’s default map16 encoding alike', () => {
    for (const value of values) {
      const small = decodeProbeFrameBody(packr.pack(value));
      const big = decodeProbeFrameBody(new Packr({ useRecords: false }).pack(value));
      expect(plain(big)).toEqual(plain(small));
      expect(plain(small)).toEqual(plain(value));
    }
  });

  it('reads int64/uint64 as numbers, not BigInt', () => {
    // uint64 2^40 for seq (the Python probe packs ints >= 2^32 as uint64).
    const body = Buffer.from(packr.pack({ ...counts(1), seq: 0xdeadbeef }));
    const at = body.indexOf(Buffer.from([0xce, 0xde, 0xad, 0xbe, 0xef]));
    expect(at).toBeGreaterThan(0);
    const uint64 = Buffer.concat([body.subarray(0, at), Buffer.from([0xcf, 0, 0, 1, 0, 0, 0, 0, 0]), body.subarray(at + 5)]);
    const frame = decodeProbeFrameBody(uint64);
    expect(frame.t === 'counts' && frame.seq).toBe(2 ** 40);
  });
});
