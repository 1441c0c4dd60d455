/** The panel's explain and expert-params requests: what the store sends, keeps, records, reopens and exports. */
import { describe, expect, it } from 'vitest';
import type { ExpertParamsMessage, ExplanationMessage, HostMessage, JobUpdate, PanelRequest } from '../../src/protocol/panel';
import { Analyzer } from '../../panels/engine/analyzer';
import { metricsJson } from '../../panels/engine/export';
import { parseRecording } from '../../panels/engine/recording';
import { complete } from '../../panels/engine/requests';
import { Store } from '../../panels/store';
import { buildReport } from '../../cli/routing-report';
import { reportText } from '../../cli/commands/report';
import { layerInfo } from './layer-fixture';

const models = [{ id: 0, class: 'M', model_type: 'm', device: 'cpu', dtype: 'f32', layers: [layerInfo(0, 4, 2)] }];
const attached: HostMessage = { type: 'attached', pid: 7, method: 'socket', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: [], models };
const update = (passes: number): JobUpdate => ({ type: 'update', pid: 7, model: 0, passes, layers: 1, widths: [4], counts: [4 * passes, 2 * passes, passes, passes], tokens: [4 * passes], ts: 100 + passes, dropped: 0 });

function explanation(id: number, expert: number): ExplanationMessage {
  return {
    type: 'explanation', pid: 7, id, model: 0, pass: 3, index: 1, layer: 0, expert, row: 0, position: 1, tokenIds: [5, 9, 2], texts: ['a', 'b', 'c'],
    steps: 32, baseline: 'zero', baselineToken: -1, probKind: 'softmax', logit: 1.5, prob: 0.5, baselineLogit: 0.25, baselineProb: 0.25,
    gxiLogit: [0.5, 0.75, 0], gxiProb: [0.1, 0.1, 0], igLogit: [0.5, 0.74, 0], igProb: [0.1, 0.15, 0], recomputed: [expert, 2],
    seconds: 0.25, peakBytes: 4096, batch: 32, device: 'cpu', notes: [],
  };
}

function params(id: number, rowStart: number, rowEnd: number): ExpertParamsMessage {
  const E = 4;
  const cos = [1, 0.1, 0.2, 0.999, 0.1, 1, 0.3, 0.1, 0.2, 0.3, 1, 0.2, 0.999, 0.1, 0.2, 1];
  return {
    type: 'expert-params', pid: 7, id, model: 0, layer: 0, part: 0, parts: 1, experts: E, computeExperts: E, rowStart, rowEnd,
    routerName: 'weight', routerNorms: rowStart === 0 ? [0.8, 0.9, 0, 0.85] : null, routerCosine: new Array((rowEnd - rowStart) * E).fill(null), // NaN everywhere: rows the probe could not compare
    routerBiasName: '', routerBias: null, layout: 'stacked', groups: ['w'], params: 64,
    expertNorms: rowStart === 0 ? [1, 1, 1, 1] : null, groupNorms: rowStart === 0 ? [1, 1, 1, 1] : null,
    weightCosine: cos.slice(rowStart * E, rowEnd * E), seconds: 0.01, peakBytes: 512, notes: [],
  };
}

function setup() {
  const sent: PanelRequest[] = [];
  const store = new Store();
  store.connect((r) => sent.push(r));
  store.useAnalyzer(new Analyzer());
  store.attach(7);
  store.receive(attached);
  store.receive(update(1));
  return { store, sent };
}

describe('explanations and expert weights in the panel store', () => {
  it('sends a request with an id, tracks it, and keeps the answer with its job', () => {
    const { store, sent } = setup();
    const id = store.explain({ pass: 3, index: 1, layer: 0, expert: 3, steps: 16, baseline: 'zero' })!;
    expect(sent.at(-1)).toEqual({ type: 'explain', pid: 7, id, model: 0, pass: 3, index: 1, layer: 0, expert: 3, steps: 16, baseline: 'zero' });
    expect(store.state.requests.get(id)).toMatchObject({ state: 'running', key: '3:1:0:3' });
    store.receive(explanation(id, 3));
    expect(store.state.requests.get(id)!.state).toBe('done');
    expect(store.state.jobs.get(7)!.explanations).toHaveLength(1);
    // the same token, layer and expert again: the newer answer replaces the older
    store.receive(explanation(id, 3));
    store.receive(explanation(id, 0));
    expect(store.state.jobs.get(7)!.explanations!.map((e) => e.expert)).toEqual([3, 0]);
    const refusedId = store.explain({ pass: 99, index: 0, layer: 0, expert: 0 })!;
    store.receive({ type: 'refused', pid: 7, id: refusedId, request: 'explain', code: 'no_context', message: 'pass 99 was not sampled' });
    expect(store.state.requests.get(refusedId)).toMatchObject({ state: 'refused', code: 'no_context', message: 'pass 99 was not sampled' });
  });

  it('assembles a layer sent in parts, and finishes the request only when every row is in', () => {
    const { store } = setup();
    const id = store.analyzeExperts()!;
    store.receive(params(id, 0, 2));
    expect(store.state.requests.get(id)!.state).toBe('running');
    store.receive(params(id, 2, 4));
    expect(store.state.requests.get(id)!.state).toBe('done');
    const layer = store.state.jobs.get(7)!.expertParams!.layers.get(0)!;
    expect(Array.from(layer.weightCosine!)).toEqual(Array.from(Float32Array.from([1, 0.1, 0.2, 0.999, 0.1, 1, 0.3, 0.1, 0.2, 0.3, 1, 0.2, 0.999, 0.1, 0.2, 1])));
    expect(Array.from(layer.routerCosine!).every(Number.isNaN)).toBe(true);
    expect(Array.from(layer.routerNorms!)).toEqual([0.8, 0.9, 0, 0.85]);
  });

  it('records what was answered before and during a recording; the reopened recording and the JSON export show it', async () => {
    const { store } = setup();
    const id = store.explain({ pass: 3, index: 1, layer: 0, expert: 3 })!;
    store.receive(explanation(id, 3));
    store.startRecording();
    const p = store.analyzeExperts()!;
    store.receive(params(p, 0, 4));
    store.receive({ type: 'refused', pid: 7, id: 999, request: 'explain', code: 'busy', message: 'busy' }); // not a recording's business
    store.receive(update(2));
    store.stopRecording();
    const text = store.state.saved!.text;
    const recorded = parseRecording(text).messages.map((m) => m.type);
    expect(recorded).toEqual(['attached', 'explanation', 'expert-params', 'update']);

    expect(await store.openRecording('r.moerec', text)).toBe(true);
    const replay = store.state.jobs.get(store.state.selectedPid!)!;
    expect(replay.explanations!.map((e) => [e.pass, e.index, e.expert])).toEqual([[3, 1, 3]]);
    expect(replay.expertParams!.layers.get(0)!.routerNorms![2]).toBe(0);
    const analysis = store.state.analyses.get(replay.pid)!;
    const json = JSON.parse(metricsJson(analysis, { explanations: replay.explanations, expertParams: [...replay.expertParams!.layers.values()] }));
    expect(json.explanations[0]).toMatchObject({ pass: 3, index: 1, layer: 0, expert: 3, igLogit: [0.5, 0.74, 0] });
    expect(json.explanations[0].completeness.logit.relativeError).toBeCloseTo(0.01 / 1.25, 12);
    expect(json.expertParameters.layers[0].weightCosine[0][3]).toBeCloseTo(0.999, 6);
    expect(json.expertParameters.findings.map((f: { kind: string; experts: number[] }) => [f.kind, f.experts])).toEqual([
      ['near_duplicate', [0, 3]], ['dead_by_weights', [2]],
    ]);
  });

  it('a recording started after the weights were read begins with them, and reopens to the same matrices', async () => {
    const { store } = setup();
    const id = store.analyzeExperts()!;
    store.receive(params(id, 0, 2));
    store.receive(params(id, 2, 4));
    const before = store.state.jobs.get(7)!.expertParams!.layers.get(0)!;
    store.startRecording();
    store.receive(update(2));
    store.stopRecording();
    const recorded = parseRecording(store.state.saved!.text).messages;
    expect(recorded.map((m) => m.type)).toEqual(['attached', 'expert-params', 'update']);
    expect(recorded[1]).toMatchObject({ rowStart: 0, rowEnd: 4, parts: 1 });

    expect(await store.openRecording('r.moerec', store.state.saved!.text)).toBe(true);
    const replay = store.state.jobs.get(store.state.selectedPid!)!.expertParams!;
    expect(complete(replay)).toBe(true);
    const after = replay.layers.get(0)!;
    expect(Array.from(after.weightCosine!)).toEqual(Array.from(before.weightCosine!));
    expect(Array.from(after.routerCosine!).every(Number.isNaN)).toBe(true); // null (NaN) stays NaN, not 0
    expect(Array.from(after.routerNorms!)).toEqual([0.8, 0.9, 0, 0.85]);
    expect(after.groups).toEqual(['w']);
    expect(after.routerName).toBe('weight');
  });

  it('the command line reports the weights\' findings of a recording, with the same analysis', () => {
    const { store } = setup();
    store.startRecording();
    const id = store.explain({ pass: 3, index: 1, layer: 0, expert: 3 })!;
    store.receive(explanation(id, 3));
    store.receive(params(store.analyzeExperts()!, 0, 4));
    store.receive(update(2));
    store.stopRecording();
    const report = buildReport(parseRecording(store.state.saved!.text));
    expect(report.parameterFindings!.map((f) => [f.kind, f.layer, f.experts])).toEqual([['near_duplicate', 0, [0, 3]], ['dead_by_weights', 0, [2]]]);
    expect(report.explanations).toBe(1);
    const text = reportText(report, 'r.moerec');
    expect(text).toContain("Findings from the experts' weights (2):");
    expect(text).toMatch(/near_duplicate {2}.*experts 0 and 3 are near-duplicates/);
    expect(text).toMatch(/dead_by_weights {1}.*router row of expert 2 has collapsed/);
    expect(text).toContain('The recording holds 1 explained routing decision');
  });

  it('rejects a recording whose explanation does not hold together', () => {
    const bad = { ...explanation(1, 3), igLogit: [0.5] };
    const text = [JSON.stringify({ format: 'moe-devtools-recording', version: 2, pid: 7, started: 0 }), JSON.stringify(attached), JSON.stringify(update(1)), JSON.stringify(bad)].join('\n');
    expect(() => parseRecording(text)).toThrow('line 4: an "explanation" needs "igLogit" with one number per token');
  });
});
