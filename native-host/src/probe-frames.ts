/** Decoding the probe's length-prefixed MessagePack frames from its socket stream. */
import { Unpackr } from 'msgpackr';
import { MAX_PROBE_FRAME_BYTES, ProtocolError, parseProbeFrame, type ProbeFrame } from '../../src/protocol/probe';

// Plain maps to plain objects; bin stays a Uint8Array (Buffer in Node).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export function decodeProbeFrameBody(body: Uint8Array): ProbeFrame {
  let value: unknown;
  try {
    value = unpackr.unpack(body);
  } catch (err) {
    throw new ProtocolError(`frame is not valid MessagePack: ${(err as Error).message}`);
  }
  return parseProbeFrame(value);
}

export class ProbeFrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Feed socket bytes; returns complete frames. Throws ProtocolError on a bad frame: the stream is then unusable. */
  feed(chunk: Buffer): ProbeFrame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: ProbeFrame[] = [];
    while (this.buffered >= 4) {
      if (this.chunks[0].length < 4) this.compact();
      const length = this.chunks[0].readUInt32LE(0);
      if (length > MAX_PROBE_FRAME_BYTES) throw new ProtocolError(`frame declares ${length} bytes, over the ${MAX_PROBE_FRAME_BYTES} byte limit`);
      if (this.buffered < 4 + length) break;
      this.compact();
      const all = this.chunks[0];
      frames.push(decodeProbeFrameBody(all.subarray(4, 4 + length)));
      const rest = all.subarray(4 + length);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
    }
    return frames;
  }

  private compact() {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
  }
}

export function encodeFrameHeader(length: number): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(length, 0);
  return head;
}
