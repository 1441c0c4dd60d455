/**
 * Distributed jobs, the pure parts: merging ranks into the job's logical counts, telling when
 * ranks cannot be merged, and judging ranks against each other. Expected values are worked out
 * by hand in the comments.
 */
import { describe, expect, it } from 'vitest';
import type { JobUpdate } from '../../src/protocol/panel';
import type { ModelInfo } from '../../src/protocol/probe';
import {
  expertMapConflict, heldByLayer, median, mergeRankUpdates, modelMismatch, rankFindings, rankList, rankRows, rankSample, skew, uncoveredExperts,
  type RankWindow,
} from '../../src/analysis/ranks';
import { layerInfo } from './layer-fixture';

const update = (passes: number, counts: number[], more: Partial<JobUpdate> = {}): JobUpdate => ({
  type: 'update', pid: 1, model: 0, passes, layers: 2, widths: [2, 3], counts, tokens: [passes * 2, passes * 2], ts: 100 + passes, dropped: 1, ...more,
});

describe('merging ranks', () => {
  it('sums counts, tokens, passes, health and times; takes the largest logit', () => {
    const a = update(3, [1, 2, 3, 4, 5], { health: [1, 2, 3, 0, 0, 0, 4, 5, 6, 1, 0, 0], maxLogit: [2, -1], timeS: [0.5, 0.25], prefill: 1, decode: 2, probeS: 0.1 });
    const b = update(4, [10, 20, 30, 40, 50], { health: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], maxLogit: [1, 3], timeS: [0.25, 0.25], prefill: 0, decode: 4, probeS: 0.2 });
    const m = mergeRankUpdates([a, b], [2, 3]);
    expect(m.counts).toEqual([11, 22, 33, 44, 55]);
    expect(m.tokens).toEqual([14, 14]); // 3*2 + 4*2 per layer
    expect(m.passes).toBe(7);
    expect(m.dropped).toBe(2);
    expect(m.health).toEqual([2, 3, 4, 1, 1, 1, 5, 6, 7, 2, 1, 1]);
    expect(m.maxLogit).toEqual([2, 3]);
    expect(m.timeS).toEqual([0.75, 0.5]);
    expect([m.prefill, m.decode]).toEqual([1, 6]);
    expect(m.probeS).toBeCloseTo(0.3);
    // a rank that sent no health leaves the others' sums alone
    expect(mergeRankUpdates([a, update(1, [0, 0, 0, 0, 0])], [2, 3]).health).toEqual(a.health);
  });

  it("carries one rank's figures: totals over the layers, and the chosen layer in detail", () => {
    const s = rankSample(7, 2, update(3, [1, 2, 3, 4, 5], { timeS: [0.5, 0.25], expertS: [0.125, 0.125] }), 1);
    expect(s).toEqual({ handle: 7, rank: 2, passes: 3, ts: 103, tokens: 6, load: 15, layerLoad: 12, dropped: 1, timeS: 0.75, expertS: 0.25, counts: [3, 4, 5] });
    expect(rankSample(7, 2, update(3, [1, 2, 3, 4, 5]), 1, false).counts).toBeUndefined(); // too many ranks for one message
    expect(rankSample(7, 2, update(3, [1, 2, 3, 4, 5]), 5).counts).toBeUndefined();
  });
});

const model = (layers: Array<[string, number, number[]?]>, cls = 'Model'): ModelInfo => ({
  id: 0, class: cls, model_type: '', device: 'cpu', dtype: 'float32',
  layers: layers.map(([name, experts, held], i) => ({ ...layerInfo(i, experts, 2), name, ...(held ? { held } : {}) })),
});

describe('ranks that cannot be merged', () => {
  it('tells another model apart by its MoE layers and their global widths, not by what a rank holds', () => {
    const job = model([['layers.0.mlp', 8], ['layers.1.mlp', 8]]);
    expect(modelMismatch(job, model([['layers.0.mlp', 8, [2, 3]], ['layers.1.mlp', 8, [2, 3]]]))).toBeNull();
    expect(modelMismatch(job, model([['layers.0.mlp', 8]]))).toBe('it runs Model with 1 MoE layer, the job Model with 2 MoE layers');
    expect(modelMismatch(job, model([['layers.0.mlp', 8], ['layers.2.mlp', 8]]))).toBe("its MoE layer 1 is layers.2.mlp, the job's is layers.1.mlp");
    expect(modelMismatch(job, model([['layers.0.mlp', 16], ['layers.1.mlp', 8]]))).toBe("its layer layers.0.mlp chooses among 16 experts, the job's among 8");
  });

  it('lets ranks hold the same slice (replicas) or different ones, but not part of another rank\'s', () => {
    const layers = model([['layers.0.mlp', 8]]).layers;
    const others = [{ rank: 0, held: [[0, 1, 2, 3]] }, { rank: 1, held: [[4, 5, 6, 7]] }];
    expect(expertMapConflict(layers, others, { rank: 2, held: [[0, 1, 2, 3]] })).toBeNull(); // a replica of rank 0
    expect(expertMapConflict(layers, others, { rank: 2, held: [null] })).toBeNull(); // holds every expert
    expect(expertMapConflict(layers, others, { rank: 2, held: [[2, 3, 4, 5]] })).toBe(
      'it says it holds experts 2, 3, 4, 5 of layers.0.mlp, rank 0 holds 0, 1, 2, 3: two ranks that share some experts of a layer '
      + 'but not all (a replica holds the same slice as the rank it copies)');
    expect(heldByLayer(model([['a', 8, [1]], ['b', 4]]))).toEqual([[1], null]);
  });

  it('finds experts no rank holds once the ranks are all there', () => {
    expect(uncoveredExperts([4, 4], [[[0, 1], null], [[2], null]])).toEqual([{ layer: 0, experts: [3] }]);
    expect(uncoveredExperts([4], [[[0, 1]], [[2, 3]]])).toEqual([]);
  });

  it('names ranks the way messages do', () => {
    expect(rankList([3, 0, 1])).toBe('ranks 0, 1 and 3');
    expect(rankList([2])).toBe('rank 2');
    expect(rankList([])).toBe('no rank');
  });
});

const win = (rank: number, more: Partial<RankWindow> = {}): RankWindow => ({
  handle: 100 + rank, rank, pid: 1000 + rank, node: 'n', via: '', status: 'attached', held: null,
  passes: 20, seconds: 2, tokens: 200, load: 400, layerLoad: 300, timeS: 0.1, expertS: null, counts: [1, 2], ...more,
});

describe('judging ranks against each other', () => {
  it('computes rates, shares and ms per pass', () => {
    const [a, b] = rankRows([win(0), win(1, { load: 200 })]);
    // a: 400 assignments of 600 in 2 s; 100 ms in MoE blocks over 20 passes
    expect([a!.passesPerS, a!.tokensPerS, a!.loadPerS, a!.loadShare, a!.moeMsPerPass]).toEqual([10, 100, 200, 400 / 600, 5]);
    expect(a!.expertMsPerPass).toBeNaN();
    expect(b!.loadShare).toBeCloseTo(1 / 3);
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(skew([1, 1, 3])).toBe(3);
    expect(skew([5])).toBeNaN();
  });

  it('names stragglers, overloaded ranks, stalled ranks and ranks that ended; even ranks give nothing', () => {
    expect(rankFindings(rankRows([win(0), win(1), win(2)]))).toEqual([]);
    const rows = rankRows([
      win(0), win(1),
      win(2, { timeS: 0.3 }), // 15 ms per pass against a median of 5: 200 % over
      win(3, { load: 1200 }), // 1200 against the streaming ranks' mean, (400 * 3 + 1200 + 0) / 5 = 480: 150 % over
      win(4, { passes: 0, load: 0, timeS: 0 }),
      win(5, { status: 'exited', message: 'exited' }),
    ]);
    const found = rankFindings(rows);
    expect(found.map((f) => [f.kind, f.rank])).toEqual([['rank_ended', 5], ['rank_stalled', 4], ['rank_straggler', 2], ['rank_overloaded', 3]]);
    expect(found[0]!.message).toBe('Rank 5 (pid 1005 on n) exited; ranks 0, 1, 2, 3 and 4 go on.');
    expect(found[2]!.value).toBeCloseTo(2);
    expect(found[3]!.message).toContain("Rank 3's experts process 150% more token assignments than the mean rank's (43% of the job's expert work)");
    // expert parallel: the time inside each rank's own experts decides (the rank the others wait for
    // shows no more time in its MoE blocks than they do)
    const ep = rankRows([win(0, { expertS: 0.04 }), win(1, { expertS: 0.04 }), win(2, { expertS: 0.2 })]);
    expect(ep[2]!.expertMsPerPass).toBeCloseTo(10);
    expect(rankFindings(ep).map((f) => [f.kind, f.rank, f.message])).toEqual([['rank_straggler', 2,
      "Rank 2's experts compute for 10.00 ms per pass, 400% over the median rank's 2.00 ms: the other ranks wait for it in the all-to-all"]]);
    // too few passes or too little load: no verdict on time or load
    expect(rankFindings(rankRows([win(0, { passes: 5 }), win(1, { passes: 5, timeS: 2 })]), { minLoad: 1e9 })).toEqual([]);
  });
});
