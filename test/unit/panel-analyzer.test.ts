import { describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate } from '../../src/protocol/panel';
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import { Analyzer, TIMELINE_FIELDS, recentTokenRows, timelineColumns, type TimelinePoint } from '../../panels/engine/analyzer';
import { Ring } from '../../panels/engine/ring';
import { metricsCsv, metricsJson } from '../../panels/engine/export';
import { layerInfo } from './layer-fixture';

const L = 2;
const E = 4;
const models = [{ id: 0, class: 'M', model_type: 'm', device: 'cpu', dtype: 'f32', layers: [0, 1].map((i) => layerInfo(i, E, 2)) }];
const attached: HostMessage = { type: 'attached', pid: 7, method: 'socket', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: [], models };

/** Cumulative update after `passes` passes where each pass routes `perPass` (layers x experts) and takes 0.25 s. */
function update(passes: number, perPass: number[], extra: Partial<JobUpdate> = {}): JobUpdate {
  return {
    type: 'update', pid: 7, model: 0, passes, layers: L, widths: [E, E], counts: perPass.map((c) => c * passes), tokens: [16 * passes, 16 * passes],
    ts: 1000 + passes * 0.25, dropped: 0, ...extra,
  };
}

describe('Ring', () => {
  it('keeps the newest items up to its capacity', () => {
    const r = new Ring<number>(3);
    for (let i = 0; i < 5; i++) r.push(i);
    expect(r.toArray()).toEqual([2, 3, 4]);
    expect(r.at(-1)).toBe(4);
    expect(r.evicted).toBe(2);
  });
});

describe('timelineColumns', () => {
  it('holds point i of every field at index i, and per-layer MaxVio row-major', () => {
    const point = (i: number): TimelinePoint => ({
      t: i, passesPerS: 10 + i, tokensPerS: 100 * i, maxVio: i / 4, routerEntropy: i === 1 ? NaN : 0.5, decodeShare: i % 2, backwardPerS: NaN,
      maxVioByLayer: Float32Array.from([i, i + 0.5, 99]),
    });
    const c = timelineColumns([0, 1, 2].map(point), 2);
    expect(c.length).toBe(3);
    for (const f of TIMELINE_FIELDS) expect(Array.from(c[f]), f).toEqual([0, 1, 2].map((i) => point(i)[f]));
    expect(Array.from(c.maxVioByLayer)).toEqual([0, 0.5, 1, 1.5, 2, 2.5]);
    expect(timelineColumns([], 4).t).toHaveLength(0);
  });
});

describe('Analyzer', () => {
  // Layer 0 even; layer 1: expert 3 dead, expert 0 hot.
  const perPass = [8, 8, 8, 8, 16, 10, 6, 0];

  it('windows cumulative counts by differencing snapshots, exactly', () => {
    const a = new Analyzer();
    a.ingest(attached);
    for (let p = 1; p <= 100; p++) a.ingest(update(p, perPass));
    const all = a.analyze(7, { windowMode: 'all' })!;
    expect(all.window.passes).toBe(100);
    expect(Array.from(all.window.counts)).toEqual(perPass.map((c) => c * 100));
    const last2s = a.analyze(7, { windowMode: 'seconds', windowValue: 2 })!;
    expect(last2s.window.passes).toBe(8);
    expect(Array.from(last2s.window.counts.subarray(0, E))).toEqual([64, 64, 64, 64]);
    const tokens = a.analyze(7, { windowMode: 'tokens', windowValue: 160 })!; // 16 tokens/pass in layer 0 (32 assignments, top-2)
    expect(tokens.window.passes).toBe(10);
    expect(tokens.window.tokens).toBe(160);
  });

  it('finds the dead expert once the window is big enough, with configurable thresholds', () => {
    const a = new Analyzer();
    a.ingest(attached);
    for (let p = 1; p <= 20; p++) a.ingest(update(p, perPass));
    expect(a.analyze(7, { windowMode: 'all' })!.findings.filter((f) => f.kind === 'dead_expert')).toEqual([]); // 320 tokens < 1000
    const small = a.analyze(7, { windowMode: 'all', thresholds: { minTokens: 100 } })!;
    const dead = small.findings.filter((f) => f.kind === 'dead_expert');
    expect(dead.map((f) => [f.layer, f.experts])).toEqual([[1, [3]]]);
    expect(small.judgeable).toEqual([100, 100]);
  });

  it('reads router health, block times and the probe cost over the window', () => {
    const a = new Analyzer();
    a.ingest(attached);
    const hc = HEALTH_COLUMNS.length;
    for (let p = 1; p <= 10; p++) {
      const health = new Array(L * hc).fill(0);
      health[0] = 16 * p; // logit_tokens
      health[1] = 16 * p * Math.log(E) * 0.5; // entropy_sum: normalized 0.5
      health[2] = 16 * p * 9; // zloss_sum: logsumexp 3 for every token
      health[hc + 3] = p === 10 ? 2 : 0; // NaN logits in layer 1 at the end
      a.ingest(update(p, perPass, { health, timeS: [0.002 * p, 0.006 * p], probeS: 0.0008 * p, prefill: p, decode: 0 }));
    }
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.rows[0]!.routerEntropy).toBeCloseTo(0.5);
    expect(r.rows[0]!.zLoss).toBeCloseTo(9);
    expect(r.rows[1]!.zLoss).toBeNaN(); // no logits measured in layer 1
    expect(r.rows[1]!.balancedness).toBeCloseTo(0.5); // mean 8 / max 16 per pass
    expect(r.rows[1]!.nan).toBe(2);
    expect(r.findings.some((f) => f.kind === 'nan_logits' && f.layer === 1)).toBe(true);
    expect(r.rows[0]!.msPerPass).toBeCloseTo(2);
    expect(r.profile.probeShare).toBeCloseTo(0.1);
    expect(r.timeline.length).toBeGreaterThan(0);
    const csv = metricsCsv(r).split('\n');
    expect(csv[0]).toMatch(/^layer,name,model_layer,stack,kind,design,source,experts,identity_experts,top_k,tokens,max_vio/);
    expect(csv[2]).toMatch(/^1,model\.layers\.1\.mlp,1,model\.layers,mlp,top-k,dispatched,4,0,2,/);
    expect(JSON.parse(metricsJson(r)).layers[1].counts).toEqual([160, 100, 60, 0]);
  });

  it('merges token parts of one pass and computes co-activation for the chosen layer', () => {
    const a = new Analyzer();
    a.ingest(attached);
    a.ingest(update(1, perPass));
    a.ingest({ type: 'tokens', pid: 7, model: 0, pass: 2, phase: 'decode', tokenIds: [5, 6], texts: ['<b>', 'x'], layers: [{ layer: 0, n: 2, k: 2, ids: [0, 1, 0, 2], weights: [0.6, 0.4, 0.7, 0.3] }] });
    a.ingest({ type: 'tokens', pid: 7, model: 0, pass: 2, phase: 'decode', tokenIds: [5, 6], texts: ['<b>', 'x'], layers: [{ layer: 1, n: 2, k: 2, ids: [1, 2, 1, 2], weights: null }] });
    a.ingest(update(2, perPass));
    const r = a.analyze(7, { windowMode: 'all', layer: 0 })!;
    expect(r.tokens).toHaveLength(1);
    expect(r.tokens[0]!.layers.map((l) => l.layer)).toEqual([0, 1]);
    expect(r.tokens[0]!.texts).toEqual(['<b>', 'x']);
    const m = r.coactivation!.matrix;
    expect(r.coactivation!.tokens).toBe(2);
    expect(m[0 * E + 1]).toBeCloseTo(0.5); // P(1 | 0)
    expect(m[1 * E + 0]).toBeCloseTo(1); // P(0 | 1)
  });

  it('reports vocabulary specialization of the chosen layer from sampled token ids', () => {
    const a = new Analyzer();
    a.ingest(attached);
    a.ingest(update(1, perPass));
    // Layer 1, first choices: token id 5 -> expert 2 in 10 of 12 occurrences; id 6 -> expert 0 in 12 of 12;
    // id 7 seen twice (under the 10-occurrence floor, left out). Share = (10 + 12) / (12 + 12) = 0.9167.
    const tokenIds = [...Array(12).fill(5), ...Array(12).fill(6), 7, 7];
    const firsts = [...Array(10).fill(2), 1, 3, ...Array(12).fill(0), 1, 1];
    const ids = firsts.flatMap((e) => [e, (e + 1) % E]);
    a.ingest({ type: 'tokens', pid: 7, model: 0, pass: 2, phase: 'prefill', tokenIds, texts: null, layers: [{ layer: 1, n: 26, k: 2, ids, weights: null }] });
    a.ingest(update(2, perPass));
    const r = a.analyze(7, { windowMode: 'all', layer: 1 })!;
    expect(r.vocabulary).toEqual({ layer: 1, share: 22 / 24, ids: 2, tokens: 24, minOccurrences: 10 });
    expect(a.analyze(7, { windowMode: 'all', layer: 0 })!.vocabulary).toBeNull();
  });

  it('keeps bounded memory and starts over when the counters go backwards', () => {
    const a = new Analyzer();
    a.ingest(attached);
    for (let p = 1; p <= 5000; p++) a.ingest(update(p, perPass));
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.window.passes).toBeLessThan(5000); // the oldest snapshots were dropped
    expect(r.timeline.length).toBeLessThanOrEqual(3600);
    a.ingest(update(3, perPass));
    expect(a.analyze(7, { windowMode: 'all' })!.window.passes).toBe(3);
    a.clear(7);
    a.ingest(update(4, perPass));
    expect(a.analyze(7, { windowMode: 'all' })!.window.passes).toBe(1);
  });
});

describe('recentTokenRows', () => {
  const rows = (...ns: number[]) => ns.map((n, i) => ({ pass: i + 1, n }));
  it('keeps the newest passes within the row and token limits', () => {
    // Newest first: 1 + 1 + 1 = 3 tokens fit a budget of 3; the 32-token prefill before them does not.
    expect(recentTokenRows(rows(32, 1, 1, 1), 10, 3).map((r) => r.pass)).toEqual([2, 3, 4]);
    // The row limit binds first.
    expect(recentTokenRows(rows(1, 1, 1, 1), 2, 100).map((r) => r.pass)).toEqual([3, 4]);
    // A single pass over the budget is still shown.
    expect(recentTokenRows(rows(1, 500), 10, 400).map((r) => r.pass)).toEqual([2]);
    expect(recentTokenRows([], 10, 400)).toEqual([]);
  });
});

describe('Analyzer with layers of different widths', () => {
  // JetMoE-like: 8 attention experts in layer 0 beside 4 MLP experts in layer 1, and a LongCat-like
  // layer 2 of 10 experts whose last 2 are zero-compute. Every layer is healthy: even routing.
  const infos = [
    layerInfo(0, 8, 2, { name: 'model.layers.0.self_attention.experts', kind: 'attention', model_index: 0 }),
    layerInfo(1, 4, 2, { name: 'model.layers.0.mlp', model_index: 0 }),
    layerInfo(2, 10, 2, { name: 'model.layers.2.mlp', model_index: 2, identity_experts: 2 }),
  ];
  const widths = [8, 4, 10];
  const perPass = [...new Array(8).fill(4), ...new Array(4).fill(8), ...new Array(10).fill(3), 0, 0].slice(0, 22);
  perPass[20] = 1; // a few tokens skip compute in layer 2
  perPass[21] = 1;
  const mixedAttached: HostMessage = { ...attached, models: [{ ...models[0]!, layers: infos }] };
  const mixedUpdate = (passes: number): JobUpdate => ({
    type: 'update', pid: 7, model: 0, passes, layers: 3, widths, counts: perPass.map((c) => c * passes), tokens: [16 * passes, 16 * passes, 16 * passes],
    ts: 1000 + passes * 0.25, dropped: 0,
  });

  it('keeps each layer at its own width: no empty experts that do not exist, entropy over its own ln E', () => {
    const a = new Analyzer();
    a.ingest(mixedAttached);
    for (let p = 1; p <= 200; p++) a.ingest(mixedUpdate(p));
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.widths).toEqual(widths);
    expect(r.offsets).toEqual([0, 8, 12]);
    expect(r.maxWidth).toBe(10);
    expect(r.rows.map((x) => [x.experts, x.zeroExperts])).toEqual([[8, 0], [4, 0], [10, 0]]);
    expect(r.rows[0]!.normalizedEntropy).toBeCloseTo(1, 10); // ln 8 / ln 8, not ln 8 / ln 10
    expect(r.rows[1]!.normalizedEntropy).toBeCloseTo(1, 10);
    expect(Array.from(r.window.counts.subarray(8, 12))).toEqual([1600, 1600, 1600, 1600]);
    expect(r.rows.map((x) => x.tokens)).toEqual([3200, 3200, 3200]);
    expect(r.findings).toEqual([]);
    expect(r.rows.map((x) => x.label)).toEqual([
      'model.layers.0.self_attention.experts (layer 0, attention experts)', 'model.layers.0.mlp (layer 0)', 'model.layers.2.mlp (layer 2)',
    ]);
    const csv = metricsCsv(r).split('\n');
    expect(csv.filter((line) => /^1,\d+,\d+$/.test(line))).toHaveLength(4); // layer 1's experts only
    expect(JSON.parse(metricsJson(r)).layers.map((l: { counts: number[] }) => l.counts.length)).toEqual(widths);
  });

  it('names findings by module path and model layer, and learns how a layer is read from a layers message', () => {
    const a = new Analyzer();
    a.ingest(mixedAttached);
    const dead = perPass.slice();
    dead[12] = 0; // layer 2, expert 0 never chosen
    for (let p = 1; p <= 200; p++) a.ingest({ ...mixedUpdate(p), counts: dead.map((c) => c * p) });
    const f = a.analyze(7, { windowMode: 'all' })!.findings;
    expect(f.map((x) => [x.kind, x.layer, x.experts])).toEqual([['dead_expert', 2, [0]]]);
    expect(f[0]!.message).toMatch(/^model\.layers\.2\.mlp \(layer 2\): expert 0 received no tokens/);
    a.ingest({ type: 'layers', pid: 7, model: 0, layers: [infos[0]!, infos[1]!, { ...infos[2]!, design: 'expert-choice', source: 'dispatched', token_source: 'none' }] });
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.rows[2]!.info.design).toBe('expert-choice');
    expect(r.findings).toEqual([]); // expert choice: equal loads by design, nothing to judge
  });

  it('starts over when a layer changes width (a new model in the same process)', () => {
    const a = new Analyzer();
    a.ingest(mixedAttached);
    a.ingest(mixedUpdate(1));
    a.ingest(update(1, [1, 1, 1, 1, 1, 1, 1, 1]));
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.widths).toEqual([E, E]);
    expect(r.rows[0]!.label).toBe('layer 0'); // no description for this shape: named by index
  });
});

describe('Analyzer: several models in one job, and training passes', () => {
  const perPass = [8, 8, 8, 8, 16, 10, 6, 0];

  it('keeps each model of a job apart (a torch model beside an ONNX Runtime session) and shows the one asked for', () => {
    const a = new Analyzer();
    const two = [models[0]!, { ...models[0]!, id: 1, class: 'InferenceSession', framework: 'onnxruntime', layers: [layerInfo(0, 8, 2)] }];
    a.ingest({ ...attached, framework: 'torch+onnxruntime', models: two } as HostMessage);
    for (let p = 1; p <= 10; p++) {
      a.ingest(update(p, perPass));
      a.ingest({ type: 'update', pid: 7, model: 1, passes: p, layers: 1, widths: [8], counts: [1, 2, 3, 4, 5, 6, 7, 0].map((c) => c * p), tokens: [14 * p], ts: 1000 + p * 0.25, dropped: 0 });
    }
    const first = a.analyze(7, { windowMode: 'all' })!;
    expect(first.model).toBe(0);
    expect(Array.from(first.window.counts)).toEqual(perPass.map((c) => c * 10));
    const session = a.analyze(7, { windowMode: 'all', model: 1 })!;
    expect(session.model).toBe(1);
    expect(session.widths).toEqual([8]);
    expect(Array.from(session.window.counts)).toEqual([10, 20, 30, 40, 50, 60, 70, 0]);
    expect(session.findings.map((f) => [f.kind, f.layer, f.experts])).toEqual([]); // 140 tokens: not judged
    expect(a.analyze(7, { windowMode: 'all', model: 5 })!.model).toBe(0); // unknown model: the first one
  });

  it('carries training passes: losses per pass as sent, forward and backward passes counted apart, backward ms per layer', () => {
    const a = new Analyzer();
    a.ingest(attached);
    expect((a.ingest(update(1, perPass)), a.analyze(7, { windowMode: 'all' })!.training)).toBeNull();
    for (let p = 2; p <= 9; p++) a.ingest(update(p, perPass, { train: p - 1, backward: p - 2, backwardS: [0.002 * (p - 2), 0.004 * (p - 2)] }));
    a.ingest({ type: 'losses', pid: 7, model: 0, passes: [2, 3], ts: 1000.75, aux: [[2.01, 2.25], [2.5, null]], z: [[0.5, 0.75], [0.625, 0.375]], modelAux: [2.13, null], loss: [5.5, 5.25] });
    const r = a.analyze(7, { windowMode: 'all' })!;
    expect(r.training!.trainPasses).toBe(8);
    expect(r.training!.backwardPasses).toBe(7);
    expect(r.training!.rows).toEqual([
      { pass: 2, ts: 1000.75, aux: [2.01, 2.25], z: [0.5, 0.75], modelAux: 2.13, loss: 5.5 },
      { pass: 3, ts: 1000.75, aux: [2.5, NaN], z: [0.625, 0.375], modelAux: NaN, loss: 5.25 },
    ]);
    expect(r.rows.map((row) => row.backwardMsPerPass)).toEqual([2, 4].map((ms) => expect.closeTo(ms, 9)));
    expect(r.timeline.backwardPerS.at(-1)).toBeCloseTo(4, 6); // one backward pass per 0.25 s
    a.clear(7);
    expect(a.analyze(7, { windowMode: 'all' })!.training!.rows).toEqual([]);
  });
});
