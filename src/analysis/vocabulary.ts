/**
 * Vocabulary specialization: do occurrences of the same token id go to the same expert?
 */

export interface TokenSpecialization {
  tokenId: number;
  /** Occurrences n_v of the token id. */
  count: number;
  /** The expert this id was routed to most often (ties: the lower expert id). */
  topExpert: number;
  /** m_v / n_v: share of its occurrences routed to topExpert. */
  share: number;
}

export interface VocabularySpecialization {
  /** Every token id seen, whether or not it has minOccurrences. */
  perToken: Map<number, TokenSpecialization>;
  /**
   * sum_v n_v * share_v / sum_v n_v = sum_v m_v / sum_v n_v over token ids with
   * n_v >= minOccurrences: the share of those ids' occurrences routed to their
   * id's most frequent expert. NaN when no id has minOccurrences.
   */
  weightedShare: number;
  /** Token ids with n_v >= minOccurrences. */
  idsConsidered: number;
  /** sum of n_v over those ids. */
  tokensConsidered: number;
}

/**
 * Vocabulary specialization of one layer. Input: `tokenIds[t]` and
 * `top1[t]`, the vocabulary id of token t and the expert it was routed to
 * first (top-1), over the same N tokens. Pairs with a negative expert id are
 * skipped. minOccurrences (M) defaults to 10.
 *
 * Per token id v with n_v occurrences, m_v = max_e #{t : tokenIds[t] = v, top1[t] = e}
 * and share_v = m_v / n_v. The summary is the occurrence-weighted mean of
 * share_v over ids with n_v >= M (see weightedShare). 1 means every id always
 * goes to one expert. Note that an id seen only a few times has a high share
 * by chance (n_v = 1 gives 1), which is why M exists; under uniform random
 * routing the expectation is about 1/E only when n_v >> E.
 */
export function vocabularySpecialization(
  tokenIds: ArrayLike<number>,
  top1: ArrayLike<number>,
  minOccurrences = 10,
): VocabularySpecialization {
  if (tokenIds.length !== top1.length) {
    throw new RangeError(`vocabularySpecialization: ${tokenIds.length} token ids but ${top1.length} expert ids`);
  }
  const byId = new Map<number, Map<number, number>>();
  for (let t = 0; t < tokenIds.length; t++) {
    const expert = top1[t]!;
    if (expert < 0) continue;
    const v = tokenIds[t]!;
    let experts = byId.get(v);
    if (!experts) {
      experts = new Map();
      byId.set(v, experts);
    }
    experts.set(expert, (experts.get(expert) ?? 0) + 1);
  }
  const perToken = new Map<number, TokenSpecialization>();
  let ids = 0;
  let tokens = 0;
  let topSum = 0;
  for (const [v, experts] of byId) {
    let n = 0;
    let best = -1;
    let bestCount = 0;
    for (const [expert, c] of experts) {
      n += c;
      if (c > bestCount || (c === bestCount && expert < best)) {
        best = expert;
        bestCount = c;
      }
    }
    perToken.set(v, { tokenId: v, count: n, topExpert: best, share: bestCount / n });
    if (n >= minOccurrences) {
      ids++;
      tokens += n;
      topSum += bestCount;
    }
  }
  return { perToken, weightedShare: tokens > 0 ? topSum / tokens : NaN, idsConsidered: ids, tokensConsidered: tokens };
}
