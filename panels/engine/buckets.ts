/**
 * Routing over time in fixed time buckets (1 s by default): what each expert of every layer got
 * in each bucket, for the views that show time as an axis (3D activation map, heatmap over time,
 * per-layer small multiples). Filled from the cumulative snapshots as they arrive, so a bucket
 * is exactly the difference of the two snapshots at its ends: its counts, tokens, router health
 * and block time, and the passes and probe times it covers. Bounded: a ring of at most
 * `capacity` buckets, sized to a memory budget.
 */
import type { Snapshot } from './analyzer';
import { Ring } from './ring';

export interface Bucket {
  /** Consecutive from 1 for a job; views that keep buckets of their own ask for the ids after the last they have. */
  id: number;
  /** Probe times (s since the job's first snapshot) and cumulative passes at the bucket's ends: it holds passes (fromPass, toPass]. */
  t0: number;
  t1: number;
  fromPass: number;
  toPass: number;
  /** Assignments per (layer, expert) in the bucket, layer after layer (Analysis.offsets). Exact for whole counts below 2^24. */
  counts: Float32Array;
  /** Tokens through each layer; null when the snapshots did not say. */
  tokens: Float32Array | null;
  /** Router health sums per layer [layers x HEALTH_COLUMNS]; null when not measured. */
  health: Float32Array | null;
  /** Seconds inside each MoE block; null when not measured. */
  timeS: Float32Array | null;
}

export const BUCKET_SECONDS = 1;
const MAX_BUCKETS = 120;
const MIN_BUCKETS = 16;
/** Memory for one job's buckets (counts, 4 bytes each). */
const BUCKET_BUDGET = 32 * 1024 * 1024;

export class BucketHistory {
  readonly ring: Ring<Bucket>;
  private start: Snapshot | null = null;
  private nextId = 1;

  constructor(readonly total: number, readonly seconds = BUCKET_SECONDS) {
    this.ring = new Ring(Math.max(MIN_BUCKETS, Math.min(MAX_BUCKETS, Math.floor(BUCKET_BUDGET / Math.max(1, total * 4)))));
  }

  /** Take the next cumulative snapshot; closes a bucket once `seconds` have passed since the last boundary. */
  add(snap: Snapshot, t0: number): void {
    const start = this.start;
    if (!start || snap.passes < start.passes) {
      this.start = snap;
      return;
    }
    if (snap.ts - start.ts < this.seconds - 1e-6 || snap.passes === start.passes) return;
    const counts = new Float32Array(this.total);
    for (let i = 0; i < this.total; i++) counts[i] = snap.counts[i]! - start.counts[i]!;
    this.ring.push({
      id: this.nextId++, t0: start.ts - t0, t1: snap.ts - t0, fromPass: start.passes, toPass: snap.passes, counts,
      tokens: diff(snap.tokens, start.tokens), health: diff(snap.health, start.health), timeS: diff(snap.timeS, start.timeS),
    });
    this.start = snap;
  }

  /** Start over from the next snapshot (the panel's Clear). Ids keep increasing, so views drop what they held. */
  clear(): void {
    this.ring.clear();
    this.start = null;
  }

  /** Buckets with an id above `since`, oldest first. */
  after(since: number): Bucket[] {
    const out: Bucket[] = [];
    for (let i = 0; i < this.ring.size; i++) {
      const b = this.ring.at(i)!;
      if (b.id > since) out.push(b);
    }
    return out;
  }

  /** The id the next bucket will get: views holding buckets below `firstId` lost them to a clear. */
  get firstId(): number {
    return this.ring.at(0)?.id ?? this.nextId;
  }
}

function diff(a: Float64Array | null, b: Float64Array | null): Float32Array | null {
  if (!a || !b || a.length !== b.length) return null;
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! - b[i]!;
  return out;
}
