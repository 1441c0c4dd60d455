// The browser's side of native messaging, for benchmarks that drive the built host directly:
// frames read from the host's stdout as Chrome reads them (4-byte little-endian length + JSON),
// requests written the same way, and the host's CPU time and memory from /proc.
import * as fs from 'node:fs';

const nowMs = () => performance.timeOrigin + performance.now();

export class NativeFrames {
  constructor(stream) {
    this.items = [];
    this.bytes = 0;
    let chunks = [];
    let buffered = 0;
    stream.on('data', (chunk) => {
      const at = nowMs();
      chunks.push(chunk);
      buffered += chunk.length;
      if (buffered < 4) return;
      const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
      let off = 0;
      while (buf.length - off >= 4) {
        const len = buf.readUInt32LE(off);
        if (buf.length - off < 4 + len) break;
        const msg = JSON.parse(buf.toString('utf8', off + 4, off + 4 + len));
        msg._at = at;
        this.bytes += 4 + len;
        off += 4 + len;
        this.items.push(msg);
      }
      const rest = buf.subarray(off);
      chunks = rest.length ? [rest] : [];
      buffered = rest.length;
    });
  }

  /** The first message from index `from` on that matches, waiting up to ms. */
  async wait(pred, ms, what, from = 0) {
    const end = Date.now() + ms;
    for (;;) {
      const m = this.items.slice(from).find(pred);
      if (m) return m;
      if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export function sendNative(child, message) {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  child.stdin.write(Buffer.concat([head, body]));
}

/** RSS and CPU seconds (all threads: user + system) of a process, from /proc. */
export function readProc(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { rssBytes: rssKb * 1024, cpuS: (Number(fields[11]) + Number(fields[12])) / 100 };
  } catch {
    return null;
  }
}

export { nowMs };
