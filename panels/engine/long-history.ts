/**
 * A job's cumulative snapshots over its whole session, thinned to a memory budget, for comparing
 * a window now with a window of the same job long ago ("what changed since 10 minutes ago").
 * The analyzer's own history keeps every 0.2 s but only as far back as its budget reaches (under a
 * minute for 64 layers x 512 experts); this one keeps a snapshot every `spacing` seconds and,
 * when full, drops every other one and doubles the spacing, so it always reaches back to the
 * first snapshot, at a resolution that coarsens as the session grows.
 */
import type { Snapshot } from './analyzer';

/** Bytes of counts this history may hold per job. */
const LONG_BUDGET = 32 * 1024 * 1024;
const MAX_SNAPSHOTS = 2048;
const MIN_SNAPSHOTS = 16;

export class LongHistory {
  private snaps: Snapshot[] = [];
  readonly capacity: number;

  constructor(total: number, public spacing = 1) {
    this.capacity = Math.max(MIN_SNAPSHOTS, Math.min(MAX_SNAPSHOTS, Math.floor(LONG_BUDGET / Math.max(1, total * 8))));
  }

  add(snap: Snapshot): void {
    const last = this.snaps[this.snaps.length - 1];
    if (last && snap.passes < last.passes) this.snaps = []; // counters restarted: a new attach
    else if (last && snap.ts - last.ts < this.spacing - 1e-9) return;
    this.snaps.push(snap);
    if (this.snaps.length > this.capacity) {
      // Keep the first, then every other one, and the newest.
      const kept = this.snaps.filter((_, i) => i % 2 === 0);
      if (kept[kept.length - 1] !== snap) kept.push(snap);
      this.snaps = kept;
      this.spacing *= 2;
    }
  }

  clear(): void {
    this.snaps = [];
  }

  get size(): number {
    return this.snaps.length;
  }

  /** The snapshots held, oldest first. */
  all(): readonly Snapshot[] {
    return this.snaps;
  }
}

/**
 * Among `candidates` (any order), the snapshot whose time is closest to `ts` (ties: the earlier).
 * Null when there are none.
 */
export function closestSnapshot(candidates: Iterable<Snapshot>, ts: number): Snapshot | null {
  let best: Snapshot | null = null;
  for (const s of candidates) {
    if (!best) best = s;
    else {
      const d = Math.abs(s.ts - ts);
      const bd = Math.abs(best.ts - ts);
      if (d < bd || (d === bd && s.ts < best.ts)) best = s;
    }
  }
  return best;
}
