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
