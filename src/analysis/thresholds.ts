/**
 * Every threshold the routing analyses and `findings` judge by, in one place.
 * Each can be overridden per call (pass a Partial<Thresholds>); the defaults
 * are heuristics chosen so that a healthy, near-uniform router produces no
 * findings even with ordinary sampling noise (see each field).
 */
export interface Thresholds {
  /**
   * Least tokens routed through a layer in the window before any load-based
   * verdict (dead expert, imbalance, collapse) is given. Default 1000.
   */
  minTokens: number;
  /**
   * Least assignments each expert would expect under perfectly even routing,
   * tokens x k / E, before a dead-expert or imbalance verdict is given. Guards
   * against sampling noise in layers with many experts: under even routing the
   * chance that any of 512 experts gets 0 of an expected 50 is ~1e-19, and the
   * chance that one gets over twice its share is ~1e-7. Default 50.
   */
  minExpectedPerExpert: number;
  /** Imbalance when MaxVio = (max - mean) / mean exceeds this (1.0: busiest expert over 2x its fair share). Default 1.0. */
  imbalanceMaxVio: number;
  /** Collapse when the normalized load entropy H / ln E falls below this. Default 0.5. */
  collapseEntropy: number;
  /** Collapse when the top-k experts' share of assignments reaches this (k = the router's top_k). Default 0.9. */
  collapseTopShare: number;
  /**
   * Collapse when one expert is in the top-k of at least this share of tokens. Judged only when
   * top_k / E <= 0.45, so that even routing (each expert in k/E of tokens) stays far below. Default 0.9.
   */
  collapseExpertTokenShare: number;
  /** Abnormal when the mean normalized per-token router entropy is below this (saturated, near one-hot router). Default 0.05. */
  routerEntropyLow: number;
  /** Abnormal when the mean normalized per-token router entropy is above this (router near uniform, not choosing). Default 0.99. */
  routerEntropyHigh: number;
  /** A finding when the NaN + Inf router logits in the window exceed this count. Default 0 (any). */
  nonFiniteLogits: number;
  /** A finding when dropped tokens / routed tokens (capacity overflow) exceeds this fraction. Default 0.01. */
  droppedFraction: number;
}

export const DEFAULT_THRESHOLDS: Readonly<Thresholds> = Object.freeze({
  minTokens: 1000,
  minExpectedPerExpert: 50,
  imbalanceMaxVio: 1.0,
  collapseEntropy: 0.5,
  collapseTopShare: 0.9,
  collapseExpertTokenShare: 0.9,
  routerEntropyLow: 0.05,
  routerEntropyHigh: 0.99,
  nonFiniteLogits: 0,
  droppedFraction: 0.01,
});

/** DEFAULT_THRESHOLDS with the given overrides (undefined fields keep their default). */
export function resolveThresholds(overrides: Partial<Thresholds> = {}): Thresholds {
  const out: Thresholds = { ...DEFAULT_THRESHOLDS };
  for (const key of Object.keys(overrides) as (keyof Thresholds)[]) {
    const v = overrides[key];
    if (v !== undefined) out[key] = v;
  }
  return out;
}
