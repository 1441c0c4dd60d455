/**
 * Router health over a window, from the per-layer sums the probe sends
 * (protocol/probe.ts HEALTH_COLUMNS: logit_tokens, entropy_sum, zloss_sum,
 * nan, inf, dropped; cumulative). Subtract two cumulative snapshots (see
 * windowDelta) to get a window, then read one layer's row with layerHealth.
 */
import { HEALTH_COLUMNS } from '../protocol/probe';

const COL = {
  logitTokens: HEALTH_COLUMNS.indexOf('logit_tokens'),
  entropySum: HEALTH_COLUMNS.indexOf('entropy_sum'),
  zlossSum: HEALTH_COLUMNS.indexOf('zloss_sum'),
  nan: HEALTH_COLUMNS.indexOf('nan'),
  inf: HEALTH_COLUMNS.indexOf('inf'),
  dropped: HEALTH_COLUMNS.indexOf('dropped'),
};

export interface LayerHealth {
  /** N: tokens whose router logits were measured in the window. */
  logitTokens: number;
  /** entropy_sum / N: mean per-token softmax entropy, nats. NaN when N = 0. */
  meanEntropy: number;
  /** meanEntropy / ln E, in [0, 1] (1 when E = 1). NaN when N = 0. Feed to LayerWindow.routerEntropy. */
  normalizedEntropy: number;
  /** zloss_sum / N: ST-MoE router z-loss, mean of logsumexp^2. NaN when N = 0. */
  zLoss: number;
  nanLogits: number;
  infLogits: number;
  /** Tokens dropped by expert capacity. */
  droppedTokens: number;
}

/**
 * One layer's health from a [layers x HEALTH_COLUMNS] row-major block of
 * window sums, for a layer of E experts. Definitions on LayerHealth.
 */
export function layerHealth(health: ArrayLike<number>, layer: number, experts: number): LayerHealth {
  const w = HEALTH_COLUMNS.length;
  const base = layer * w;
  if (!(layer >= 0) || base + w > health.length) {
    throw new RangeError(`layerHealth: layer ${layer} is outside a block of ${health.length / w} layers`);
  }
  const n = health[base + COL.logitTokens]!;
  const meanEntropy = n > 0 ? health[base + COL.entropySum]! / n : NaN;
  return {
    logitTokens: n,
    meanEntropy,
    normalizedEntropy: n > 0 ? (experts === 1 ? 1 : meanEntropy / Math.log(experts)) : NaN,
    zLoss: n > 0 ? health[base + COL.zlossSum]! / n : NaN,
    nanLogits: health[base + COL.nan]!,
    infLogits: health[base + COL.inf]!,
    droppedTokens: health[base + COL.dropped]!,
  };
}
