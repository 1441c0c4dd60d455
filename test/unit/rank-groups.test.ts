/**
 * The host's grouping of ranks into jobs (native-host/src/rank-groups.ts), driven with rank
 * updates as the host hands them in: what the panel is sent, and when.
 */
import { describe, expect, it } from 'vitest';
import { HANDLE_BASE, type HostMessage, type JobUpdate, type TokenUpdate } from '../../src/protocol/panel';
import type { ModelInfo } from '../../src/protocol/probe';
import { RankGroups, type RankJoin } from '../../native-host/src/rank-groups';
import { layerInfo } from './layer-fixture';

const model = (layers: number, held?: number[]): ModelInfo => ({
  id: 0, class: 'Model', model_type: '', device: 'cpu', dtype: 'float32',
  layers: Array.from({ length: layers }, (_, i) => ({ ...layerInfo(i, 4, 2), name: `layers.${i}.mlp`, ...(held ? { held } : {}) })),
});

function setup() {
  const sent: HostMessage[] = [];
  const detached: number[] = [];
  let next = HANDLE_BASE;
  const groups = new RankGroups((m) => sent.push(m), () => next++, (handle) => detached.push(handle));
  const join = (rank: number, more: Partial<RankJoin> = {}) => groups.join({
    handle: 1000 + rank, pid: 1000 + rank, node: 'gpu-1', via: '', rank, worldSize: 2, key: 'torch:run@10.0.0.1:29500', label: 'torchrun run, world 2',
    model: model(1, rank === 0 ? [0, 1] : [2, 3]), method: 'ptrace', ms: 50, python: '3.11', framework: 'torch', frameworkVersion: '2.13', argv: ['train.py'],
    ...more,
  });
  const of = <T extends HostMessage['type']>(type: T) => sent.filter((m): m is Extract<HostMessage, { type: T }> => m.type === type);
  return { groups, sent, detached, join, of };
}

const counts = (handle: number, passes: number, c: number[]): JobUpdate => ({
  type: 'update', pid: handle, model: 0, passes, layers: 1, widths: [4], counts: c, tokens: [passes * 8], ts: 1000 + passes, dropped: 0, timeS: [passes * 0.01],
});

describe('rank groups', () => {
  it('shows the ranks of one job as one: its logical model, the sum of their counts, each rank beside', () => {
    const { groups, join, of } = setup();
    expect(join(0)).toEqual({ group: HANDLE_BASE });
    expect(join(1)).toEqual({ group: HANDLE_BASE });
    const attached = of('attached');
    expect(attached).toHaveLength(1);
    expect(attached[0]).toMatchObject({ pid: HANDLE_BASE, method: 'ranks', job: { key: 'torch:run@10.0.0.1:29500', label: 'torchrun run, world 2', worldSize: 2 } });
    expect(attached[0]!.models[0]!.layers[0]!.held).toBeUndefined(); // what one rank holds is not the job's
    expect(of('ranks').at(-1)!.ranks.map((r) => [r.rank, r.status, r.held])).toEqual([[0, 'attached', [[0, 1]]], [1, 'attached', [[2, 3]]]]);

    groups.counts(1000, counts(1000, 3, [5, 7, 0, 0]));
    groups.counts(1001, counts(1001, 4, [0, 0, 6, 2]));
    groups.flush();
    const u = of('update').at(-1)!;
    expect([u.pid, u.passes, u.counts, u.tokens]).toEqual([HANDLE_BASE, 7, [5, 7, 6, 2], [56]]);
    expect(u.ranks!.map((r) => [r.rank, r.passes, r.load, r.layerLoad, r.counts])).toEqual([[0, 3, 12, 12, [5, 7, 0, 0]], [1, 4, 8, 8, [0, 0, 6, 2]]]);
    groups.flush();
    expect(of('update')).toHaveLength(1); // nothing new: nothing sent

    groups.setDetailLayer(HANDLE_BASE, 0);
    groups.flush();
    expect(of('update')).toHaveLength(2);
  });

  it('leaves the per-rank counts out of updates when a job has too many ranks for one message', () => {
    const { groups, of } = setup();
    const wide: ModelInfo = { ...model(1), layers: [{ ...layerInfo(0, 256, 8), name: 'layers.0.mlp' }] };
    for (let rank = 0; rank < 200; rank++) {
      groups.join({ handle: 5000 + rank, pid: 5000 + rank, node: 'n', via: '', rank, worldSize: 200, key: 'k', label: 'l', model: wide,
        method: 'ptrace', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: [] });
      groups.counts(5000 + rank, { ...counts(5000 + rank, 1, []), widths: [256], counts: new Array(256).fill(1) });
    }
    groups.flush();
    const u = of('update').at(-1)!;
    expect(u.counts[0]).toBe(200);
    expect(u.ranks).toHaveLength(200);
    expect(u.ranks!.every((r) => r.counts === undefined && r.layerLoad === 256)).toBe(true);
    expect(JSON.stringify(u).length).toBeLessThan(1024 * 1024);
  });

  it('numbers the token records of its lowest rank on the job\'s passes, parts of one pass alike', () => {
    const { groups, join, sent } = setup();
    join(0);
    join(1);
    groups.counts(1000, counts(1000, 3, [1, 1, 0, 0]));
    groups.counts(1001, counts(1001, 3, [0, 0, 1, 1]));
    groups.flush(); // the job has run 6 passes
    const tokens = (handle: number, pass: number, layer: number): TokenUpdate => ({ type: 'tokens', pid: handle, model: 0, pass, phase: 'prefill', tokenIds: null, texts: null, layers: [{ layer, n: 1, k: 2, ids: [0, 1], weights: null }] });
    groups.tokens(1001, tokens(1001, 4, 0)); // not the lowest rank: not shown
    groups.tokens(1000, tokens(1000, 4, 0));
    groups.tokens(1000, tokens(1000, 4, 1)); // the same pass, split by layers
    groups.tokens(1000, tokens(1000, 5, 0));
    const shown = sent.filter((m) => m.type === 'tokens') as TokenUpdate[];
    expect(shown.map((t) => [t.pid, t.pass])).toEqual([[HANDLE_BASE, 7], [HANDLE_BASE, 7], [HANDLE_BASE, 8]]);
  });

  it('names a rank that ends, keeps its counts in the job, and ends the job with its last rank', () => {
    const { groups, join, of } = setup();
    join(0);
    join(1);
    groups.counts(1001, counts(1001, 4, [0, 0, 6, 2]));
    groups.end(1001, 'exited', 'exited');
    expect(of('error').at(-1)).toMatchObject({ pid: HANDLE_BASE, code: 'rank_lost', message: 'Rank 1 (pid 1001 on gpu-1) exited; rank 0 goes on.' });
    expect(of('update').at(-1)!.counts).toEqual([0, 0, 6, 2]);
    expect(of('ranks').at(-1)!.ranks.map((r) => r.status)).toEqual(['attached', 'exited']);
    groups.end(1000, 'lost', 'stopped streaming: lost the relay');
    expect(of('detached').at(-1)).toMatchObject({ pid: HANDLE_BASE, reason: 'probe_closed' });
    // the same job attached again is a new one
    expect(join(0).group).toBe(HANDLE_BASE + 1);
  });

  it('says nothing of ranks ending when the panel asked to detach the job', () => {
    const { groups, join, of } = setup();
    join(0);
    join(1);
    groups.detaching(HANDLE_BASE);
    groups.end(1000, 'detached', 'was detached');
    groups.end(1001, 'detached', 'was detached');
    expect(of('error')).toHaveLength(0);
    expect(of('detached')).toEqual([{ type: 'detached', pid: HANDLE_BASE, reason: 'requested', message: undefined }]);
  });

  it('leaves out a rank that disagrees: the lower rank wins whatever the order they came in', () => {
    const { join, of, detached } = setup();
    expect(join(1, { model: model(2, [2, 3]) }).excluded).toBeUndefined(); // first in, with 2 layers
    expect(join(0).excluded).toBeUndefined(); // rank 0 runs 1 layer: rank 1 goes
    expect(detached).toEqual([1001]);
    expect(of('error').map((e) => e.message)).toEqual([
      "Rank 1 (pid 1001 on gpu-1) is left out of the job's view and detached: it reports a different model than rank 0: "
      + 'it runs Model with 2 MoE layers, rank 0 Model with 1 MoE layer. The other ranks go on.',
    ]);
    expect(of('attached').at(-1)!.models[0]!.layers).toHaveLength(1); // the job's model is rank 0's now
    expect(of('ranks').at(-1)!.ranks.map((r) => [r.rank, r.status])).toEqual([[0, 'attached'], [1, 'excluded']]);
  });

  it('leaves out a second rank 0, another world size, and an expert map that overlaps another rank\'s in part', () => {
    const { join, of } = setup();
    join(0);
    expect(join(0, { handle: 2000, pid: 2000 }).excluded).toBe('rank 0 (pid 1000 on gpu-1) already is rank 0 of this job');
    expect(join(1, { worldSize: 4 }).excluded).toBe('it says the world has 4 ranks, the job 2');
    expect(join(1, { model: model(1, [1, 2]) }).excluded).toContain("its expert map conflicts with rank 0's: it says it holds experts 1, 2 of layers.0.mlp, rank 0 holds 0, 1");
    expect(of('error').every((e) => e.code === 'rank_conflict')).toBe(true);
  });

  it('says so when all ranks are in and no rank holds some experts', () => {
    const { join, of } = setup();
    join(0, { model: model(1, [0]) });
    join(1, { model: model(1, [2]) });
    expect(of('error').at(-1)!.message).toBe(
      'All 2 ranks are attached, yet no rank says it holds experts 1, 3 of layers.0.mlp: their expert maps do not cover the model, so that load is not seen.');
  });
});
