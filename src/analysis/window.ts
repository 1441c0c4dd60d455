/**
 * How big a window of counts is, and whether it is big enough to judge.
 */
import type { Counts } from './load';
import { totalLoad } from './load';

/**
 * Tokens routed through a layer in the window. `tokens` when the caller knows
 * it; otherwise sum(counts) / topK, since each token makes topK assignments.
 * With topK omitted (1), the counts are taken to be one per token.
 */
export function windowTokens(counts: Counts, topK = 1, tokens?: number): number {
  if (tokens !== undefined) return tokens;
  return totalLoad(counts) / Math.max(1, topK);
}

/**
 * Smallest window, in tokens, for which per-expert verdicts (dead, imbalanced)
 * are given for a layer of E experts with top-k routing:
 *   max(minTokens, ceil(minExpectedPerExpert * E / k)),
 * i.e. at least minTokens tokens AND at least minExpectedPerExpert expected
 * assignments per expert under even routing (tokens * k / E).
 */
export function smallestJudgeableWindow(
  experts: number,
  topK: number,
  minTokens: number,
  minExpectedPerExpert: number,
): number {
  return Math.max(minTokens, Math.ceil((minExpectedPerExpert * experts) / Math.max(1, topK)));
}

/**
 * Window between two cumulative snapshots: out[i] = now[i] - then[i] for
 * i < now.length (`then` absent: a copy of `now`, i.e. the window since attach).
 * Works for counts ([layers x experts]) and health blocks alike. If any value
 * went down, the counters were restarted after `then`, and the window is taken
 * to be `now` itself (everything since the restart). Pass `out` to reuse a buffer.
 */
export function windowDelta(
  now: ArrayLike<number>,
  then?: ArrayLike<number>,
  out: Float64Array = new Float64Array(now.length),
): Float64Array {
  const n = now.length;
  if (out.length < n) throw new RangeError(`windowDelta: out holds ${out.length} values, need ${n}`);
  if (then && then.length !== n) throw new RangeError(`windowDelta: snapshots differ in size (${n} vs ${then.length})`);
  let restarted = !then;
  for (let i = 0; i < n; i++) {
    const d = then ? now[i]! - then[i]! : now[i]!;
    if (d < 0) restarted = true;
    out[i] = d;
  }
  if (restarted) for (let i = 0; i < n; i++) out[i] = now[i]!;
  return out;
}
