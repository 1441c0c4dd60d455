/**
 * What the analysis worker answers the heavier views with (panels/engine/view-data.ts): the flow
 * over the window's token records, 1-second buckets, per-layer metrics over time, the diff of two
 * windows from the session-long history, and the heatmap's column orders. Driven through the
 * Analyzer with host messages, as the panel drives it.
 */
import { describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate, TokenUpdate } from '../../src/protocol/panel';
import { routingFlow, totalVariation, type FlowRecord } from '../../src/analysis';
import { Analyzer } from '../../panels/engine/analyzer';
import { LongHistory } from '../../panels/engine/long-history';
import { thinIndices } from '../../panels/engine/thin';
import { forWorker, packTokenRows } from '../../panels/engine/transfer';
import type { Snapshot } from '../../panels/engine/analyzer';
import { layerInfo } from './layer-fixture';

const E = 4;
const models = [{ id: 0, class: 'M', model_type: 'm', device: 'cpu', dtype: 'f32', layers: [0, 1].map((i) => layerInfo(i, E, 1)) }];
const attached: HostMessage = { type: 'attached', pid: 3, method: 'socket', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: [], models };

/** A job routing `perPass(p)` (8 counts: 2 layers x 4 experts) at 10 passes/s from t = 100 s. */
function run(a: Analyzer, passes: number, perPass: (p: number) => number[]) {
  const total = new Array(8).fill(0);
  a.ingest(attached);
  for (let p = 1; p <= passes; p++) {
    perPass(p).forEach((c, i) => (total[i] += c));
    const update: JobUpdate = { type: 'update', pid: 3, model: 0, passes: p, layers: 2, widths: [E, E], counts: total.slice(), ts: 100 + p / 10, dropped: 0 };
    a.ingest(update);
  }
}

describe('view data', () => {
  it('answers the flow request with the flow of the window’s token records', () => {
    const a = new Analyzer();
    run(a, 20, () => [1, 1, 1, 1, 1, 1, 1, 1]);
    const tokens: FlowRecord[] = [];
    for (let pass = 5; pass <= 20; pass++) {
      const rec = { pass, tokenIds: [pass, pass + 1], texts: ['a', 'bb'], layers: [{ layer: 0, k: 1, ids: [pass % 4, 1] }, { layer: 1, k: 1, ids: [(pass + 1) % 4, 2] }] };
      tokens.push(rec);
      a.ingest({ type: 'tokens', pid: 3, model: 0, pass, phase: 'prefill', tokenIds: rec.tokenIds, texts: rec.texts, layers: rec.layers.map((l) => ({ ...l, n: 2, weights: null })) });
    }
    // A window of the last 0.4 s: the passes after its baseline only.
    const r = a.analyze(3, { windowMode: 'seconds', windowValue: 0.4, views: { flow: { from: 0, to: 1, weighting: 'top1', filter: '', through: null } } })!;
    const from = r.window.fromPass;
    expect(from).toBeGreaterThanOrEqual(10); // some records fall before the window
    const want = routingFlow(tokens.filter((t) => t.pass > from), [0, 1], [E, E]);
    expect(r.views!.flow!.flow.passes).toEqual(tokens.filter((t) => t.pass > from).map((t) => t.pass));
    expect(Array.from(r.views!.flow!.flow.pairs[0]!.weight)).toEqual(Array.from(want.pairs[0]!.weight));
    expect(r.views!.flow!.flow.tokens).toBe(2 * (20 - from));
    // Filtered, and following layer 0 expert 1.
    const f = a.analyze(3, { windowMode: 'all', views: { flow: { from: 0, to: 1, weighting: 'top1', filter: 'BB', through: { layer: 0, expert: 1 } } } })!;
    expect(f.views!.flow!.flow.tokens).toBe(16); // 'bb': the second token of each of the 16 passes
    expect(f.views!.flow!.highlight!.tokens).toBe(16);
    expect(f.views!.flow!.omitted[0]).toEqual({ transitions: 0, weight: 0 });
    // No view asked: nothing computed.
    expect(a.analyze(3, {})!.views).toBeUndefined();
  });

  it('closes 1-second buckets that are exactly the difference of their end snapshots', () => {
    const a = new Analyzer();
    run(a, 35, (p) => [p, 0, 1, 2, 3, 3, 3, 3]);
    const r = a.analyze(3, { views: { buckets: { since: 0 } } })!;
    const b = r.views!.buckets!.buckets;
    expect(b.map((x) => [x.fromPass, x.toPass])).toEqual([[1, 11], [11, 21], [21, 31]]);
    const sum = (from: number, to: number) => { let s = 0; for (let p = from + 1; p <= to; p++) s += p; return s; };
    expect(Array.from(b[1]!.counts)).toEqual([sum(11, 21), 0, 10, 20, 30, 30, 30, 30]);
    expect(b[0]!.t1 - b[0]!.t0).toBeCloseTo(1);
    expect(r.views!.buckets!.seconds).toBe(1);
    // Only the ones after `since`.
    expect(a.analyze(3, { views: { buckets: { since: b[1]!.id } } })!.views!.buckets!.buckets.map((x) => x.id)).toEqual([b[2]!.id]);
    // Per-layer metrics per bucket: layer 1 is even (MaxVio 0), layer 0 is not.
    const s = a.analyze(3, { views: { series: { metric: 'maxVio' } } })!.views!.series!;
    expect(s.t).toHaveLength(3);
    expect(s.values[1 * 2 + 1]).toBe(0);
    const l0 = [sum(11, 21), 0, 10, 20];
    expect(s.values[1 * 2 + 0]).toBeCloseTo((Math.max(...l0) - l0.reduce((x, y) => x + y) / 4) / (l0.reduce((x, y) => x + y) / 4), 5);
  });

  it('diffs the last window against one ending some time ago, when the routing changed half-way', () => {
    const a = new Analyzer();
    // 60 s at 10 passes/s: the first 30 s layer 0 uses experts 0 and 1, then experts 2 and 3.
    run(a, 600, (p) => (p <= 300 ? [2, 2, 0, 0, 1, 1, 1, 1] : [0, 0, 2, 2, 1, 1, 1, 1]));
    const d = a.analyze(3, { views: { diff: { windowS: 10, agoS: 40 } } })!.views!.diff!;
    // Each window runs between the snapshots held nearest its ends (within a pass or two here).
    expect(d.after.toPass).toBe(600);
    expect(Math.abs(d.after.fromPass - 500)).toBeLessThanOrEqual(2);
    expect(Math.abs(d.before.fromPass - 100)).toBeLessThanOrEqual(2);
    expect(Math.abs(d.before.toPass - 200)).toBeLessThanOrEqual(2);
    const n = (w: { fromPass: number; toPass: number }) => 2 * (w.toPass - w.fromPass);
    expect(Array.from(d.before.counts.subarray(0, 4))).toEqual([n(d.before), n(d.before), 0, 0]);
    expect(Array.from(d.after.counts.subarray(0, 4))).toEqual([0, 0, n(d.after), n(d.after)]);
    expect(d.after.t1 - d.after.t0).toBeCloseTo((d.after.toPass - d.after.fromPass) / 10);
    expect(d.layers[0]!.shift.totalVariation).toBe(1);
    expect(d.layers[1]!.shift.totalVariation).toBe(0);
    expect(d.before.tokens[1]).toBe(2 * n(d.before)); // top-1: assignments = tokens
    // Both windows before the change: nothing moved.
    const same = a.analyze(3, { views: { diff: { windowS: 5, agoS: 10 } } })!.views!.diff!;
    expect(same.layers[0]!.shift.totalVariation).toBe(0);
  });

  it('orders the heatmap’s columns by load and by similarity', () => {
    const a = new Analyzer();
    run(a, 20, () => [1, 5, 2, 0, 0, 3, 1, 1]);
    const load = a.analyze(3, { windowMode: 'all', views: { heatmap: { mode: 'layers', sort: 'load', layer: 0, pass: null } } })!.views!.heatmap!;
    // Mean share over the two layers: expert 1 (5/8 + 3/5), 2 (2/8 + 1/5), 0 (1/8), 3 (1/5)...
    expect(load.order).toEqual([1, 2, 3, 0]);
    const sim = a.analyze(3, { windowMode: 'all', views: { heatmap: { mode: 'layers', sort: 'similarity', layer: 0, pass: null } } })!.views!.heatmap!;
    expect([...sim.order!].sort()).toEqual([0, 1, 2, 3]);
    expect(sim.order![0]).toBe(1);
  });
});

describe('LongHistory', () => {
  const snap = (ts: number, passes: number): Snapshot => ({
    ts, passes, counts: new Float64Array(1), tokens: null, health: null, timeS: null, probeS: 0, prefill: 0, decode: 0, dropped: 0, droppedTokens: 0, ranks: null, rankLayer: 0, train: 0, backward: 0, backwardS: null,
  });
  it('reaches back to the first snapshot, thinning evenly as it fills', () => {
    const h = new LongHistory(1024 * 1024); // 8 MiB per snapshot: the 16-snapshot minimum
    expect(h.capacity).toBe(16);
    for (let t = 0; t <= 100; t += 0.5) h.add(snap(t, t * 10));
    const ts = h.all().map((s) => s.ts);
    expect(ts[0]).toBe(0);
    expect(ts.length).toBeLessThanOrEqual(16);
    expect(h.spacing).toBeGreaterThan(1);
    // Spread over the whole session: no gap wider than the current spacing (plus one step).
    for (let i = 1; i < ts.length; i++) expect(ts[i]! - ts[i - 1]!).toBeLessThanOrEqual(h.spacing + 0.5);
    expect(ts.at(-1)!).toBeGreaterThanOrEqual(100 - h.spacing);
    expect(totalVariation([1], [1])).toBe(0);
  });
});

describe('thinIndices', () => {
  it('keeps every point when they fit, else the first, the newest and each run’s peak and dip, in order', () => {
    expect(thinIndices(5, 10, () => 0)).toEqual([0, 1, 2, 3, 4]);
    const v = [0, 5, 1, 1, -3, 2, 2, 9, 2, 2, 1, 0];
    const kept = thinIndices(v.length, 6, (i) => v[i]!); // 3 runs of 4
    expect(kept).toEqual([0, 1, 4, 7, 8, 11]); // runs [0..3] [4..7] [8..11]: dips 0, -3, 0 at 0, 4, 11; peaks 5, 9, 2 at 1, 7, 8
    expect(thinIndices(3600, 1200, (i) => Math.sin(i)).length).toBeLessThanOrEqual(1202);
    expect(thinIndices(4, 2, (i) => [NaN, 1, NaN, 2][i]!)).toEqual([0, 1, 3]);
  });
});

describe('handing messages across the worker boundary', () => {
  it('sends updates as typed arrays the Analyzer reads exactly as it reads plain arrays', () => {
    const a = new Analyzer();
    const b = new Analyzer();
    a.ingest(attached);
    b.ingest(attached);
    for (let p = 1; p <= 30; p++) {
      const u: JobUpdate = { type: 'update', pid: 3, model: 0, passes: p, layers: 2, widths: [E, E], counts: [p, 2 * p, 3 * p, 0, p, p, p, p], tokens: [3 * p, 2 * p], ts: 100 + p / 10, dropped: 0, health: new Array(12).fill(p) };
      a.ingest(u);
      const { message, transfer } = forWorker(u);
      expect((message as unknown as { counts: unknown }).counts).toBeInstanceOf(Float64Array);
      expect(transfer).toHaveLength(3);
      b.ingest(message);
    }
    const ra = a.analyze(3, { windowMode: 'all' })!;
    const rb = b.analyze(3, { windowMode: 'all' })!;
    expect(Array.from(rb.window.counts)).toEqual(Array.from(ra.window.counts));
    expect(rb.rows.map((r) => r.routerEntropy)).toEqual(ra.rows.map((r) => r.routerEntropy));
    expect(forWorker(attached).transfer).toEqual([]);
  });

  it('sends token records as typed views of one buffer, and the Analyzer keeps the same rows', () => {
    const a = new Analyzer();
    const b = new Analyzer();
    run(a, 3, () => [1, 1, 1, 1, 1, 1, 1, 1]);
    run(b, 3, () => [1, 1, 1, 1, 1, 1, 1, 1]);
    const t: TokenUpdate = {
      type: 'tokens', pid: 3, model: 0, pass: 4, phase: 'prefill', tokenIds: [7, 8], texts: null,
      layers: [{ layer: 0, n: 2, k: 2, ids: [1, 3, -1, 2], weights: [0.625, 0.375, 0, 1] }, { layer: 1, n: 2, k: 2, ids: [0, 1, 2, 3], weights: null }],
    };
    a.ingest(t);
    const { message, transfer } = forWorker(t);
    expect(transfer).toHaveLength(1);
    const layers = (message as TokenUpdate).layers as unknown as Array<{ ids: Int32Array; weights: Float32Array | null }>;
    expect(layers[0]!.ids).toBeInstanceOf(Int32Array);
    expect(layers[0]!.weights).toBeInstanceOf(Float32Array);
    expect(layers.every((l) => l.ids.buffer === transfer[0])).toBe(true);
    expect(t.layers[0]!.ids).toEqual([1, 3, -1, 2]); // the store's own copy is left as it came
    b.ingest(message);
    const u: JobUpdate = { type: 'update', pid: 3, model: 0, passes: 4, layers: 2, widths: [E, E], counts: [4, 4, 4, 4, 4, 4, 4, 4], ts: 100.4, dropped: 0 };
    a.ingest(u);
    b.ingest(u);
    const rows = (x: Analyzer) => x.analyze(3, { windowMode: 'all' })!.tokens.map((r) => r.layers.map((l) => [l.layer, Array.from(l.ids), l.weights && Array.from(l.weights)]));
    expect(rows(b)).toEqual(rows(a));
    expect(rows(b)[0]![0]).toEqual([0, [1, 3, -1, 2], [0.625, 0.375, 0, 1]]);

    // What a view does not read is left out when asked, and only then.
    const full = b.analyze(3, { windowMode: 'all' })!;
    expect(full.coactivation!.tokens).toBe(2);
    expect(full.tokens).toHaveLength(1);
    const lean = b.analyze(3, { windowMode: 'all', include: { tokens: false, coactivation: false } })!;
    expect(lean.parts).toEqual({ tokens: false, coactivation: false });
    expect(full.parts).toEqual({ tokens: true, coactivation: true });
    expect(lean.coactivation).toBeNull();
    expect(lean.vocabulary).toBeNull();
    expect(lean.tokens).toEqual([]);
    expect(Array.from(lean.window.counts)).toEqual(Array.from(full.window.counts));
    expect(b.analyze(3, { windowMode: 'all', include: { tokens: false } })!.coactivation!.matrix).toEqual(full.coactivation!.matrix);
  });

  it('packs token records into one buffer with the same values', () => {
    const rows = [1, 2].map((pass) => ({
      pass, phase: 'prefill' as const, n: 2, tokenIds: [1, 2], texts: null,
      layers: [{ layer: 0, k: 2, ids: Int32Array.from([pass, 1, 2, 3]), weights: Float32Array.from([0.5, 0.5, 0.25, 0.75]) }, { layer: 1, k: 2, ids: Int32Array.from([0, 1, 2, 3]), weights: null }],
    }));
    const packed = packTokenRows(rows);
    expect(packed.map((r) => r.layers.map((l) => [Array.from(l.ids), l.weights && Array.from(l.weights)]))).toEqual(rows.map((r) => r.layers.map((l) => [Array.from(l.ids), l.weights && Array.from(l.weights)])));
    const buffers = new Set(packed.flatMap((r) => r.layers.flatMap((l) => [l.ids.buffer, l.weights?.buffer].filter(Boolean))));
    expect(buffers.size).toBe(1);
    expect(rows[0]!.layers[0]!.ids.buffer).not.toBe(packed[0]!.layers[0]!.ids.buffer);
  });
});
