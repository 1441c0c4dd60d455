/**
 * The two encodings a TensorBoard event file is made of, written from their specifications
 * rather than pulled in as a dependency (they are small, and the npm packages that offer them
 * bring TensorFlow.js or a protobuf runtime with them):
 *
 * - TFRecord framing: each record is uint64 length, uint32 masked CRC-32C of those 8 bytes,
 *   the data, uint32 masked CRC-32C of the data, all little-endian. The mask is
 *   ((crc >>> 15) | (crc << 17)) + 0xa282ead8 (tensorflow/core/lib/hash/crc32c.h).
 * - Protocol Buffers wire format, enough of it for tensorboard.Event and its Summary:
 *   varints, 64-bit doubles, 32-bit floats, length-delimited strings, messages and packed doubles.
 */

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1; // Castagnoli, reflected
    table[i] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli) of `data`. crc32c("123456789") = 0xe3069283. */
export function crc32c(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = CRC32C_TABLE[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export function maskedCrc32c(data: Uint8Array): number {
  const crc = crc32c(data);
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, its masked CRC, the data, the data's masked CRC. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;

/** Builds one protobuf message, field by field, in the order they are written. */
export class ProtoWriter {
  private parts: number[] = [];

  private varint(value: number | bigint): void {
    let v = BigInt(value);
    if (v < 0n) v += 1n << 64n; // two's complement, as protobuf encodes negative int64
    do {
      const byte = Number(v & 0x7fn);
      v >>= 7n;
      this.parts.push(v ? byte | 0x80 : byte);
    } while (v);
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int64(field: number, value: number): this {
    this.key(field, WIRE_VARINT);
    this.varint(Math.trunc(value));
    return this;
  }

  double(field: number, value: number): this {
    this.key(field, WIRE_FIXED64);
    this.raw(float64Bytes([value]));
    return this;
  }

  float(field: number, value: number): this {
    this.key(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.raw(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.key(field, WIRE_BYTES);
    this.varint(value.length);
    this.raw(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  packedDoubles(field: number, values: readonly number[]): this {
    return this.bytes(field, float64Bytes(values));
  }

  private raw(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length; i++) this.parts.push(bytes[i]!);
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function float64Bytes(values: readonly number[]): Uint8Array {
  const b = new Uint8Array(8 * values.length);
  const view = new DataView(b.buffer);
  values.forEach((v, i) => view.setFloat64(8 * i, v, true));
  return b;
}
