/**
 * Router collapse: the router sends (nearly) all tokens to the same few experts.
 */
import type { Counts } from './load';
import { normalizedLoadEntropy, topExperts, totalLoad } from './load';
import { DEFAULT_THRESHOLDS } from './thresholds';
import { windowTokens } from './window';

export interface CollapseOptions {
  /** Router top-k. Default 1. */
  topK?: number;
  /** Tokens in the window when known; default sum(counts) / topK. */
  tokens?: number;
  /** Least tokens in the window to judge. Default DEFAULT_THRESHOLDS.minTokens (1000). */
  minTokens?: number;
  /** Default DEFAULT_THRESHOLDS.collapseEntropy (0.5). */
  collapseEntropy?: number;
  /** Default DEFAULT_THRESHOLDS.collapseTopShare (0.9). */
  collapseTopShare?: number;
  /** Default DEFAULT_THRESHOLDS.collapseExpertTokenShare (0.9). */
  collapseExpertTokenShare?: number;
}

/** Above this top_k / E even routing puts each expert in so many tokens that one-expert dominance cannot be told apart. */
export const ONE_EXPERT_MAX_K_OVER_E = 0.45;

export interface CollapseVerdict {
  /** False when the layer could not be judged (see routerCollapse); collapsed is then false. */
  judged: boolean;
  collapsed: boolean;
  /** Which test fired; null when none did. */
  reason: 'entropy' | 'top_share' | 'both' | 'one_expert' | null;
  /** H / ln E of the loads (NaN when there are none). */
  normalizedEntropy: number;
  /** Share of assignments held by the k busiest experts (NaN when there are none). */
  topShare: number;
  /** The k busiest experts, busiest first (just the one expert when reason is 'one_expert'). */
  experts: number[];
  /** Share of tokens whose top-k includes the busiest expert: its count / tokens (NaN when there are none). */
  expertTokenShare: number;
}

/**
 * A layer has collapsed when, over a window of at least minTokens tokens,
 *   normalized load entropy H / ln E < collapseEntropy          (default 0.5), or
 *   (sum of the k largest counts) / (sum of counts) >= collapseTopShare (default 0.9),
 * where k is the router's top_k, or, when 1 < k and k / E <= 0.45 (for k = 1 the top share says it),
 *   (count of the busiest expert) / tokens >= collapseExpertTokenShare (default 0.9):
 *   one expert in the top-k of nearly every token while the other slots still vary
 *   (the entropy and top-k share tests miss this for k > 1).
 * Even routing gives entropy 1, top share k/E and expert token share k/E;
 * all tokens going to the same k experts gives top share 1 and entropy ln k / ln E.
 *
 * Not judged (judged: false, collapsed: false) when the window has fewer than
 * minTokens tokens, no assignments at all, or k >= E (every expert is always
 * chosen, so there is nothing to collapse).
 */
export function routerCollapse(counts: Counts, options: CollapseOptions = {}): CollapseVerdict {
  const e = counts.length;
  const topK = Math.max(1, options.topK ?? 1);
  const tokens = windowTokens(counts, topK, options.tokens);
  const minTokens = options.minTokens ?? DEFAULT_THRESHOLDS.minTokens;
  const entropyBelow = options.collapseEntropy ?? DEFAULT_THRESHOLDS.collapseEntropy;
  const shareAtLeast = options.collapseTopShare ?? DEFAULT_THRESHOLDS.collapseTopShare;
  const total = totalLoad(counts);
  const experts = topExperts(counts, topK);
  let top = 0;
  for (const i of experts) top += counts[i]!;
  const verdict: CollapseVerdict = {
    judged: false,
    collapsed: false,
    reason: null,
    normalizedEntropy: normalizedLoadEntropy(counts),
    topShare: total > 0 ? top / total : NaN,
    experts,
    expertTokenShare: total > 0 && tokens > 0 ? counts[experts[0]!]! / tokens : NaN,
  };
  if (total <= 0 || topK >= e || !(tokens >= minTokens)) return verdict;
  verdict.judged = true;
  const byEntropy = verdict.normalizedEntropy < entropyBelow;
  const byShare = verdict.topShare >= shareAtLeast;
  const byOneExpert = topK > 1 && topK / e <= ONE_EXPERT_MAX_K_OVER_E && verdict.expertTokenShare >= (options.collapseExpertTokenShare ?? DEFAULT_THRESHOLDS.collapseExpertTokenShare);
  verdict.collapsed = byEntropy || byShare || byOneExpert;
  verdict.reason = byEntropy && byShare ? 'both' : byEntropy ? 'entropy' : byShare ? 'top_share' : byOneExpert ? 'one_expert' : null;
  if (verdict.reason === 'one_expert') verdict.experts = experts.slice(0, 1);
  return verdict;
}
