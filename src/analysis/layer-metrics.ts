/**
 * Per-layer metrics by name, for views that put any one of them side by side across layers
 * (small multiples on one shared scale, layer-vs-layer tables). Each is one of the analyses of
 * this folder applied to one layer's window; see there for the definitions.
 */
import type { LayerHealth } from './health';
import { loadStats, type Counts } from './load';

export type LayerMetricId =
  | 'maxVio' | 'balancedness' | 'loadEntropy' | 'effectiveShare' | 'cv' | 'gini' | 'zeroExperts'
  | 'routerEntropy' | 'zLoss' | 'tokens' | 'msPerPass';

export const LAYER_METRICS: Array<{ id: LayerMetricId; label: string; description: string }> = [
  { id: 'maxVio', label: 'MaxVio', description: '(max load - mean load) / mean load; 0 when even' },
  { id: 'balancedness', label: 'Balancedness', description: 'mean load / max load = 1 / (1 + MaxVio); 1 when even' },
  { id: 'loadEntropy', label: 'Load entropy', description: 'entropy of the loads / ln E; 1 when even, 0 when one expert takes all' },
  { id: 'effectiveShare', label: 'Effective experts (share)', description: 'exp(load entropy) / E: the share of the layer’s experts in effective use' },
  { id: 'cv', label: 'Load CV', description: 'standard deviation / mean of the loads' },
  { id: 'gini', label: 'Load Gini', description: 'Gini coefficient of the loads; 0 when even' },
  { id: 'zeroExperts', label: 'Experts with no tokens', description: 'experts that got no assignment in the interval (not a dead-expert verdict: the interval may be short)' },
  { id: 'routerEntropy', label: 'Router entropy', description: 'mean per-token softmax entropy of the router logits / ln E (not shown for intervals with NaN/Inf logits)' },
  { id: 'zLoss', label: 'Router z-loss', description: 'mean of logsumexp(logits)^2' },
  { id: 'tokens', label: 'Tokens', description: 'tokens through the layer in the interval' },
  { id: 'msPerPass', label: 'ms per pass', description: 'time inside the MoE block per forward pass' },
];

/** One layer over one interval: its counts and what else the snapshots said about it. */
export interface LayerInterval {
  counts: Counts;
  /** Tokens through the layer; default sum(counts) / topK. */
  tokens?: number;
  topK?: number;
  health?: LayerHealth | null;
  /** Seconds inside the block and passes in the interval. */
  blockS?: number;
  passes?: number;
}

/** The metric's value for one layer over one interval; NaN when it cannot be told (no tokens, not measured). */
export function layerMetric(id: LayerMetricId, w: LayerInterval): number {
  switch (id) {
    case 'routerEntropy':
      return w.health && w.health.nanLogits + w.health.infLogits === 0 ? w.health.normalizedEntropy : NaN;
    case 'zLoss':
      return w.health ? w.health.zLoss : NaN;
    case 'tokens': {
      if (w.tokens !== undefined) return w.tokens;
      let t = 0;
      for (let i = 0; i < w.counts.length; i++) t += w.counts[i]!;
      return t / Math.max(1, w.topK ?? 1);
    }
    case 'msPerPass':
      return w.blockS !== undefined && w.passes ? (1000 * w.blockS) / w.passes : NaN;
    default: {
      const s = loadStats(w.counts);
      if (id === 'maxVio') return s.maxVio;
      if (id === 'balancedness') return s.balancedness;
      if (id === 'loadEntropy') return s.normalizedEntropy;
      if (id === 'effectiveShare') return s.effectiveExperts / Math.max(1, w.counts.length);
      if (id === 'cv') return s.cv;
      if (id === 'gini') return s.gini;
      if (id === 'zeroExperts') return Number.isNaN(s.maxVio) ? NaN : s.zeroExperts;
      throw new RangeError(`layerMetric: unknown metric ${String(id)}`);
    }
  }
}
