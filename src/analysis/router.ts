/**
 * Statistics of the router's raw logits for a batch of tokens.
 *
 * Input: `logits`, an [N, E] row-major array (N tokens, E experts; a flat
 * Float32Array as it comes off the wire, or any ArrayLike<number>), so the
 * logit of token t for expert i is logits[t * E + i]. Probabilities are
 * p_t = softmax(logits_t), computed stably (the row max is subtracted first).
 *
 * Tokens whose logit row holds any NaN or +-Inf are left out of every
 * statistic (their softmax is undefined) and counted in nonFiniteTokens; the
 * NaN and Inf values themselves are counted in nanCount / infCount. "N" in the
 * formulas below is the number of tokens kept. With no token kept every
 * statistic is NaN.
 */
import { makeScratchF64 } from './scratch';

export interface RouterLogitStats {
  /** Tokens kept (finite logits): the N of the formulas. */
  tokens: number;
  /** Tokens left out because their logit row held a NaN or an Inf. */
  nonFiniteTokens: number;
  /** NaN logits seen (all rows). */
  nanCount: number;
  /** +-Inf logits seen (all rows). */
  infCount: number;
  /** Mean per-token softmax entropy, nats: (1/N) sum_t -sum_i p_ti ln p_ti. In [0, ln E]. */
  meanEntropy: number;
  /** meanEntropy / ln E, in [0, 1]; 1 when E = 1 (single expert, see load.ts). */
  normalizedEntropy: number;
  /** ST-MoE router z-loss: (1/N) sum_t (logsumexp_i logits_ti)^2. */
  zLoss: number;
  /**
   * Switch Transformer load-balancing loss E * sum_i f_i * P_i, where
   * f_i = fraction of the N tokens whose top-1 (argmax; ties to the lower index) is expert i and
   * P_i = (1/N) sum_t p_ti, the mean router probability of expert i.
   * 1 under perfectly even routing; up to E when everything goes to one expert.
   */
  switchLoss: number;
}

const rowScratch = makeScratchF64();
const accScratch = makeScratchF64();

function checkShape(logits: ArrayLike<number>, n: number, e: number): void {
  if (!Number.isInteger(n) || n < 0 || !Number.isInteger(e) || e < 1) {
    throw new RangeError(`router logits: need whole N >= 0 and E >= 1, got N=${n} E=${e}`);
  }
  if (logits.length < n * e) {
    throw new RangeError(`router logits: ${logits.length} values is fewer than N*E = ${n}x${e}`);
  }
}

/** All router-logit statistics of an [N, E] batch in one pass (definitions on RouterLogitStats). */
export function routerLogitStats(logits: ArrayLike<number>, n: number, e: number): RouterLogitStats {
  checkShape(logits, n, e);
  const row = rowScratch(e);
  // acc[0..e): top-1 counts f_i * N;  acc[e..2e): summed probabilities P_i * N.
  const acc = accScratch(2 * e);
  acc.fill(0, 0, 2 * e);
  let kept = 0;
  let skipped = 0;
  let nan = 0;
  let inf = 0;
  let entropySum = 0;
  let zSum = 0;
  for (let t = 0; t < n; t++) {
    const base = t * e;
    let max = -Infinity;
    let argmax = 0;
    let bad = false;
    for (let i = 0; i < e; i++) {
      const l = logits[base + i]!;
      if (l !== l) {
        nan++;
        bad = true;
      } else if (l === Infinity || l === -Infinity) {
        inf++;
        bad = true;
      } else if (l > max) {
        max = l;
        argmax = i;
      }
    }
    if (bad) {
      skipped++;
      continue;
    }
    // s = sum exp(l - max);  w = sum exp(l - max) * (l - max)
    // H = lse - sum p l = ln s - w / s ;  lse = max + ln s
    let s = 0;
    let w = 0;
    for (let i = 0; i < e; i++) {
      const d = logits[base + i]! - max;
      const x = Math.exp(d);
      row[i] = x;
      s += x;
      w += x * d;
    }
    const lnS = Math.log(s);
    const h = lnS - w / s;
    entropySum += h > 0 ? h : 0;
    const lse = max + lnS;
    zSum += lse * lse;
    acc[argmax] += 1;
    const inv = 1 / s;
    for (let i = 0; i < e; i++) acc[e + i] += row[i]! * inv;
    kept++;
  }
  const out: RouterLogitStats = {
    tokens: kept,
    nonFiniteTokens: skipped,
    nanCount: nan,
    infCount: inf,
    meanEntropy: NaN,
    normalizedEntropy: NaN,
    zLoss: NaN,
    switchLoss: NaN,
  };
  if (kept === 0) return out;
  out.meanEntropy = entropySum / kept;
  out.normalizedEntropy = e === 1 ? 1 : out.meanEntropy / Math.log(e);
  out.zLoss = zSum / kept;
  let fp = 0;
  for (let i = 0; i < e; i++) fp += acc[i]! * acc[e + i]!;
  out.switchLoss = (e * fp) / (kept * kept);
  return out;
}

/**
 * Mean per-token router entropy: (1/N) sum_t H(softmax(logits_t)), in nats, and
 * normalized by ln E. Non-finite rows are left out; NaN when no row is kept.
 */
export function routerEntropy(logits: ArrayLike<number>, n: number, e: number): { mean: number; normalized: number } {
  const s = routerLogitStats(logits, n, e);
  return { mean: s.meanEntropy, normalized: s.normalizedEntropy };
}

/** ST-MoE router z-loss: (1/N) sum_t (logsumexp(logits_t))^2. Non-finite rows are left out; NaN when none kept. */
export function routerZLoss(logits: ArrayLike<number>, n: number, e: number): number {
  return routerLogitStats(logits, n, e).zLoss;
}

/**
 * Switch Transformer load-balancing loss E * sum_i f_i P_i (f_i: fraction of
 * tokens whose argmax is i; P_i: mean router probability of i). Non-finite rows
 * are left out; NaN when none kept.
 */
export function switchLoadBalancingLoss(logits: ArrayLike<number>, n: number, e: number): number {
  return routerLogitStats(logits, n, e).switchLoss;
}
