import { describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate, PanelRequest } from '../../src/protocol/panel';
import { Analyzer } from '../../panels/engine/analyzer';
import { parseRecording, serializeRecording } from '../../panels/engine/recording';
import { Store } from '../../panels/store';
import { withTypedLists } from '../../src/protocol/typed-lists';
import { layerInfo } from './layer-fixture';

const models = [{ id: 0, class: 'M', model_type: 'm', device: 'cpu', dtype: 'f32', layers: [layerInfo(0, 2, 1)] }];
const attached = (pid: number): HostMessage => ({ type: 'attached', pid, method: 'socket', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: [], models });
const update = (pid: number, passes: number): JobUpdate => ({ type: 'update', pid, model: 0, passes, layers: 1, widths: [2], counts: [3 * passes, passes], tokens: [4 * passes], ts: 100 + passes, dropped: 0 });

function setup() {
  const sent: PanelRequest[] = [];
  const store = new Store();
  store.connect((r) => sent.push(r));
  store.useAnalyzer(new Analyzer());
  return { store, sent };
}

describe('panel store', () => {
  it('keeps per-job state for several jobs and analyses the selected one', async () => {
    const { store } = setup();
    store.attach(11);
    store.receive(attached(11));
    store.attach(22);
    store.receive(attached(22));
    store.receive(update(11, 4));
    store.receive(update(22, 9));
    store.setSettings({ windowMode: 'all' });
    await store.tick();
    expect(store.state.analyses.get(22)!.window.passes).toBe(9);
    store.selectJob(11);
    await store.tick();
    expect(store.state.analyses.get(11)!.window.counts[0]).toBe(12);
    expect(store.state.jobs.size).toBe(2);
  });

  it('reopens a recording of a layer that has seen no finite router logit yet (JSON null), as it was received over the channel', async () => {
    const { store } = setup();
    store.attach(5);
    store.receive(attached(5));
    store.startRecording();
    // as the panel's channel delivers it: counts typed, the list with JSON's null left a list
    const received = withTypedLists({ ...update(5, 4), maxLogit: [null] } as unknown as JobUpdate).message;
    store.receive(received);
    store.stopRecording();
    const saved = store.state.saved!;
    expect(saved.text).toContain('"counts":[12,4]');
    expect(saved.text).toContain('"maxLogit":[null]');
    expect(await store.openRecording(saved.name, saved.text)).toBe(true);
    expect(store.state.notices).toEqual([]);
    expect(store.state.analyses.get(store.state.selectedPid!)!.window.counts[0]).toBe(12);
  });

  it('pauses, records a job, and opens the recording as a job of its own', async () => {
    const { store } = setup();
    store.attach(5);
    store.receive(attached(5));
    store.startRecording();
    for (let p = 1; p <= 3; p++) store.receive(update(5, p));
    store.receive(update(6, 1)); // another job: not recorded
    store.stopRecording();
    const saved = store.state.saved!;
    expect(saved.messages).toBe(4); // attached + 3 updates
    const rec = parseRecording(saved.text);
    expect(rec.header.pid).toBe(5);

    // Paused, the views hold still; a view that reads a part the held analysis lacks gets one
    // more analysis, with every part, which is then held.
    store.selectView('load');
    await store.tick();
    const live = store.state.analyses.get(5)!;
    expect(live.parts).toEqual({ tokens: false, coactivation: false });
    store.togglePause();
    store.receive(update(5, 4));
    await store.tick();
    expect(store.state.analyses.get(5)).toBe(live);
    store.selectView('tokens');
    await store.tick();
    const held = store.state.analyses.get(5)!;
    expect(held).not.toBe(live);
    expect(held.parts).toEqual({ tokens: true, coactivation: true });
    expect(held.window.toPass).toBe(4);
    store.receive(update(5, 5));
    store.selectView('coactivation');
    await store.tick();
    expect(store.state.analyses.get(5)).toBe(held);
    store.togglePause();
    await store.tick();
    expect(store.state.analyses.get(5)!.window.toPass).toBe(5);

    expect(await store.openRecording('a.moerec', saved.text)).toBe(true);
    const pid = store.state.selectedPid!;
    expect(pid).toBeLessThan(0);
    expect(store.state.jobs.get(pid)!.status).toBe('recording');
    store.setSettings({ windowMode: 'all' });
    await store.tick();
    expect(Array.from(store.state.analyses.get(pid)!.window.counts)).toEqual([9, 3]);
  });

  it('counts every update and hands the analysis the newest, at most one per 50 ms of the job', async () => {
    const store = new Store();
    store.connect(() => undefined);
    const analyzer = new Analyzer();
    const handed: number[] = [];
    store.useAnalyzer({
      ...analyzer,
      ingest: (m: HostMessage) => {
        if (m.type === 'update') handed.push(m.passes);
        analyzer.ingest(m);
      },
      ingestMany: (ms: HostMessage[]) => analyzer.ingestMany(ms),
      analyze: (pid: number, s: object) => analyzer.analyze(pid, s),
      clear: (pid: number) => analyzer.clear(pid),
      forget: (pid: number) => analyzer.forget(pid),
    });
    store.attach(5);
    store.receive(attached(5));
    // 30 updates 1/64 s apart on the job's clock, all in one task (a busy main thread)
    const at = (p: number): JobUpdate => ({ ...update(5, p), ts: 100 + p / 64 });
    let told = 0;
    store.subscribe(() => told++);
    for (let p = 1; p <= 30; p++) store.receive(at(p));
    expect(store.state.jobs.get(5)!.updates).toBe(30);
    // the views hear of the 30 updates once, before the next frame (here, no frames: the 100 ms fallback)
    expect(told).toBe(0);
    expect(handed).toEqual([1, 5, 9, 13, 17, 21, 25, 29]);
    await new Promise((r) => setTimeout(r, 150));
    expect(told).toBe(1);
    expect(handed.at(-1)).toBe(30); // the held one goes 50 ms later
    // a token record of pass 31 comes after update 30: the pending update goes first
    store.receive(at(31));
    store.receive({ type: 'tokens', pid: 5, model: 0, pass: 31, phase: 'prefill', tokenIds: null, texts: null, layers: [{ layer: 0, n: 1, k: 1, ids: [1], weights: null }] });
    expect(handed.at(-1)).toBe(31);
    store.receive(at(32));
    store.setSettings({ windowMode: 'all' });
    await store.tick(); // an analysis starts with the newest update in
    expect(handed.at(-1)).toBe(32);
    expect(Array.from(store.state.analyses.get(5)!.window.counts)).toEqual([96, 32]);
  });

  it('rejects a corrupt or foreign file with a notice and loses nothing', async () => {
    const { store } = setup();
    store.attach(5);
    store.receive(attached(5));
    const before = store.state.jobs;
    const good = serializeRecording(5, 0, [attached(5), update(5, 1)]);
    for (const text of ['', 'PK\u0003\u0004 zip', '{"format":"other"}', good.replace('"counts":[3,1]', '"counts":[3]'), good + '{not json\n', good.replace(/"version":2/, '"version":9')]) {
      expect(await store.openRecording('bad.moerec', text)).toBe(false);
    }
    expect(store.state.jobs).toBe(before);
    expect(store.state.notices.length).toBeGreaterThan(0);
    expect(store.state.notices.every((n) => n.code === 'bad_recording')).toBe(true);
    expect(store.state.notices.at(-1)!.message).toMatch(/version 9/);
  });

  it('opens a version-1 recording (one width for every layer, no token totals) with the same numbers', async () => {
    const { store } = setup();
    const v1Attached = { ...attached(5), models: [{ ...models[0]!, layers: [{ index: 0, name: 'l0', arch: 'x', experts: 2, top_k: 1 }] }] };
    const v1Update = { type: 'update', pid: 5, model: 0, passes: 3, layers: 1, experts: 2, counts: [9, 3], ts: 103, dropped: 0 };
    const text = [JSON.stringify({ format: 'moe-devtools-recording', version: 1, pid: 5, started: 0 }),
      JSON.stringify(v1Attached), JSON.stringify(v1Update)].join('\n') + '\n';
    expect(await store.openRecording('old.moerec', text)).toBe(true);
    const job = [...store.state.jobs.values()].find((j) => j.replay)!;
    expect(job.models[0]!.layers[0]).toMatchObject({ name: 'l0', experts: 2, top_k: 1, design: 'top-k', model_index: -1 });
    const analysis = store.state.analyses.get(job.pid)!;
    expect(analysis.widths).toEqual([2]);
    expect(Array.from(analysis.window.counts)).toEqual([9, 3]);
    expect(analysis.rows[0]!.tokens).toBe(12); // assignments / top-1, as version 1 counted tokens
  });
});
