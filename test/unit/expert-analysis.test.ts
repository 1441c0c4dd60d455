/** Reading explanations and expert weights (src/analysis/attribution.ts, experts.ts) on values worked out by hand. */
import { describe, expect, it } from 'vitest';
import {
  PARAMETER_THRESHOLDS, attributionShades, completeness, linkedGroups, parameterFindings, similarityEdges, similarityLayout,
  strongestPairsThreshold, topContributions, type ExpertParameterLayer,
} from '../../src/analysis';
import { prng } from './prng';

describe('attribution', () => {
  it('completeness compares the sum of the attributions with f(x) - f(b)', () => {
    const c = completeness([0.5, -0.25, 1.0], 2.0, 0.75);
    expect(c.sum).toBe(1.25);
    expect(c.delta).toBe(1.25);
    expect(c.absoluteError).toBe(0);
    expect(c.relativeError).toBe(0);
    const off = completeness([0.5, 0.5], 1.1, 0);
    expect(off.absoluteError).toBeCloseTo(0.1, 12);
    expect(off.relativeError).toBeCloseTo(0.1 / 1.1, 12);
    expect(completeness([0.1], 0.5, 0.5).relativeError).toBeNaN();
  });

  it('ranks positions by the size of their attribution, sign kept, ties to the earlier position', () => {
    const top = topContributions([0.1, -0.6, 0.3, 0.6, 0], 3);
    expect(top.map((c) => c.position)).toEqual([1, 3, 2]);
    expect(top[0]).toEqual({ position: 1, value: -0.6, share: -0.6 / 1.6 });
    expect(topContributions([], 3)).toEqual([]);
    expect(topContributions([0, 0], 1)).toEqual([{ position: 0, value: 0, share: 0 }]);
  });

  it('shades scale by the largest magnitude', () => {
    expect(attributionShades([0.5, -1, 0.25])).toEqual([0.5, -1, 0.25]);
    expect(attributionShades([2, -1])).toEqual([1, -0.5]);
    expect(attributionShades([0, 0])).toEqual([0, 0]);
  });
});

function layer(overrides: Partial<ExpertParameterLayer>): ExpertParameterLayer {
  return {
    layer: 0, experts: 4, computeExperts: 4, routerNorms: null, routerCosine: null, routerBias: null, routerBiasName: '',
    expertNorms: null, groupNorms: null, groups: [], weightCosine: null, layout: 'stacked', params: 0, seconds: 0, peakBytes: 0, notes: [],
    ...overrides,
  };
}

/** A symmetric matrix with ones on the diagonal and the given off-diagonal pairs. */
function matrix(n: number, pairs: Array<[number, number, number]>, fill = 0): Float32Array {
  const m = new Float32Array(n * n).fill(fill);
  for (let i = 0; i < n; i++) m[i * n + i] = 1;
  for (const [i, j, v] of pairs) {
    m[i * n + j] = v;
    m[j * n + i] = v;
  }
  return m;
}

const label = (l: number) => `model.layers.${l}.mlp (layer ${l})`;

describe('expert parameter findings', () => {
  it('names two experts whose weights are copies as near-duplicates, and nothing in a healthy layer', () => {
    const findings = parameterFindings([
      layer({ layer: 1, weightCosine: matrix(4, [[1, 3, 0.99995], [0, 2, 0.4]]) }),
      layer({ layer: 2, weightCosine: matrix(4, [[0, 1, 0.05], [2, 3, -0.1]]) }),
    ], label);
    expect(findings).toHaveLength(1);
    expect(findings[0]).toMatchObject({ kind: 'near_duplicate', layer: 1, experts: [1, 3], threshold: PARAMETER_THRESHOLDS.duplicateCosine });
    expect(findings[0]!.value).toBeCloseTo(0.99995, 5);
    expect(findings[0]!.message).toBe('model.layers.1.mlp (layer 1): experts 1 and 3 are near-duplicates: the cosine similarity of their weights is 0.9999');
  });

  it('joins chains of near-duplicates into one group and says the lowest pair', () => {
    const [f] = parameterFindings([layer({ experts: 5, weightCosine: matrix(5, [[0, 2, 0.999], [2, 4, 0.995], [0, 4, 0.98]]) })], label);
    expect(f!.experts).toEqual([0, 2, 4]);
    expect(f!.value).toBeCloseTo(0.98, 6);
    expect(f!.message).toContain('experts 0, 2 and 4 are near-duplicates: the cosine similarity of their weights is at least 0.9800');
  });

  it('finds a router row collapsed to near zero against the layer median, and says when all are zero', () => {
    const findings = parameterFindings([
      layer({ layer: 3, routerNorms: Float64Array.from([0.8, 0.9, 0.0, 0.85]) }),
      layer({ layer: 4, routerNorms: Float64Array.from([0.8, 0.9, 0.7, 0.85]) }),
      layer({ layer: 5, routerNorms: Float64Array.from([0, 0, 0, 0]) }),
      layer({ layer: 6, experts: 5, routerNorms: Float64Array.from([1, 1, 1, 0.011, 0.009]) }), // 1 % of the median 1: 0.01
    ], label);
    expect(findings.map((f) => [f.kind, f.layer, f.experts])).toEqual([
      ['dead_by_weights', 3, [2]], ['dead_by_weights', 5, [0, 1, 2, 3]], ['dead_by_weights', 6, [4]],
    ]);
    expect(findings[0]!.message).toBe("model.layers.3.mlp (layer 3): the router row of expert 2 has collapsed to near zero (norm 0.0 against the layer's median 0.825): its score no longer depends on the token");
    expect(findings[1]!.message).toContain('every router row is zero');
  });
});

describe('similarity graph', () => {
  it('groups experts linked above the threshold', () => {
    const m = matrix(6, [[0, 1, 0.9], [1, 2, 0.8], [3, 4, 0.95], [2, 5, 0.1]]);
    expect(linkedGroups(m, 6, 0.5)).toEqual([[0, 1, 2], [3, 4], [5]]);
    expect(linkedGroups(m, 6, 0.85)).toEqual([[0, 1], [2], [3, 4], [5]]);
    expect(similarityEdges(m, 6, 0.5).map((e) => [e.a, e.b])).toEqual([[3, 4], [0, 1], [1, 2]]);
  });

  it('picks a display threshold that keeps the strongest pairs', () => {
    const m = matrix(4, [[0, 1, 0.9], [1, 2, 0.8], [2, 3, 0.7], [0, 3, 0.6]], 0.1);
    expect(strongestPairsThreshold(m, 4, 0.5)).toBeCloseTo(0.8, 6); // round(0.5 * 4) = 2 strongest pairs
    expect(similarityEdges(m, 4, strongestPairsThreshold(m, 4, 0.5))).toHaveLength(2);
    // pairs that are only less opposed than others are not edges: the threshold stays at 0 or above
    expect(strongestPairsThreshold(matrix(4, [[0, 1, 0.2]], -0.3), 4)).toBe(0);
  });

  it('keeps each cluster together: every node is nearer the rest of its cluster than any other cluster', () => {
    const random = prng(3);
    const n = 24;
    // three planted clusters of 8 (similar inside, dissimilar across), noise elsewhere
    const cluster = (i: number) => Math.floor(i / 8);
    const m = new Float32Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        m[i * n + j] = i === j ? 1 : cluster(i) === cluster(j) ? 0.6 + 0.3 * random() : 0.2 * random();
      }
    }
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) m[i * n + j] = m[j * n + i]!;
    const nodes = similarityLayout(m, n, 0.5);
    expect(new Set(nodes.map((p) => p.cluster)).size).toBe(3);
    for (let i = 0; i < n; i++) {
      expect(nodes[i]!.x).toBeGreaterThanOrEqual(0);
      expect(nodes[i]!.x).toBeLessThanOrEqual(1);
      expect(nodes[i]!.y).toBeGreaterThanOrEqual(0);
      expect(nodes[i]!.y).toBeLessThanOrEqual(1);
      const d = (j: number) => Math.hypot(nodes[i]!.x - nodes[j]!.x, nodes[i]!.y - nodes[j]!.y);
      const inside = Math.max(...Array.from({ length: n }, (_, j) => j).filter((j) => j !== i && cluster(j) === cluster(i)).map(d));
      const outside = Math.min(...Array.from({ length: n }, (_, j) => j).filter((j) => cluster(j) !== cluster(i)).map(d));
      expect(inside).toBeLessThan(outside);
    }
    // deterministic
    expect(similarityLayout(m, n, 0.5)).toEqual(nodes);
  });
});
