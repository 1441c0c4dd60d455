/** Routing flow, load shift, column orders and per-layer metrics (src/analysis), against hand-computed values. */
import { describe, expect, it } from 'vitest';
import {
  layerMetric, loadShift, orderByLoad, orderBySimilarity, routingFlow, throughExpert, tokenLabel, tokenTextFilter, totalVariation, transition,
  type FlowRecord,
} from '../../src/analysis';
import { layerHealth } from '../../src/analysis/health';

/** Two passes over three layers of widths 3, 4, 2 (top-2, with weights in layer 0 only). */
const records: FlowRecord[] = [
  {
    pass: 5, tokenIds: [10, 11], texts: ['def', ' x'],
    layers: [
      { layer: 0, k: 2, ids: [0, 1, 2, 0], weights: [0.3, 0.7, 0.6, 0.4] }, // token 0 top-1 is expert 1 (larger weight); token 1 -> 2
      { layer: 1, k: 2, ids: [3, 1, 3, -1] }, // token 1 took one expert only
      { layer: 2, k: 2, ids: [0, 1, 1, 0] },
    ],
  },
  {
    pass: 7, tokenIds: [12], texts: ['x'],
    layers: [
      { layer: 0, k: 2, ids: [1, 0], weights: [0.5, 0.5] }, // a tie: the first slot is the top-1
      // layer 1 not sampled in this pass
      { layer: 2, k: 2, ids: [1, 0] },
    ],
  },
];
const widths = [3, 4, 2];

const asMap = (p: { src: Int32Array; dst: Int32Array; weight: Float64Array }) => Object.fromEntries(Array.from(p.weight, (w, i) => [`${p.src[i]}>${p.dst[i]}`, w]));

describe('routingFlow', () => {
  it('counts top-1 transitions between consecutive layers, whole tokens', () => {
    const f = routingFlow(records, [0, 1, 2], widths, { weighting: 'top1' });
    expect(f.tokens).toBe(3);
    expect(f.passes).toEqual([5, 7]);
    // 0 -> 1: pass 5 token 0 (1 -> 3), token 1 (2 -> 3); pass 7 has no layer 1.
    expect(asMap(f.pairs[0]!)).toEqual({ '1>3': 1, '2>3': 1 });
    expect(f.pairs[0]!.total).toBe(2);
    // 1 -> 2: token 0 (3 -> 0), token 1 (3 -> 1).
    expect(asMap(f.pairs[1]!)).toEqual({ '3>0': 1, '3>1': 1 });
    // Nodes: tokens present in each layer, at their top-1.
    expect(Array.from(f.nodes[0]!)).toEqual([0, 2, 1]); // 1, 2, and pass 7's tie -> 1
    expect(Array.from(f.nodes[1]!)).toEqual([0, 0, 0, 2]);
    expect(Array.from(f.nodes[2]!)).toEqual([1, 2]);
    expect(transition(f.pairs[0]!, 2, 3)).toBe(1);
    expect(transition(f.pairs[0]!, 0, 3)).toBe(0);
  });

  it('spreads a token evenly over its slot pairs, or by gate weights', () => {
    const slots = routingFlow(records, [0, 1], widths, { weighting: 'slots' });
    // token 0: {0,1} x {3,1}, 1/4 each; token 1: {2,0} x {3}, 1/2 each.
    expect(asMap(slots.pairs[0]!)).toEqual({ '0>1': 0.25, '0>3': 0.25 + 0.5, '1>1': 0.25, '1>3': 0.25, '2>3': 0.5 });
    expect(slots.pairs[0]!.total).toBe(2);
    const sum = Array.from(slots.pairs[0]!.weight).reduce((a, b) => a + b, 0);
    expect(sum).toBeCloseTo(2, 12);
    const gates = routingFlow(records, [0, 1], widths, { weighting: 'gates' });
    // layer 0 weighted (0.3, 0.7) and (0.6, 0.4); layer 1 has no weights: equal split.
    const g = asMap(gates.pairs[0]!);
    expect(g['0>1']).toBeCloseTo(0.15);
    expect(g['0>3']).toBeCloseTo(0.15 + 0.4);
    expect(g['1>1']).toBeCloseTo(0.35);
    expect(g['1>3']).toBeCloseTo(0.35);
    expect(g['2>3']).toBeCloseTo(0.6);
  });

  it('narrows tokens by text and by the expert they went through', () => {
    const x = routingFlow(records, [0, 2], widths, { select: tokenTextFilter('X') });
    expect(x.tokens).toBe(2); // ' x' and 'x', case-insensitive
    expect(asMap(x.pairs[0]!)).toEqual({ '2>1': 1, '1>1': 1 });
    expect(routingFlow(records, [0, 2], widths, { select: tokenTextFilter('#10') }).tokens).toBe(1);
    expect(routingFlow(records, [0, 2], widths, { select: tokenTextFilter('nothing') }).tokens).toBe(0);
    // Through layer 1 expert 1: only token 0 of pass 5 (any slot for 'slots', not top-1).
    expect(routingFlow(records, [0, 1, 2], widths, { weighting: 'slots', select: throughExpert(1, 1, 'slots') }).tokens).toBe(1);
    expect(routingFlow(records, [0, 1, 2], widths, { weighting: 'top1', select: throughExpert(1, 1, 'top1') }).tokens).toBe(0);
    expect(tokenLabel({ texts: null, tokenIds: [9] }, 0)).toBe('#9');
  });

  it('rejects a layer without a width', () => {
    expect(() => routingFlow(records, [0, 3], widths)).toThrow(/layer 3/);
  });
});

describe('loadShift', () => {
  it('is the total variation distance between the two load distributions', () => {
    expect(totalVariation([1, 1, 0, 0], [0, 0, 1, 1])).toBe(1);
    expect(totalVariation([2, 2], [5, 5])).toBe(0);
    expect(totalVariation([3, 1], [1, 1])).toBeCloseTo(0.25);
    expect(totalVariation([0, 0], [1, 1])).toBeNaN();
    const s = loadShift([30, 10, 0, 0], [10, 10, 10, 10], 2);
    expect(s.totalVariation).toBeCloseTo(0.5);
    expect(s.largest).toEqual([{ expert: 0, before: 0.75, after: 0.25 }, { expert: 2, before: 0, after: 0.25 }]);
    expect(s.maxVioAfter).toBe(0);
    expect(s.normalizedEntropyAfter).toBeCloseTo(1);
  });
});

describe('column orders', () => {
  // Columns 0 and 2 alike (rise), 1 and 3 alike (fall), 4 empty.
  const m = [
    1, 5, 2, 4, 0,
    3, 3, 6, 2, 0,
    5, 1, 9, 0.5, 0,
  ];
  it('orders by load, busiest first', () => {
    expect(orderByLoad(m, 3, 5)).toEqual([2, 0, 1, 3, 4]);
    expect(orderByLoad([NaN, 3, 2, NaN], 2, 2)).toEqual([1, 0]); // NaN (no such expert) counts as 0
  });
  it('puts similar columns side by side, empty ones last', () => {
    expect(orderBySimilarity(m, 3, 5)).toEqual([2, 0, 1, 3, 4]);
  });
});

describe('layerMetric', () => {
  it('reads each metric from one layer interval', () => {
    expect(layerMetric('maxVio', { counts: [4, 2, 2, 0] })).toBe(1);
    expect(layerMetric('zeroExperts', { counts: [4, 2, 2, 0] })).toBe(1);
    expect(layerMetric('zeroExperts', { counts: [0, 0] })).toBeNaN();
    expect(layerMetric('tokens', { counts: [4, 2, 2, 0], topK: 2 })).toBe(4);
    expect(layerMetric('msPerPass', { counts: [1], blockS: 0.02, passes: 4 })).toBeCloseTo(5);
    const health = layerHealth([10, 10 * Math.log(4) * 0.5, 90, 0, 0, 0], 0, 4);
    expect(layerMetric('routerEntropy', { counts: [1, 1, 1, 1], health })).toBeCloseTo(0.5);
    expect(layerMetric('zLoss', { counts: [1, 1, 1, 1], health })).toBeCloseTo(9);
    const nan = layerHealth([10, 5, 90, 2, 0, 0], 0, 4);
    expect(layerMetric('routerEntropy', { counts: [1, 1, 1, 1], health: nan })).toBeNaN();
  });
});
