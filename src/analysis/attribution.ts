/**
 * Reading an explanation of a routing decision: per-position attributions (gradient x input or
 * integrated gradients) of a router's score, or of its routing probability, to the input tokens.
 *
 * - Integrated gradients satisfy completeness: summed over positions they equal f(x) - f(b), the
 *   change of the target from the baseline to the input. The error of that sum says how well the
 *   steps integrated the path, and also where the target jumps along it (an earlier layer's top-k
 *   choice switching), which no number of steps can integrate.
 * - Gradient x input is the first-order picture at the input itself: cheap, no baseline, no
 *   completeness (its sum is not f(x) - f(0) unless the target is linear).
 */

export type AttributionMethod = 'ig' | 'gxi';
export type AttributionTarget = 'logit' | 'prob';

export interface Completeness {
  /** Sum of the attributions over positions. */
  sum: number;
  /** f(x) - f(baseline). */
  delta: number;
  /** |sum - delta|. */
  absoluteError: number;
  /** |sum - delta| / |delta|; NaN when delta is 0. */
  relativeError: number;
}

export function completeness(values: readonly number[], fx: number, fb: number): Completeness {
  let sum = 0;
  for (const v of values) sum += v;
  const delta = fx - fb;
  const absoluteError = Math.abs(sum - delta);
  return { sum, delta, absoluteError, relativeError: delta !== 0 ? absoluteError / Math.abs(delta) : NaN };
}

export interface Contribution {
  position: number;
  value: number;
  /** value / sum of |values|: this position's part of all the attribution, with its sign. */
  share: number;
}

/** The `count` positions with the largest |attribution| (ties: the earlier position first). */
export function topContributions(values: readonly number[], count: number): Contribution[] {
  let total = 0;
  for (const v of values) total += Math.abs(v);
  const order = values.map((_, i) => i).sort((a, b) => Math.abs(values[b]!) - Math.abs(values[a]!) || a - b);
  return order.slice(0, Math.max(0, count)).map((position) => ({
    position, value: values[position]!, share: total > 0 ? values[position]! / total : 0,
  }));
}

/** Each value over the largest |value|, in [-1, 1] (all 0 when every value is 0): how strongly to shade a token. */
export function attributionShades(values: readonly number[]): number[] {
  let max = 0;
  for (const v of values) max = Math.max(max, Math.abs(v));
  return values.map((v) => (max > 0 ? v / max : 0));
}
