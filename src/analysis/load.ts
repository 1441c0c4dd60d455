/**
 * Load-balance statistics of one MoE layer.
 *
 * Input everywhere: `counts`, the number of token-to-expert assignments each
 * expert of ONE layer received over some window, indexed by expert
 * (`counts[i]` for expert i, E = counts.length). With top-k routing each token
 * makes k assignments, so the counts sum to k x tokens. Counts must be finite
 * and non-negative; they need not be integers. Any ArrayLike works (number[],
 * Float64Array, a `subarray` view of a [layers x experts] buffer, ...).
 *
 * Edge cases, the same for every function here unless its comment says
 * otherwise: with no experts (E = 0) or no assignments (sum = 0) the load
 * distribution is undefined and the function returns NaN, so that "no data"
 * is never mistaken for "perfectly balanced". Callers test with Number.isNaN.
 *
 * All functions are O(E) and allocate nothing, except gini (sorts a copy in a
 * reused scratch buffer, O(E log E)) and topExperts (returns a k-long array).
 */
import { makeScratchF64, makeScratchI32 } from './scratch';

export type Counts = ArrayLike<number>;

/** T = sum_i counts[i]: total assignments in the window (k x tokens for top-k). */
export function totalLoad(counts: Counts): number {
  let t = 0;
  for (let i = 0; i < counts.length; i++) t += counts[i]!;
  return t;
}

/**
 * Coefficient of variation of the loads: CV = std / mean, with the POPULATION
 * standard deviation std = sqrt((1/E) sum_i (c_i - mean)^2) and mean = T/E.
 * 0 for perfectly even loads; sqrt(E-1) when one expert takes everything.
 * NaN when E = 0 or T = 0.
 */
export function loadCV(counts: Counts): number {
  const e = counts.length;
  const t = totalLoad(counts);
  if (e === 0 || t <= 0) return NaN;
  const mean = t / e;
  let ss = 0;
  for (let i = 0; i < e; i++) {
    const d = counts[i]! - mean;
    ss += d * d;
  }
  return Math.sqrt(ss / e) / mean;
}

/**
 * Maximal violation (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing"):
 * MaxVio = (max_i c_i - mean) / mean, mean = T/E. 0 for even loads, E-1 when one
 * expert takes everything; 1.0 means the busiest expert has twice its fair share.
 * NaN when E = 0 or T = 0.
 */
export function maxVio(counts: Counts): number {
  const { total, max } = totalAndMax(counts);
  if (counts.length === 0 || total <= 0) return NaN;
  const mean = total / counts.length;
  return (max - mean) / mean;
}

/**
 * Balancedness, as SGLang's expert-distribution recorder reports it:
 * mean / max = (T/E) / max_i c_i. In (0, 1]; 1 when even, 1/E when one expert
 * takes everything. Equals 1 / (1 + MaxVio). NaN when E = 0 or T = 0.
 */
export function balancedness(counts: Counts): number {
  const { total, max } = totalAndMax(counts);
  if (counts.length === 0 || total <= 0) return NaN;
  return total / counts.length / max;
}

/** Sum and largest value of the loads, in one pass. */
function totalAndMax(counts: Counts): { total: number; max: number } {
  let total = 0;
  let max = -Infinity;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i]!;
    total += c;
    if (c > max) max = c;
  }
  return { total, max };
}

const giniScratch = makeScratchF64();

/**
 * Gini coefficient of the loads. With the loads sorted ascending x_(1) <= ... <= x_(E):
 *   G = 2 * sum_{r=1..E} r * x_(r) / (E * T) - (E + 1) / E,
 * which equals the mean absolute difference over all ordered pairs divided by
 * twice the mean: sum_{i,j} |c_i - c_j| / (2 E^2 mean).
 * 0 for even loads; (E-1)/E (its maximum, not 1) when one expert takes everything.
 * NaN when E = 0 or T = 0. Does not modify `counts` (sorts a scratch copy).
 */
export function gini(counts: Counts): number {
  const e = counts.length;
  if (e === 0) return NaN;
  const buf = giniScratch(e);
  let t = 0;
  for (let i = 0; i < e; i++) {
    buf[i] = counts[i]!;
    t += counts[i]!;
  }
  if (t <= 0) return NaN;
  const sorted = buf.subarray(0, e).sort();
  let weighted = 0;
  for (let r = 0; r < e; r++) weighted += (r + 1) * sorted[r]!;
  return (2 * weighted) / (e * t) - (e + 1) / e;
}

/**
 * Shannon entropy, in nats, of the load distribution p_i = c_i / T:
 *   H = -sum_i p_i ln p_i  (terms with p_i = 0 count as 0),
 * computed as ln T - (1/T) sum_i c_i ln c_i. In [0, ln E]. NaN when E = 0 or T = 0.
 */
export function loadEntropy(counts: Counts): number {
  const e = counts.length;
  let t = 0;
  let s = 0;
  for (let i = 0; i < e; i++) {
    const c = counts[i]!;
    if (c > 0) {
      t += c;
      s += c * Math.log(c);
    }
  }
  if (e === 0 || t <= 0) return NaN;
  const h = Math.log(t) - s / t;
  return h > 0 ? h : 0; // clamp rounding noise below zero
}

/**
 * Normalized load entropy H / ln E, in [0, 1]: 1 when loads are even, 0 when one
 * expert takes everything. With a single expert (E = 1) ln E = 0; the one
 * possible distribution is both even and concentrated, and we return 1.
 * NaN when E = 0 or T = 0.
 */
export function normalizedLoadEntropy(counts: Counts): number {
  const h = loadEntropy(counts);
  if (Number.isNaN(h)) return NaN;
  const e = counts.length;
  return e === 1 ? 1 : h / Math.log(e);
}

/**
 * Effective number of experts exp(H) (the perplexity of the load distribution):
 * E when loads are even, 1 when one expert takes everything; n when n experts
 * share the load evenly and the rest get nothing. NaN when E = 0 or T = 0.
 */
export function effectiveExperts(counts: Counts): number {
  return Math.exp(loadEntropy(counts));
}

const topScratch = makeScratchI32();

/**
 * Indices of the k most loaded experts, most loaded first; ties go to the lower
 * index. Returns min(k, E) indices (a new array of that length). O(E * k).
 */
export function topExperts(counts: Counts, k: number): number[] {
  const e = counts.length;
  const m = Math.max(0, Math.min(Math.floor(k), e));
  const idx = topScratch(m);
  let filled = 0;
  for (let i = 0; i < e; i++) {
    const c = counts[i]!;
    let j: number;
    if (filled < m) j = filled++;
    else if (m > 0 && c > counts[idx[m - 1]!]!) j = m - 1;
    else continue;
    // Shift lighter entries down; strict > keeps the earlier (lower) index first on ties.
    while (j > 0 && c > counts[idx[j - 1]!]!) {
      idx[j] = idx[j - 1]!;
      j--;
    }
    idx[j] = i;
  }
  return Array.from(idx.subarray(0, m));
}

/**
 * Share of all assignments taken by the k most loaded experts:
 * (sum of the k largest c_i) / T. For top-1 routing with k = 1 this is the top
 * expert's share of tokens. For top-k routing pass the router's k: each token
 * picks k distinct experts, so k experts can hold at most all assignments (1.0),
 * and even loads give k/E. NaN when E = 0 or T = 0.
 */
export function topShare(counts: Counts, k = 1): number {
  const t = totalLoad(counts);
  if (counts.length === 0 || t <= 0) return NaN;
  let s = 0;
  for (const i of topExperts(counts, k)) s += counts[i]!;
  return s / t;
}

/** Every load statistic of one layer at once, from one pass plus the Gini sort. */
export interface LoadStats {
  /** E. */
  experts: number;
  /** T = sum of counts (assignments). */
  total: number;
  mean: number;
  max: number;
  /** Lowest-index expert with the maximal load; -1 when E = 0. */
  argmax: number;
  min: number;
  /** Experts with a count of exactly 0 (whether or not the window is big enough to call them dead). */
  zeroExperts: number;
  cv: number;
  maxVio: number;
  balancedness: number;
  gini: number;
  /** Nats. */
  entropy: number;
  normalizedEntropy: number;
  effectiveExperts: number;
}

export function emptyLoadStats(): LoadStats {
  return {
    experts: 0,
    total: 0,
    mean: NaN,
    max: NaN,
    argmax: -1,
    min: NaN,
    zeroExperts: 0,
    cv: NaN,
    maxVio: NaN,
    balancedness: NaN,
    gini: NaN,
    entropy: NaN,
    normalizedEntropy: NaN,
    effectiveExperts: NaN,
  };
}

/**
 * All of the statistics above for one layer, with the same definitions and
 * edge cases (NaN ratios when E = 0 or T = 0). Pass `out` to reuse an object
 * and allocate nothing at all.
 */
export function loadStats(counts: Counts, out: LoadStats = emptyLoadStats()): LoadStats {
  const e = counts.length;
  let t = 0;
  let s = 0;
  let max = -Infinity;
  let min = Infinity;
  let argmax = -1;
  let zeros = 0;
  for (let i = 0; i < e; i++) {
    const c = counts[i]!;
    t += c;
    if (c > max) {
      max = c;
      argmax = i;
    }
    if (c < min) min = c;
    if (c > 0) s += c * Math.log(c);
    else zeros++;
  }
  out.experts = e;
  out.total = t;
  out.argmax = argmax;
  out.zeroExperts = zeros;
  out.max = e > 0 ? max : NaN;
  out.min = e > 0 ? min : NaN;
  if (e === 0 || t <= 0) {
    out.mean = e > 0 ? 0 : NaN;
    out.cv = out.maxVio = out.balancedness = out.gini = NaN;
    out.entropy = out.normalizedEntropy = out.effectiveExperts = NaN;
    return out;
  }
  const mean = t / e;
  let ss = 0;
  for (let i = 0; i < e; i++) {
    const d = counts[i]! - mean;
    ss += d * d;
  }
  let h = Math.log(t) - s / t;
  if (h < 0) h = 0;
  out.mean = mean;
  out.cv = Math.sqrt(ss / e) / mean;
  out.maxVio = (max - mean) / mean;
  out.balancedness = mean / max;
  out.gini = gini(counts);
  out.entropy = h;
  out.normalizedEntropy = e === 1 ? 1 : h / Math.log(e);
  out.effectiveExperts = Math.exp(h);
  return out;
}
