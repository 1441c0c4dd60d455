/**
 * A distributed job in the panel's store and analyzer: the job's updates carry each rank, the
 * Ranks analysis differences them over the window, the store asks the host for the layer it shows,
 * and a recording of the job opens with its ranks.
 */
import { describe, expect, it } from 'vitest';
import { HANDLE_BASE, parsePanelRequest, type HostMessage, type JobUpdate, type PanelRequest, type RankSample } from '../../src/protocol/panel';
import { Analyzer } from '../../panels/engine/analyzer';
import { Store } from '../../panels/store';
import { formatProcesses } from '../../cli/commands/list';
import { layerInfo } from './layer-fixture';

const JOB = HANDLE_BASE;
const models = [{ id: 0, class: 'Model', model_type: '', device: 'cpu', dtype: 'float32', layers: [layerInfo(0, 4, 2), layerInfo(1, 4, 2)] }];
const attached: HostMessage = {
  type: 'attached', pid: JOB, method: 'ranks', ms: 60, python: '3.11', framework: 'torch', frameworkVersion: '2.13', argv: [], models,
  job: { key: 'torch:r@h:1', label: 'torchrun r, world 2', worldSize: 2 },
};
const ranks: HostMessage = {
  type: 'ranks', pid: JOB, key: 'torch:r@h:1', label: 'torchrun r, world 2', worldSize: 2,
  ranks: [
    { handle: 11, pid: 11, rank: 0, node: 'a', via: '', status: 'attached', held: [[0, 1], [0, 1]] },
    { handle: 12, pid: 12, rank: 1, node: 'a', via: '', status: 'attached', held: [[2, 3], [2, 3]] },
  ],
};

/** Rank r after p passes: its experts took 10 rows per pass each (layer 0: experts 2r, 2r+1), 20 ms per pass in MoE blocks. */
function sample(rank: number, p: number, ts: number, layer: number): RankSample {
  const counts = [0, 0, 0, 0];
  counts[2 * rank] = 10 * p;
  counts[2 * rank + 1] = (10 + 5 * rank) * p;
  const load = counts.reduce((a, b) => a + b, 0);
  return { handle: 11 + rank, rank, passes: p, ts, tokens: 8 * p, load, layerLoad: layer === 0 ? load : 0, timeS: 0.02 * p, counts: layer === 0 ? counts : [0, 0, 0, 0], dropped: 0 };
}

function update(p: number, ts: number, layer = 0): JobUpdate {
  const r = [sample(0, p, ts, layer), sample(1, p, ts, layer)];
  return {
    type: 'update', pid: JOB, model: 0, passes: 2 * p, layers: 2, widths: [4, 4], counts: [10 * p, 10 * p, 10 * p, 15 * p, 0, 0, 0, 0],
    tokens: [16 * p, 16 * p], ts, dropped: 0, ranks: r, rankLayer: layer,
  };
}

function setup() {
  const sent: PanelRequest[] = [];
  const store = new Store();
  store.connect((r) => sent.push(r));
  store.useAnalyzer(new Analyzer());
  return { store, sent };
}

describe('a distributed job in the panel', () => {
  it('analyses each rank over the window beside the job', async () => {
    const { store, sent } = setup();
    store.attachJob([11, 12]);
    expect(sent.filter((r) => r.type === 'attach').map((r) => (r as { pid: number }).pid)).toEqual([11, 12]);
    store.receive(attached);
    expect(store.state.selectedPid).toBe(JOB);
    expect(sent).toContainEqual({ type: 'rank-layer', pid: JOB, layer: 0 });
    store.receive(ranks);
    for (let p = 1; p <= 10; p++) store.receive(update(p, 1000 + p));
    store.setSettings({ windowMode: 'seconds', windowValue: 5 });
    await store.tick();
    const a = store.state.analyses.get(JOB)!;
    expect(a.window.passes).toBe(10); // the job's passes: both ranks' (5 each over the last 5 s)
    const r = a.ranks!;
    expect(r.label).toBe('torchrun r, world 2');
    expect(r.rows.map((x) => [x.rank, x.passes, x.seconds, x.held, x.counts, x.layerLoad])).toEqual([
      [0, 5, 5, [0, 1], [50, 50, 0, 0], 100],
      [1, 5, 5, [2, 3], [0, 0, 50, 75], 125],
    ]);
    expect(r.rows[0]!.moeMsPerPass).toBeCloseTo(20);
    expect(r.rows[1]!.loadShare).toBeCloseTo(125 / 225);
    expect(r.loadSkew).toBeCloseTo(125 / 112.5); // busiest over the median of two
    expect(r.findings).toEqual([]);
    expect(store.state.jobs.get(JOB)!.ranks!.ranks).toHaveLength(2);

    // another layer: the host is asked for it, and the counts cover only updates that carry it
    store.selectLayer(1);
    expect(sent.at(-1)).toEqual({ type: 'rank-layer', pid: JOB, layer: 1 });
    for (let p = 11; p <= 12; p++) store.receive(update(p, 1000 + p, 1));
    await store.tick();
    const b = store.state.analyses.get(JOB)!.ranks!;
    expect(b.layer).toBe(1);
    expect(b.countsSeconds).toBe(1); // from the first update of layer 1 to the last
  });

  it('opens a recording of a distributed job with its ranks', async () => {
    const { store } = setup();
    store.receive(attached);
    store.receive(ranks);
    store.startRecording();
    for (let p = 1; p <= 4; p++) store.receive(update(p, 1000 + p));
    store.receive({ ...ranks, ranks: ranks.ranks.map((r) => (r.rank === 1 ? { ...r, status: 'exited', message: 'exited' } : r)) } as HostMessage);
    store.stopRecording();
    expect(await store.openRecording('job.moerec', store.state.saved!.text)).toBe(true);
    const id = store.state.selectedPid!;
    expect(store.state.jobs.get(id)!.ranks!.ranks.map((r) => r.status)).toEqual(['attached', 'exited']);
    const r = store.state.analyses.get(id)!.ranks!;
    expect(r.rows.map((x) => x.status)).toEqual(['attached', 'exited']);
    expect(r.findings.map((f) => f.kind)).toEqual(['rank_ended']);
  });
});

describe('requests for distributed jobs', () => {
  it('takes relay connections to loopback only, with a hex token, and a whole layer number', () => {
    expect(parsePanelRequest({ type: 'connect-relay', address: '127.0.0.1:5800', token: 'ab'.repeat(16) })).toEqual({ type: 'connect-relay', address: '127.0.0.1:5800', token: 'ab'.repeat(16) });
    expect(parsePanelRequest({ type: 'connect-relay', address: '10.0.0.5:5800', token: 'ab'.repeat(16) })).toEqual({
      error: 'connect-relay needs a loopback address such as 127.0.0.1:PORT (forward the remote port with ssh -L)',
    });
    expect(parsePanelRequest({ type: 'connect-relay', address: '127.0.0.1:5800', token: 'secret' })).toEqual({ error: 'connect-relay needs the relay token (hex)' });
    expect(parsePanelRequest({ type: 'rank-layer', pid: JOB, layer: 3 })).toEqual({ type: 'rank-layer', pid: JOB, layer: 3 });
    expect(parsePanelRequest({ type: 'rank-layer', pid: JOB, layer: -1 })).toEqual({ error: 'rank-layer needs a whole layer number' });
  });
});

describe('moe-devtools list', () => {
  it('says which rank of which job a process is, when some are ranks', () => {
    const text = formatProcesses([
      { pid: 101, cmdline: 'python train.py', python: '3.11', torch: true, probe: false, attached: false,
        dist: { job: 'torch:f3c1@10.0.0.7:29500', label: 'torchrun f3c1, world 2', rank: 0, worldSize: 2, localRank: 0 } },
      { pid: 205, cmdline: 'python serve.py', python: '3.11', torch: true, probe: false, attached: false },
    ]);
    expect(text.split('\n')).toEqual([
      'PID  PYTHON  PROBE  RANK                         COMMAND',
      '101  3.11           0 of torchrun f3c1, world 2  python train.py',
      '205  3.11                                        python serve.py',
    ]);
  });
});
