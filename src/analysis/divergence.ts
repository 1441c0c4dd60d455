/**
 * How far apart two expert-load distributions of one layer are.
 *
 * Inputs are assignment counts per expert (any non-negative numbers, as in load.ts); each is
 * normalized to a distribution first, so two windows of different lengths compare fairly.
 */
import type { Counts } from './load';

/**
 * Jensen-Shannon divergence of the distributions of two count vectors, in bits:
 * JS(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M), M = (P + Q) / 2, with log base 2, so that it lies
 * in [0, 1]: 0 for identical distributions, 1 for distributions with no expert in common.
 * Symmetric, and finite even where one side has an expert the other never used (unlike KL).
 * NaN when the vectors differ in length or either sums to 0 (nothing to compare).
 */
export function jsDivergence(a: Counts, b: Counts): number {
  const e = a.length;
  if (e !== b.length || e === 0) return NaN;
  let ta = 0;
  let tb = 0;
  for (let i = 0; i < e; i++) {
    ta += a[i]!;
    tb += b[i]!;
  }
  if (!(ta > 0) || !(tb > 0)) return NaN;
  let js = 0;
  for (let i = 0; i < e; i++) {
    const p = a[i]! / ta;
    const q = b[i]! / tb;
    const m = (p + q) / 2;
    if (p > 0) js += p * Math.log2(p / m);
    if (q > 0) js += q * Math.log2(q / m);
  }
  // Rounding can leave a tiny negative value for identical inputs.
  return Math.min(1, Math.max(0, js / 2));
}

/** One expert's share of a layer's assignments in two windows. */
export interface ShareChange {
  expert: number;
  shareA: number;
  shareB: number;
  /** shareB - shareA (a share of 1 is every assignment). */
  change: number;
}

/**
 * The `n` experts whose share of the layer's assignments changed most between a and b, largest
 * absolute change first (ties: lower expert id first). Empty when either side has no assignments.
 */
export function shareChanges(a: Counts, b: Counts, n: number): ShareChange[] {
  const e = Math.min(a.length, b.length);
  let ta = 0;
  let tb = 0;
  for (let i = 0; i < e; i++) {
    ta += a[i]!;
    tb += b[i]!;
  }
  if (!(ta > 0) || !(tb > 0)) return [];
  const all: ShareChange[] = [];
  for (let i = 0; i < e; i++) {
    const shareA = a[i]! / ta;
    const shareB = b[i]! / tb;
    all.push({ expert: i, shareA, shareB, change: shareB - shareA });
  }
  all.sort((x, y) => Math.abs(y.change) - Math.abs(x.change) || x.expert - y.expert);
  return all.slice(0, Math.max(0, n));
}
