/**
 * Dead experts: experts the router never picks.
 */
import type { Counts } from './load';
import { DEFAULT_THRESHOLDS } from './thresholds';
import { smallestJudgeableWindow, windowTokens } from './window';

export interface DeadExpertOptions {
  /** Router top-k, to turn assignments into tokens. Default 1. */
  topK?: number;
  /** Tokens in the window when known; default sum(counts) / topK. */
  tokens?: number;
  /** Least tokens in the window to judge at all. Default DEFAULT_THRESHOLDS.minTokens (1000). */
  minTokens?: number;
  /** Least expected assignments per expert (tokens * k / E) to judge. Default DEFAULT_THRESHOLDS.minExpectedPerExpert (50). */
  minExpectedPerExpert?: number;
}

/**
 * Indices (ascending) of the experts with a count of exactly 0 over the window,
 * given that the window is big enough to judge:
 *   tokens >= max(minTokens, ceil(minExpectedPerExpert * E / k)).
 * Returns [] when the window is smaller than that (too few tokens to tell a
 * dead expert from an unlucky one), when E = 0, and when no expert is at 0.
 * Pass minExpectedPerExpert: 0 to judge on minTokens alone.
 */
export function deadExperts(counts: Counts, options: DeadExpertOptions = {}): number[] {
  const e = counts.length;
  const topK = options.topK ?? 1;
  const tokens = windowTokens(counts, topK, options.tokens);
  const need = smallestJudgeableWindow(
    e,
    topK,
    options.minTokens ?? DEFAULT_THRESHOLDS.minTokens,
    options.minExpectedPerExpert ?? DEFAULT_THRESHOLDS.minExpectedPerExpert,
  );
  const dead: number[] = [];
  if (e === 0 || !(tokens >= need) || tokens <= 0) return dead;
  for (let i = 0; i < e; i++) if (counts[i] === 0) dead.push(i);
  return dead;
}
