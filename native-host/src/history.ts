/**
 * The host's memory of what probes sent: one FIFO across all jobs, holding frames in
 * their compact binary form, with a fixed byte cap. When full, the oldest entries go
 * first and are counted; nothing grows without bound however fast a job runs.
 */
import type { ProbeCounts, ProbeTokens } from '../../src/protocol/probe';

export const DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024;
/** Per-entry bookkeeping on top of the payload bytes (object headers, fields). */
const ENTRY_OVERHEAD = 256;

export type HistoryEntry =
  | { pid: number; kind: 'counts'; ts: number; frame: ProbeCounts; bytes: number }
  | { pid: number; kind: 'tokens'; ts: number; frame: ProbeTokens; bytes: number };

function copy(bytes: Uint8Array): Uint8Array {
  // Decoded binary fields may be views into a large socket chunk: keeping a view would
  // keep the whole chunk alive and make the byte accounting a lie.
  return new Uint8Array(bytes);
}

function countsBytes(frame: ProbeCounts): number {
  return frame.counts.byteLength + frame.tokens.byteLength + (frame.health?.byteLength ?? 0) + (frame.max_logit?.byteLength ?? 0) +
    8 * (frame.time_s?.length ?? 0) + 8 * frame.widths.length;
}

function tokensBytes(frame: ProbeTokens): number {
  let n = (frame.token_ids?.byteLength ?? 0) + (frame.texts?.reduce((a, t) => a + 2 * t.length + 16, 0) ?? 0);
  for (const layer of frame.layers) n += layer.ids.byteLength + (layer.weights?.byteLength ?? 0) + 64;
  return n;
}

export class History {
  private entries: Array<HistoryEntry | undefined> = [];
  private head = 0;
  used = 0;
  evicted = 0;

  constructor(public capBytes: number = DEFAULT_HISTORY_BYTES) {}

  get size(): number {
    return this.entries.length - this.head;
  }

  addCounts(pid: number, frame: ProbeCounts): void {
    const stored: ProbeCounts = {
      ...frame,
      counts: copy(frame.counts),
      tokens: copy(frame.tokens),
      ...(frame.health ? { health: copy(frame.health) } : {}),
      ...(frame.max_logit ? { max_logit: copy(frame.max_logit) } : {}),
    };
    this.push({ pid, kind: 'counts', ts: frame.ts, frame: stored, bytes: countsBytes(frame) + ENTRY_OVERHEAD });
  }

  addTokens(pid: number, ts: number, frame: ProbeTokens): void {
    const stored: ProbeTokens = {
      ...frame,
      token_ids: frame.token_ids ? copy(frame.token_ids) : null,
      layers: frame.layers.map((l) => ({ ...l, ids: copy(l.ids), weights: l.weights ? copy(l.weights) : null })),
    };
    this.push({ pid, kind: 'tokens', ts, frame: stored, bytes: tokensBytes(frame) + ENTRY_OVERHEAD });
  }

  /** Entries of one job and kind with from <= ts <= to, oldest first. */
  query<K extends HistoryEntry['kind']>(pid: number, kind: K, from = -Infinity, to = Infinity): Array<Extract<HistoryEntry, { kind: K }>> {
    const out: Array<Extract<HistoryEntry, { kind: K }>> = [];
    for (let i = this.head; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.pid === pid && e.kind === kind && e.ts >= from && e.ts <= to) out.push(e as Extract<HistoryEntry, { kind: K }>);
    }
    return out;
  }

  setCap(bytes: number): void {
    this.capBytes = bytes;
    this.evict();
  }

  private push(entry: HistoryEntry) {
    if (entry.bytes > this.capBytes) {
      this.evicted += 1;
      return;
    }
    this.entries.push(entry);
    this.used += entry.bytes;
    this.evict();
  }

  private evict() {
    while (this.used > this.capBytes && this.head < this.entries.length) {
      this.used -= this.entries[this.head]!.bytes;
      this.entries[this.head] = undefined;
      this.head += 1;
      this.evicted += 1;
    }
    // Compact now and then so the array does not keep a long empty prefix.
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
  }
}
