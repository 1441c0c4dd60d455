/**
 * How a counts snapshot is stored in the history database: compact and exact.
 *
 * A session's snapshots are a chain. A key snapshot holds every value; the others hold the
 * difference from the snapshot stored before them: integer counters (counts, tokens) as zigzag
 * varints of the difference (cumulative counts grow by small amounts per snapshot, so most take
 * one or two bytes), floating-point totals (router health, max logits, block time) as the XOR of
 * their IEEE-754 bits with the previous value's (slowly changing values share their high bits, so
 * the XOR is mostly zero bytes: lossless, unlike a floating-point difference, so a reopened session
 * shows exactly the numbers the live view had). The whole payload is then deflated.
 *
 * Reading a snapshot means decoding from the key before it; the writer starts a new key every
 * KEY_INTERVAL snapshots, so that costs at most that many small decodes.
 */
import * as zlib from 'node:zlib';

export const KEY_INTERVAL = 64;
const CODEC_VERSION = 1;

const F_KEY = 1;
const F_TOKENS = 2;
const F_HEALTH = 4;
const F_MAX_LOGIT = 8;
const F_TIME = 16;

/** The numeric payload of one counts snapshot (scalars such as ts and passes are stored beside it). */
export interface SnapshotValues {
  counts: Float64Array;
  tokens: Float64Array | null;
  health: Float64Array | null;
  maxLogit: Float64Array | null;
  timeS: Float64Array | null;
}

export class CodecError extends Error {}

class Writer {
  private buf = new Uint8Array(1024);
  length = 0;

  private room(n: number) {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }

  byte(b: number) {
    this.room(1);
    this.buf[this.length++] = b;
  }

  /** Unsigned varint of a whole number below 2^53 (7 bits a byte, low first). */
  uvarint(v: number) {
    this.room(8);
    while (v >= 128) {
      this.buf[this.length++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.length++] = v;
  }

  /** Zigzag varint of a whole number of magnitude below 2^52. */
  svarint(v: number) {
    this.uvarint(v >= 0 ? 2 * v : -2 * v - 1);
  }

  bytes(b: Uint8Array) {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  done(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

class Reader {
  pos = 0;
  constructor(private readonly buf: Uint8Array) {}

  byte(): number {
    if (this.pos >= this.buf.length) throw new CodecError('snapshot payload ends early');
    return this.buf[this.pos++]!;
  }

  uvarint(): number {
    let v = 0;
    let scale = 1;
    for (;;) {
      const b = this.byte();
      v += (b & 127) * scale;
      if (b < 128) return v;
      scale *= 128;
      if (scale > 2 ** 56) throw new CodecError('snapshot payload holds a number too large');
    }
  }

  svarint(): number {
    const u = this.uvarint();
    return u % 2 === 0 ? u / 2 : -(u + 1) / 2;
  }

  bytes(n: number): Uint8Array {
    if (this.pos + n > this.buf.length) throw new CodecError('snapshot payload ends early');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function writeInts(w: Writer, values: Float64Array, prev: Float64Array | null) {
  if (prev) for (let i = 0; i < values.length; i++) w.svarint(values[i]! - prev[i]!);
  else for (let i = 0; i < values.length; i++) w.svarint(values[i]!);
}

function readInts(r: Reader, n: number, prev: Float64Array | null): Float64Array {
  const out = new Float64Array(n);
  if (prev) for (let i = 0; i < n; i++) out[i] = prev[i]! + r.svarint();
  else for (let i = 0; i < n; i++) out[i] = r.svarint();
  return out;
}

function writeFloats(w: Writer, values: Float64Array, prev: Float64Array | null) {
  const bytes = new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  if (prev) {
    const p = new Uint8Array(prev.buffer, prev.byteOffset, prev.byteLength);
    for (let i = 0; i < bytes.length; i++) bytes[i]! ^= p[i]!;
  }
  w.bytes(bytes);
}

function readFloats(r: Reader, n: number, prev: Float64Array | null): Float64Array {
  const bytes = Uint8Array.from(r.bytes(n * 8));
  if (prev) {
    const p = new Uint8Array(prev.buffer, prev.byteOffset, prev.byteLength);
    for (let i = 0; i < bytes.length; i++) bytes[i]! ^= p[i]!;
  }
  return new Float64Array(bytes.buffer);
}

/**
 * Encode `snap`, as a key when `prev` is null, else as its difference from `prev` (which must
 * have the same shape: a writer starts a key whenever the shape changes).
 */
export function encodeSnapshot(snap: SnapshotValues, prev: SnapshotValues | null): Uint8Array {
  if (prev && !sameShape(snap, prev)) prev = null;
  const flags = (prev ? 0 : F_KEY) | (snap.tokens ? F_TOKENS : 0) | (snap.health ? F_HEALTH : 0) | (snap.maxLogit ? F_MAX_LOGIT : 0) | (snap.timeS ? F_TIME : 0);
  const w = new Writer();
  w.byte(CODEC_VERSION);
  w.byte(flags);
  w.uvarint(snap.counts.length);
  w.uvarint(snap.tokens?.length ?? 0);
  w.uvarint(snap.health?.length ?? 0);
  w.uvarint(snap.maxLogit?.length ?? 0);
  w.uvarint(snap.timeS?.length ?? 0);
  writeInts(w, snap.counts, prev?.counts ?? null);
  if (snap.tokens) writeInts(w, snap.tokens, prev?.tokens ?? null);
  if (snap.health) writeFloats(w, snap.health, prev?.health ?? null);
  if (snap.maxLogit) writeFloats(w, snap.maxLogit, prev?.maxLogit ?? null);
  if (snap.timeS) writeFloats(w, snap.timeS, prev?.timeS ?? null);
  return zlib.deflateRawSync(w.done(), { level: 1 });
}

/** Whether a stored payload is a key (decodable on its own). */
export function isKey(data: Uint8Array): boolean {
  return (inflate(data)[1]! & F_KEY) !== 0;
}

function inflate(data: Uint8Array): Uint8Array {
  try {
    return zlib.inflateRawSync(data);
  } catch (err) {
    throw new CodecError(`snapshot payload is not valid deflate data: ${(err as Error).message}`);
  }
}

/** Decode a payload; `prev` is the snapshot stored just before it (ignored for a key, required otherwise). */
export function decodeSnapshot(data: Uint8Array, prev: SnapshotValues | null): SnapshotValues {
  const r = new Reader(inflate(data));
  const version = r.byte();
  if (version !== CODEC_VERSION) throw new CodecError(`snapshot payload version ${version} is not one this host reads (${CODEC_VERSION})`);
  const flags = r.byte();
  const key = (flags & F_KEY) !== 0;
  if (!key && !prev) throw new CodecError('a difference snapshot without the snapshot before it');
  const n = { counts: r.uvarint(), tokens: r.uvarint(), health: r.uvarint(), maxLogit: r.uvarint(), timeS: r.uvarint() };
  const base = key ? null : prev!;
  if (base && (base.counts.length !== n.counts || (base.tokens?.length ?? 0) !== n.tokens || (base.health?.length ?? 0) !== n.health ||
    (base.maxLogit?.length ?? 0) !== n.maxLogit || (base.timeS?.length ?? 0) !== n.timeS)) {
    throw new CodecError('a difference snapshot whose shape differs from the snapshot before it');
  }
  return {
    counts: readInts(r, n.counts, base?.counts ?? null),
    tokens: flags & F_TOKENS ? readInts(r, n.tokens, base?.tokens ?? null) : null,
    health: flags & F_HEALTH ? readFloats(r, n.health, base?.health ?? null) : null,
    maxLogit: flags & F_MAX_LOGIT ? readFloats(r, n.maxLogit, base?.maxLogit ?? null) : null,
    timeS: flags & F_TIME ? readFloats(r, n.timeS, base?.timeS ?? null) : null,
  };
}

function sameShape(a: SnapshotValues, b: SnapshotValues): boolean {
  const len = (x: Float64Array | null) => (x ? x.length : -1);
  return a.counts.length === b.counts.length && len(a.tokens) === len(b.tokens) && len(a.health) === len(b.health) &&
    len(a.maxLogit) === len(b.maxLogit) && len(a.timeS) === len(b.timeS);
}
