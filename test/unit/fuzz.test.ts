// Fuzzing the host's two input streams with a fixed seed:
//  - probe socket: ProbeFrameReader / decodeProbeFrameBody must give frames that pass
//    parseProbeFrame, or throw a ProtocolError with a message, and nothing else;
//  - browser stdin: NativeMessageReader gives values or Error entries (or throws an Error
//    for an impossible length), and parsePanelRequest never throws.
// Inputs start from the shared vectors and valid requests, then get bytes flipped,
// truncated, extended, lengths changed, nested deeply, or are plain random bytes.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ProtocolError, parseProbeFrame } from '../../src/protocol/probe';
import { parsePanelRequest } from '../../src/protocol/panel';
import { ProbeFrameReader, decodeProbeFrameBody, encodeFrameHeader } from '../../native-host/src/probe-frames';
import { NativeMessageReader } from '../../native-host/src/native-messaging';
import { prng } from './prng';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const vectors: { name: string; msgpack_hex: string; invalid?: boolean }[] = JSON.parse(
  fs.readFileSync(path.join(root, 'test/vectors/probe-frames.json'), 'utf8'),
);
const seeds = vectors.map((v) => Buffer.from(v.msgpack_hex, 'hex'));
const validSeeds = vectors.filter((v) => !v.invalid).map((v) => Buffer.from(v.msgpack_hex, 'hex'));

const ITERATIONS = 12_000;
const TIME_LIMIT_MS = 15_000;


function collectGarbage(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return () => {};
  }
}

function heapAfterGc(gc: () => void): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

// MessagePack type bytes worth trying at any position: every length-carrying type and the odd ones.
const TYPE_BYTES = [0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9,
  0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd,
  0xde, 0xdf, 0xe0, 0xff];
// Extension types msgpackr knows (BigInt, Error, structured-clone ids and pointers, Set, typed arrays,
// RegExp, bundles, timestamps) plus one it does not.
const EXT_TYPES = [0x00, 0x42, 0x65, 0x69, 0x70, 0x73, 0x74, 0x78, 0x62, 0xff, 0x01];

function makeMutator(random: () => number) {
  const int = (n: number) => Math.floor(random() * n);
  const pick = <T>(list: readonly T[]): T => list[int(list.length)];
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const lengthBytes = () => pick([
    [0xff, 0xff, 0xff, 0xff], [0x7f, 0xff, 0xff, 0xff], [0x00, 0x00, 0x00, 0x00], [0x00, 0x01, 0x00, 0x00], [0x00, 0x00, 0x00, 0x01],
    [0x00, 0x00, 0xff, 0xff], [0x01, 0x00, 0x00, 0x00],
  ]);

  /** A MessagePack value that is unusual as a frame field (ext types, huge headers, odd types). */
  function oddValue(): Buffer {
    switch (int(8)) {
      case 0: return Buffer.from([pick([0xd4, 0xd5, 0xd6, 0xd7, 0xd8]), pick(EXT_TYPES), ...bytes(int(17))]);
      case 1: return Buffer.from([0xc7, int(8), pick(EXT_TYPES), ...bytes(int(10))]);
      case 2: return Buffer.from([pick([0xdc, 0xde, 0xda, 0xc5]), 0xff, 0xff]);
      case 3: return Buffer.from([pick([0xdd, 0xdf, 0xdb, 0xc6, 0xc9]), ...lengthBytes()]);
      case 4: return Buffer.from([pick(TYPE_BYTES)]);
      case 5: return Buffer.from([0xcf, ...bytes(8)]); // uint64, maybe past 2^53
      case 6: return Buffer.from([0xcb, ...pick([[0x7f, 0xf8, 0, 0, 0, 0, 0, 0], [0x7f, 0xf0, 0, 0, 0, 0, 0, 0], bytes(8)])]); // NaN, Infinity
      default: return Buffer.concat([Buffer.from([0x91]), oddValue()]);
    }
  }

  /** Deep nesting: arrays or maps, closed or left open. */
  function nested(): Buffer {
    const depth = pick([33, 40, 200, 1000, 5000, 20000, 100_000]);
    const opener = pick([[0x91], [0x81, 0xa1, 0x74], [0xdc, 0x00, 0x01], [0xd4, 0x73, 0x91], [0x81, 0x91]]);
    const parts: number[] = [];
    for (let i = 0; i < depth; i++) parts.push(...opener);
    if (random() < 0.5) parts.push(0xc0);
    return Buffer.from(parts);
  }

  function once(body: Buffer): Buffer {
    const b = Buffer.from(body);
    const at = () => int(Math.max(1, b.length));
    switch (int(12)) {
      case 0: { // flip a few bytes
        for (let i = 1 + int(4); i > 0 && b.length; i--) b[at()] ^= 1 + int(255);
        return b;
      }
      case 1: { // an interesting type byte somewhere
        if (b.length) b[at()] = pick(TYPE_BYTES);
        return b;
      }
      case 2: return b.subarray(0, int(b.length + 1)); // truncate
      case 3: return Buffer.concat([b, bytes(1 + int(16))]); // extend
      case 4: { // insert
        const p = int(b.length + 1);
        return Buffer.concat([b.subarray(0, p), bytes(1 + int(8)), b.subarray(p)]);
      }
      case 5: { // delete a range
        const p = int(b.length + 1);
        return Buffer.concat([b.subarray(0, p), b.subarray(p + 1 + int(8))]);
      }
      case 6: { // a length-carrying header with a huge or tiny length
        const p = int(b.length + 1);
        return Buffer.concat([b.subarray(0, p), Buffer.from([pick([0xdd, 0xdf, 0xdb, 0xc6, 0xc9]), ...lengthBytes()]), b.subarray(p + 5)]);
      }
      case 7: { // splice two seeds
        const other = pick(seeds);
        return Buffer.concat([b.subarray(0, int(b.length + 1)), other.subarray(int(other.length + 1))]);
      }
      case 8: return bytes(int(64)); // random bytes
      case 9: return random() < 0.2 ? nested() : bytes(int(64)); // deep nesting is slow to reject: not too often
      case 10: { // replace the value after a key (first byte after a fixstr) with an odd value
        const keys: number[] = [];
        for (let i = 0; i + 1 < b.length; i++) if (b[i] >= 0xa1 && b[i] <= 0xb1 && i + 1 + (b[i] & 0x1f) < b.length) keys.push(i);
        if (!keys.length) return b;
        const k = pick(keys);
        const end = k + 1 + (b[k] & 0x1f);
        return Buffer.concat([b.subarray(0, end), oddValue(), b.subarray(end + 1 + int(3))]);
      }
      default: { // a map where "t" holds an odd value
        return Buffer.concat([Buffer.from([0x81, 0xa1, 0x74]), oddValue()]);
      }
    }
  }

  return (body: Buffer): Buffer => {
    let out = once(body);
    for (let extra = int(3); extra > 0 && random() < 0.5; extra--) out = once(out);
    return out;
  };
}

function expectProtocolError(err: unknown, input: Buffer) {
  if (!(err instanceof ProtocolError) || typeof err.message !== 'string' || err.message.length === 0) {
    throw new Error(`input ${input.toString('hex').slice(0, 200)} threw ${String(err)} (${(err as Error)?.constructor?.name}), not a ProtocolError`);
  }
}

function expectDecoderHealthy() {
  for (const seed of validSeeds) parseProbeFrame(decodeProbeFrameBody(seed));
}

describe('fuzz: probe frames', () => {
  it(`${ITERATIONS} mutated and random frames give frames or ProtocolErrors, quickly, without leaking`, () => {
    const random = prng(0x5eed1);
    const int = (n: number) => Math.floor(random() * n);
    const mutate = makeMutator(random);
    const gc = collectGarbage();
    const heapBefore = heapAfterGc(gc);
    const started = performance.now();
    let decoded = 0;
    let rejected = 0;
    let biggest = 0;

    for (let i = 0; i < ITERATIONS; i++) {
      const body = mutate(seeds[int(seeds.length)]);
      const t0 = performance.now();
      // 1. The body alone.
      try {
        const frame = decodeProbeFrameBody(body);
        parseProbeFrame(frame); // what it returned is itself a valid frame
        decoded++;
      } catch (err) {
        expectProtocolError(err, body);
        rejected++;
      }
      // 2. The body in a stream, with a true or wrong length, fed in random pieces.
      const declared = random() < 0.7 ? body.length : pick4(int, body.length);
      const stream = Buffer.concat([encodeFrameHeader(declared), body, random() < 0.3 ? mutate(seeds[int(seeds.length)]) : Buffer.alloc(0)]);
      const reader = new ProbeFrameReader();
      try {
        for (let pos = 0; pos < stream.length;) {
          const size = random() < 0.3 ? stream.length : 1 + int(32);
          for (const frame of reader.feed(stream.subarray(pos, pos + size))) parseProbeFrame(frame);
          pos += size;
        }
      } catch (err) {
        expectProtocolError(err, stream);
      }
      biggest = Math.max(biggest, performance.now() - t0);
      if (i % 1000 === 999) expectDecoderHealthy(); // no state left behind by a bad input
      if (performance.now() - started > TIME_LIMIT_MS) throw new Error(`fuzzing took over ${TIME_LIMIT_MS} ms (at input ${i})`);
    }
    expectDecoderHealthy();

    const heapGrowth = heapAfterGc(gc) - heapBefore;
    expect(decoded + rejected).toBe(ITERATIONS);
    expect(rejected).toBeGreaterThan(ITERATIONS / 2);
    expect(decoded).toBeGreaterThan(0); // some mutations keep frames valid: the fuzzer is not only making noise
    expect(biggest).toBeLessThan(2000);
    expect(heapGrowth).toBeLessThan(64 * 1024 * 1024);
  }, 30_000);
});

function pick4(int: (n: number) => number, length: number): number {
  switch (int(5)) {
    case 0: return 0;
    case 1: return Math.max(0, length - 1 - int(4));
    case 2: return length + 1 + int(4);
    case 3: return 16 * 1024 * 1024 + int(2) - 0; // at or just over the limit
    default: return int(2 ** 32);
  }
}

// -- the browser side ---------------------------------------------------------------

function randomJson(random: () => number, depth = 0): unknown {
  const int = (n: number) => Math.floor(random() * n);
  const strings = ['hello', 'list', 'attach', 'detach', '', 'ünï', '🚀', '\u0000', '"\\', 'x'.repeat(int(300)), '__proto__', 'constructor'];
  switch (depth > 4 ? int(5) : int(8)) {
    case 0: return null;
    case 1: return random() < 0.5;
    case 2: return [0, 1, -1, 1.5, 2 ** 31, 2 ** 53, -(2 ** 31), 1e308, -0, 4194304][int(10)];
    case 3: return int(2 ** 31);
    case 4: return strings[int(strings.length)];
    case 5: return Array.from({ length: int(4) }, () => randomJson(random, depth + 1));
    case 6: {
      const obj: Record<string, unknown> = {};
      for (let n = int(4); n > 0; n--) obj[strings[int(strings.length)] || 'k'] = randomJson(random, depth + 1);
      return obj;
    }
    default: {
      const obj: Record<string, unknown> = { type: ['hello', 'list', 'attach', 'detach', 'other', 7][int(6)] };
      if (random() < 0.8) obj.pid = randomJson(random, 5);
      if (random() < 0.5) obj.version = randomJson(random, 5);
      return obj;
    }
  }
}

describe('fuzz: browser messages', () => {
  it(`${ITERATIONS} mutated and random messages give values or Error entries, and parsePanelRequest never throws`, () => {
    const random = prng(0xc0ffee);
    const int = (n: number) => Math.floor(random() * n);
    const mutate = makeMutator(random);
    const gc = collectGarbage();
    const heapBefore = heapAfterGc(gc);
    const started = performance.now();
    let requests = 0;
    let refused = 0;
    let badJson = 0;

    for (let i = 0; i < ITERATIONS; i++) {
      const value = randomJson(random);
      let text = JSON.stringify(value);
      if (random() < 0.03) {
        const depth = [100, 5000, 50000][int(3)];
        text = `{"type":${'['.repeat(depth)}${']'.repeat(depth)},"pid":1}`; // deep enough to overflow a recursive stringify
      }
      const intact = random() < 0.5;
      const body = intact ? Buffer.from(text, 'utf8') : mutate(Buffer.from(text, 'utf8'));
      const declared = intact || random() < 0.7 ? body.length : pick4(int, body.length) * (random() < 0.5 ? 1 : 5);
      const head = Buffer.alloc(4);
      head.writeUInt32LE(declared >>> 0, 0);
      const stream = Buffer.concat([head, body, random() < 0.3 ? head : Buffer.alloc(0)]);
      const reader = new NativeMessageReader();
      const got: unknown[] = [];
      try {
        for (let pos = 0; pos < stream.length;) {
          const size = random() < 0.3 ? stream.length : 1 + int(32);
          got.push(...reader.feed(stream.subarray(pos, pos + size)));
          pos += size;
        }
      } catch (err) {
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message).toMatch(/over the 64 MiB limit/);
      }
      for (const message of got) {
        if (message instanceof Error) {
          expect(message.message).toMatch(/^message is not valid JSON: /);
          badJson++;
          continue;
        }
        let request: ReturnType<typeof parsePanelRequest>;
        try {
          request = parsePanelRequest(message);
        } catch (err) {
          throw new Error(`parsePanelRequest threw ${String(err)} on input ${stream.toString('hex').slice(0, 200)}`);
        }
        if ('error' in request) {
          expect(typeof request.error).toBe('string');
          expect(request.error.length).toBeGreaterThan(0);
          refused++;
        } else {
          expect(['hello', 'list', 'attach', 'detach']).toContain(request.type);
          requests++;
        }
      }
      // (deeply nested values are left out: the comparison itself would recurse too deep)
      if (intact && declared === body.length && got.length && text.length < 10_000) expect(got[0]).toEqual(JSON.parse(text));
      if (performance.now() - started > TIME_LIMIT_MS) throw new Error(`fuzzing took over ${TIME_LIMIT_MS} ms (at input ${i})`);
    }

    const heapGrowth = heapAfterGc(gc) - heapBefore;
    expect(requests).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(100);
    expect(badJson).toBeGreaterThan(100);
    expect(heapGrowth).toBeLessThan(64 * 1024 * 1024);
  }, 30_000);
});
