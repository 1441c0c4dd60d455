/**
 * Jensen-Shannon divergence and the comparison of two runs, against hand-worked values.
 */
import { describe, expect, it } from 'vitest';
import { jsDivergence, shareChanges } from '../../src/analysis/divergence';
import { compareRouting, firstChoice, inputKey, matchIdenticalInputs, type RoutingRange, type TokenRouting } from '../../src/analysis/compare';

describe('jsDivergence', () => {
  it('is 0 for the same distribution at any scale, 1 for disjoint ones', () => {
    expect(jsDivergence([1, 2, 3], [10, 20, 30])).toBeCloseTo(0, 15);
    expect(jsDivergence([5, 0], [0, 7])).toBe(1);
  });

  it('matches the definition on a worked case', () => {
    // P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4)
    // KL(P||M) = 1/2 log2(2/3) + 1/2 log2(2) = 1/2 (1 - log2 3) + 1/2 = 1 - 1/2 log2 3
    // KL(Q||M) = log2(4/3) = 2 - log2 3
    // JS = 1/2 (3 - 3/2 log2 3) = 3/2 - 3/4 log2 3 = 0.311278...
    expect(jsDivergence([1, 1], [2, 0])).toBeCloseTo(1.5 - 0.75 * Math.log2(3), 12);
    expect(jsDivergence([2, 0], [1, 1])).toBeCloseTo(1.5 - 0.75 * Math.log2(3), 12);
  });

  it('is NaN with nothing to compare', () => {
    expect(jsDivergence([0, 0], [1, 1])).toBeNaN();
    expect(jsDivergence([1, 1], [1, 1, 1])).toBeNaN();
  });

  it('lists the experts whose share moved most', () => {
    // A: 50 30 20 (%), B: 20 30 50: experts 0 (-30) and 2 (+30) tie in size, lower id first
    const moved = shareChanges([5, 3, 2], [2, 3, 5], 2);
    expect(moved.map((m) => m.expert)).toEqual([0, 2]);
    expect(moved[0]!.change).toBeCloseTo(-0.3, 12);
    expect(moved[1]!.shareA).toBeCloseTo(0.2, 12);
  });
});

const row = (pass: number, phase: 'prefill' | 'decode', tokenIds: number[] | null, layers: TokenRouting['layers']): TokenRouting => ({
  pass, phase, n: tokenIds?.length ?? 1, tokenIds, layers,
});

describe('comparing two runs', () => {
  it('matches prefill passes of identical input, each once', () => {
    const a = [row(1, 'prefill', [1, 2, 3, 4], []), row(2, 'decode', [9], []), row(3, 'prefill', [1, 2, 3, 4], []), row(4, 'prefill', [5, 6, 7, 8], [])];
    const b = [row(10, 'prefill', [5, 6, 7, 8], []), row(11, 'prefill', [1, 2, 3, 4], []), row(12, 'decode', [9], [])];
    const pairs = matchIdenticalInputs(a, b);
    // pass 1 with 11; pass 3 finds nothing left; pass 4 with 10; decode passes are never matched
    expect(pairs.map(([x, y]) => [x.pass, y.pass])).toEqual([[1, 11], [4, 10]]);
    expect(matchIdenticalInputs([row(1, 'prefill', [1, 2], [])], [row(2, 'prefill', [1, 2], [])])).toEqual([]); // under 4 tokens
  });

  it('names an input by FNV-1a over its token ids', () => {
    // FNV-1a 32 of no bytes is the offset basis; of the 4 bytes of int32 0: worked with the algorithm's steps
    expect(inputKey([])).toBe('811c9dc5');
    let h = 0x811c9dc5;
    for (let i = 0; i < 4; i++) h = Math.imul(h ^ 0, 0x01000193) >>> 0;
    expect(inputKey([0])).toBe(h.toString(16).padStart(8, '0'));
    expect(inputKey([1, 2])).not.toBe(inputKey([2, 1]));
  });

  it('takes the first choice by weight when weights are known', () => {
    // token 0: ids 3 1 with weights 0.2 0.8 -> 1; token 1: ids 2 -1 -> 2 (no weights: the first id)
    expect(firstChoice([3, 1, 2, 0], [0.2, 0.8, 0.9, 0.1], 0, 2)).toBe(1);
    expect(firstChoice([3, 1, 2, 0], null, 1, 2)).toBe(2);
    expect(firstChoice([-1, -1], null, 0, 2)).toBe(-1);
  });

  it('gives per-layer divergence, side-by-side load and the changed-first-choice share', () => {
    const side = (counts: number[], rows: TokenRouting[]): RoutingRange => ({
      widths: [2, 2, 3], labels: ['L0', 'L1', 'L2'], counts, tokens: [10, 10, 10], routerEntropy: [0.5, NaN, 0.7], msPerPass: [1, 2, 3], tokenRows: rows,
    });
    const ids = [1, 2, 3, 4];
    // layer 0 top-1 of 4 tokens: A 0 0 1 1, B 0 1 1 1 -> 1 of 4 changed; layer 1: A 0 0 0 0, B 1 1 1 1 -> 4 of 4
    const a = side([5, 5, 10, 0, 1, 1, 1], [row(1, 'prefill', ids, [
      { layer: 0, k: 1, ids: [0, 0, 1, 1], weights: null }, { layer: 1, k: 1, ids: [0, 0, 0, 0], weights: null }])]);
    const b = side([5, 5, 0, 10, 1, 1, 1], [row(7, 'prefill', ids, [
      { layer: 0, k: 1, ids: [0, 1, 1, 1], weights: null }, { layer: 1, k: 1, ids: [1, 1, 1, 1], weights: null }])]);
    const c = compareRouting(a, b);
    expect(c.layers.map((l) => l.js)).toEqual([0, 1, 0]);
    expect(c.mostDiverged).toBe(1);
    expect(c.matchedPasses).toBe(1);
    expect(c.matchedTokens).toBe(4);
    expect(c.matched).toEqual([{ passA: 1, passB: 7, tokens: 4, input: inputKey([1, 2, 3, 4]) }]);
    expect(c.layers[0]!.top1).toEqual({ tokens: 4, changed: 1, share: 0.25 });
    expect(c.layers[1]!.top1).toEqual({ tokens: 4, changed: 4, share: 1 });
    expect(c.layers[2]!.top1).toBeNull(); // no token records of layer 2
    // balancedness of layer 1: A (10, 0): mean 5 / max 10 = 0.5
    expect(c.layers[1]!.a.balancedness).toBe(0.5);
    expect(c.layers[2]!.a.routerEntropy).toBe(0.7);
    expect(c.layers[1]!.movers[0]).toMatchObject({ expert: 0, shareA: 1, shareB: 0 });
  });

  it('marks layers of different widths as not comparable', () => {
    const a: RoutingRange = { widths: [2, 4], labels: ['a', 'b'], counts: [1, 1, 1, 1, 1, 1], tokens: [1, 1], routerEntropy: [], msPerPass: [], tokenRows: [] };
    const b: RoutingRange = { widths: [2, 3], labels: ['a', 'b'], counts: [1, 1, 1, 1, 1], tokens: [1, 1], routerEntropy: [], msPerPass: [], tokenRows: [] };
    const c = compareRouting(a, b);
    expect(c.layers[0]!.comparable).toBe(true);
    expect(c.layers[1]!.comparable).toBe(false);
    expect(c.layers[1]!.js).toBeNaN();
  });
});
