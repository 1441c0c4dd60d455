/**
 * How one layer's routing changed between two windows of the same job ("what changed since
 * 10 minutes ago"): pure functions over the per-expert counts of the two windows.
 *
 * Input: `before` and `after`, one layer's per-expert assignment counts over each window
 * (same length E). Shares are p_i = before_i / sum(before), q_i = after_i / sum(after).
 */
import type { Counts } from './load';
import { maxVio, normalizedLoadEntropy, totalLoad } from './load';

export interface LoadShift {
  /** Total variation distance between the two load distributions: (1/2) sum_i |q_i - p_i|, in [0, 1]; NaN when a window is empty. */
  totalVariation: number;
  normalizedEntropyBefore: number;
  normalizedEntropyAfter: number;
  maxVioBefore: number;
  maxVioAfter: number;
  /** The experts whose share moved most, largest |q_i - p_i| first (ties: lower index), at most `top`. */
  largest: Array<{ expert: number; before: number; after: number }>;
}

/** Total variation distance between the normalized loads of two windows; NaN when either is empty. */
export function totalVariation(before: Counts, after: Counts): number {
  if (before.length !== after.length) throw new RangeError(`totalVariation: ${before.length} vs ${after.length} experts`);
  const a = totalLoad(before);
  const b = totalLoad(after);
  if (!(a > 0) || !(b > 0)) return NaN;
  let s = 0;
  for (let i = 0; i < before.length; i++) s += Math.abs(after[i]! / b - before[i]! / a);
  return s / 2;
}

/** Every figure of LoadShift for one layer. */
export function loadShift(before: Counts, after: Counts, top = 5): LoadShift {
  const a = totalLoad(before);
  const b = totalLoad(after);
  const moved: Array<{ expert: number; before: number; after: number }> = [];
  if (a > 0 && b > 0) {
    for (let i = 0; i < before.length; i++) moved.push({ expert: i, before: before[i]! / a, after: after[i]! / b });
    moved.sort((x, y) => Math.abs(y.after - y.before) - Math.abs(x.after - x.before) || x.expert - y.expert);
  }
  return {
    totalVariation: totalVariation(before, after),
    normalizedEntropyBefore: normalizedLoadEntropy(before),
    normalizedEntropyAfter: normalizedLoadEntropy(after),
    maxVioBefore: maxVio(before),
    maxVioAfter: maxVio(after),
    largest: moved.slice(0, Math.max(0, top)),
  };
}
