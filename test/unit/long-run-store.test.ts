/**
 * The panel's long-run state through the Store: anomalies kept per job (and with recordings), a
 * stored session assembled from its parts and opened as a job of its own (a sub-range's first
 * snapshot as its baseline), an export offered for saving, and comparison and placement asked of
 * the analyzer.
 */
import { describe, expect, it } from 'vitest';
import type { AnomalyFinding, HistorySession, HostMessage, JobUpdate, PanelRequest } from '../../src/protocol/panel';
import { Analyzer } from '../../panels/engine/analyzer';
import { parseRecording } from '../../panels/engine/recording';
import { Store } from '../../panels/store';
import { layerInfo } from './layer-fixture';

const models = [{ id: 0, class: 'M', model_type: 'm', device: 'cpu', dtype: 'f32', layers: [layerInfo(0, 4, 1)] }];
const attached = (pid: number): Extract<HostMessage, { type: 'attached' }> => ({ type: 'attached', pid, method: 'socket', ms: 1, python: '3', framework: 'torch', frameworkVersion: '2', argv: ['job.py'], models });
/** Each pass routes [3, 1, 0, 0]; one snapshot a second. */
const update = (pid: number, passes: number): JobUpdate => ({ type: 'update', pid, model: 0, passes, layers: 1, widths: [4], counts: [3 * passes, passes, 0, 0], tokens: [4 * passes], ts: 1000 + passes, dropped: 0 });
const anomaly: AnomalyFinding = { metric: 'routing', layer: 0, label: 'L0', ts: 1003, detectedTs: 1005, value: 0.2, reference: 0, referenceFrom: 1000, referenceTo: 1002, message: 'shifted' };
const session: HistorySession = {
  id: 7, pid: 42, source: 'attach', name: 'job.py', modelClass: 'M', modelType: 'm', layers: 1, experts: 4, started: 1_000_000, ended: 1_010_000,
  firstTs: 1001, lastTs: 1010, passes: 10, snapshots: 10, tokenPasses: 0, anomalies: 1, bytes: 100,
};

function setup() {
  const sent: PanelRequest[] = [];
  const store = new Store();
  store.connect((r) => sent.push(r));
  store.useAnalyzer(new Analyzer());
  return { store, sent };
}

describe('long-run state in the panel store', () => {
  it('keeps each job its anomalies, and forgets them on a new attach', () => {
    const { store } = setup();
    store.attach(5);
    store.receive(attached(5));
    store.receive({ type: 'anomaly', pid: 5, model: 0, anomaly });
    expect(store.longRun.anomaliesOf(5)).toEqual([anomaly]);
    expect(store.longRun.anomaliesOf(6)).toBe(store.longRun.anomaliesOf(7)); // one shared empty list
    store.attach(5);
    expect(store.longRun.anomaliesOf(5)).toEqual([]);
  });

  it('lists sessions, assembles a session from its parts and opens it with its anomalies', async () => {
    const { store, sent } = setup();
    store.longRun.toggleHistory(true);
    expect(sent.at(-1)).toEqual({ type: 'sessions' });
    store.receive({ type: 'sessions', sessions: [session], database: { path: '/h.sqlite', enabled: true, fileBytes: 1, maxBytes: 2, maxDays: 30, droppedWrites: 0 } });
    expect(store.longRun.sessions).toEqual([session]);
    store.longRun.open(session);
    // as many snapshots as the analyzer keeps for 4 experts, less one
    expect(sent.at(-1)).toMatchObject({ type: 'session-open', session: 7, points: 2999, purpose: 'view' });
    const messages: HostMessage[] = [attached(42), ...Array.from({ length: 10 }, (_, i) => update(42, i + 1)), { type: 'anomaly', pid: 42, model: 0, anomaly }];
    store.receive({ type: 'session-data', session: 7, purpose: 'view', part: 0, done: false, info: session, available: 10, messages: messages.slice(0, 5) });
    expect(store.state.jobs.size).toBe(0);
    store.receive({ type: 'session-data', session: 7, purpose: 'view', part: 1, done: false, messages: messages.slice(5) });
    store.receive({ type: 'session-data', session: 7, purpose: 'view', part: 2, done: true, messages: [] });
    await new Promise((r) => setTimeout(r, 0));
    await store.tick();
    const job = [...store.state.jobs.values()][0]!;
    expect(job.pid).toBeLessThan(0);
    expect(job.session?.info.id).toBe(7);
    expect(store.longRun.showHistory).toBe(false);
    expect(store.longRun.anomaliesOf(job.pid)).toEqual([anomaly]);
    store.setSettings({ windowMode: 'all' });
    await store.tick();
    // since attach: 10 passes of [3, 1, 0, 0]
    expect(Array.from(store.state.analyses.get(job.pid)!.window.counts)).toEqual([30, 10, 0, 0]);
  });

  it('a range opened part way through counts from its first snapshot', async () => {
    const { store } = setup();
    store.longRun.open(session, 1004, 1010);
    const messages: HostMessage[] = [attached(42), ...Array.from({ length: 7 }, (_, i) => update(42, i + 4))];
    store.receive({ type: 'session-data', session: 7, purpose: 'view', part: 0, done: true, info: session, available: 7, messages });
    await new Promise((r) => setTimeout(r, 0));
    store.setSettings({ windowMode: 'all' });
    await store.tick();
    const a = [...store.state.analyses.values()][0]!;
    // passes 4 .. 10: 6 passes after the baseline
    expect(a.window.passes).toBe(6);
    expect(Array.from(a.window.counts)).toEqual([18, 6, 0, 0]);
  });

  it('offers an exported session for saving as a recording', () => {
    const { store } = setup();
    store.longRun.exportSession(session);
    const messages: HostMessage[] = [attached(42), update(42, 1), update(42, 2)];
    store.receive({ type: 'session-data', session: 7, purpose: 'export', part: 0, done: true, info: session, available: 2, messages });
    const saved = store.state.saved!;
    expect(saved.name).toMatch(/^moe-42-.*-session-7\.moerec$/);
    const rec = parseRecording(saved.text);
    expect(rec.header).toMatchObject({ pid: 42, started: 1_000_000 });
    expect(rec.messages.filter((m) => m.type === 'update')).toHaveLength(2);
  });

  it('compares two jobs and plans placement through the analyzer', async () => {
    const { store } = setup();
    for (const pid of [1, 2]) {
      store.attach(pid);
      store.receive(attached(pid));
      for (let p = 1; p <= 5; p++) store.receive(update(pid, p));
    }
    const port = store.analysisPort!;
    const c = await port.compare!({ pid: 1, range: { kind: 'all' } }, { pid: 2, range: { kind: 'all' } });
    expect(c!.layers[0]!.js).toBe(0); // the same routing
    expect(c!.a.passes).toBe(5);
    const plan = await port.plan!(1, { kind: 'all' }, 2, 2);
    // loads 15 5 0 0 on 2 devices x 3 slots: before 15 + 5 | 0 = 20 | 0 (balancedness 0.5)
    expect(plan!.layers[0]!.contiguous!.balancedness).toBe(0.5);
    // 6 slots for 4 experts: 20 of load shared 10 | 10 (e.g. 7.5 + 2.5 + 0 on each device)
    expect(plan!.layers[0]!.ours!.deviceLoad).toEqual([10, 10]);
    expect(plan!.layers[0]!.ours!.balancedness).toBe(1);
  });
});
