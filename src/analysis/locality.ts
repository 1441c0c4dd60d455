/**
 * Temporal locality of routing: do consecutive tokens go to the same experts?
 * (Mixtral of Experts, Jiang et al. 2024, sec. 5, compares how often
 * consecutive tokens share their first-choice expert with the 1/E of random
 * assignment.)
 *
 * Tokens are in sequence order. `sequenceLength` splits the array into
 * back-to-back sequences (a flattened [B, S] batch: pass S) so that pairs
 * straddling two sequences are not counted; the last sequence may be shorter.
 * Omitted, the whole array is one sequence. A pair in which either token has a
 * negative (padding) id is not counted. With no pair counted the rate is NaN.
 */

function checkSeq(sequenceLength: number): void {
  if (!Number.isInteger(sequenceLength) || sequenceLength < 1) {
    throw new RangeError(`sequenceLength should be a whole number >= 1, got ${sequenceLength}`);
  }
}

/**
 * First-expert repeat rate: over consecutive pairs (t-1, t) within a sequence,
 *   #{pairs with top1[t] === top1[t-1]} / #pairs.
 * Compare with firstExpertRepeatBaseline(E) = 1/E.
 */
export function firstExpertRepeatRate(top1: ArrayLike<number>, sequenceLength: number = top1.length): number {
  const n = top1.length;
  if (n < 2) return NaN;
  checkSeq(sequenceLength);
  let pairs = 0;
  let same = 0;
  for (let t = 1; t < n; t++) {
    if (t % sequenceLength === 0) continue; // t starts a new sequence
    const a = top1[t - 1]!;
    const b = top1[t]!;
    if (a < 0 || b < 0) continue;
    pairs++;
    if (a === b) same++;
  }
  return pairs > 0 ? same / pairs : NaN;
}

/**
 * Expected first-expert repeat rate if every token's first choice were
 * independent and uniform over E experts: sum_i (1/E)^2 * E = 1/E.
 */
export function firstExpertRepeatBaseline(experts: number): number {
  return 1 / experts;
}

/**
 * Top-k overlap rate: over consecutive pairs (t-1, t) within a sequence (ids is
 * [N, k] row-major), the fraction whose top-k sets share at least one expert.
 * Compare with topKOverlapBaseline(E, k). A pair counts only if both rows have
 * at least one non-negative id; negative ids are ignored.
 */
export function topKOverlapRate(
  topkIds: ArrayLike<number>,
  n: number,
  k: number,
  sequenceLength: number = n,
): number {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k should be a whole number >= 1, got ${k}`);
  if (topkIds.length < n * k) throw new RangeError(`topKOverlapRate: ${topkIds.length} ids is fewer than N*k = ${n}x${k}`);
  if (n < 2) return NaN;
  checkSeq(sequenceLength);
  let pairs = 0;
  let overlap = 0;
  for (let t = 1; t < n; t++) {
    if (t % sequenceLength === 0) continue;
    const prev = (t - 1) * k;
    const cur = t * k;
    let prevAny = false;
    let curAny = false;
    let hit = false;
    for (let a = 0; a < k; a++) {
      const x = topkIds[cur + a]!;
      if (x < 0) continue;
      curAny = true;
      for (let b = 0; b < k; b++) {
        const y = topkIds[prev + b]!;
        if (y < 0) continue;
        prevAny = true;
        if (x === y) hit = true;
      }
    }
    if (!curAny || !prevAny) continue;
    pairs++;
    if (hit) overlap++;
  }
  return pairs > 0 ? overlap / pairs : NaN;
}

/**
 * Expected top-k overlap rate if each token's top-k set were an independent,
 * uniformly random k-subset of E experts:
 *   1 - C(E-k, k) / C(E, k) = 1 - prod_{i=0..k-1} (E-k-i) / (E-i),
 * and 1 when 2k > E (two k-subsets must then intersect). For k = 1 this is 1/E.
 */
export function topKOverlapBaseline(experts: number, k: number): number {
  if (2 * k > experts) return 1;
  let disjoint = 1;
  for (let i = 0; i < k; i++) disjoint *= (experts - k - i) / (experts - i);
  return 1 - disjoint;
}
