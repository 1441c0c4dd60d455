/**
 * Chrome native messaging framing on stdio: a 4-byte little-endian length, then
 * UTF-8 JSON. Chrome drops the connection if a host->browser message exceeds
 * 1 MiB, so the writer refuses such messages instead of sending them.
 */
import { MAX_HOST_MESSAGE_BYTES } from '../../src/protocol/panel';

/** Browser -> host messages may be up to 64 MiB; more means the stream is not what we think. */
export const MAX_INBOUND_BYTES = 64 * 1024 * 1024;

export class NativeMessageReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Feed stdin bytes; returns the complete messages (parsed JSON, or an Error per bad message). */
  feed(chunk: Buffer): Array<unknown> {
    // Chunks are collected in a list and joined only when a message is complete:
    // concatenating on every 'data' event would be quadratic for large messages.
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.buffered < 4) return out;
      const head = this.peek(4);
      const length = head.readUInt32LE(0);
      if (length > MAX_INBOUND_BYTES) throw new Error(`browser message declares ${length} bytes, over the 64 MiB limit`);
      if (this.buffered < 4 + length) return out;
      const all = Buffer.concat(this.chunks, this.buffered);
      const body = all.subarray(4, 4 + length);
      const rest = all.subarray(4 + length);
      this.chunks = rest.length ? [Buffer.from(rest)] : [];
      this.buffered = rest.length;
      try {
        out.push(JSON.parse(body.toString('utf8')));
      } catch (err) {
        out.push(new Error(`message is not valid JSON: ${(err as Error).message}`));
      }
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    return Buffer.concat(this.chunks).subarray(0, n);
  }
}

export function encodeNativeMessage(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length > MAX_HOST_MESSAGE_BYTES) {
    throw new RangeError(`message of ${body.length} bytes is over Chrome's 1 MiB limit`);
  }
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  return Buffer.concat([head, body]);
}
