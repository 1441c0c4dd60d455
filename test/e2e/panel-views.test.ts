/**
 * The views for big models and for the flow of tokens, in real DevTools, against a real Mixtral job
 * that logs every token's top-k experts per layer (tiny_moe_job.py --log-tokens; its inputs never
 * repeat, --cycle 1000) and switches its input distribution when told (--switch-file):
 *  - Flow: the transition counts between adjacent layers (top-1, all slots, filtered by token,
 *    following one expert) equal the counts computed from the job's own per-token log;
 *  - Heatmap (log scale, sorted by load; time x experts; tokens x experts) and 3D map: what hovering
 *    a cell reads equals what the job routed;
 *  - Layers: the window diff shows nothing much while the inputs stay the same and a large shift
 *    once they switch, its numbers recomputed from the log;
 *  - a recording of the job: the panel replaying it and `moe-devtools flow` count the same transitions.
 * Screenshots of each view, light and dark, go to test-artifacts/.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Frame, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachThroughPanel, hoverHeatmap, launchBrowser, makeProfile, openMoEPanel, setPanelSettings, showView, undockDevTools } from '../../scripts/lib/devtools-harness.mjs';
import { recordingFlow } from '../../cli/commands/flow';
import { parseRecording } from '../../panels/engine/recording';
import { ROOT, startTinyJob, type Job, type PassRecord } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const TOKENS = 32; // batch 2 x seq 16, all sampled (the probe samples up to 128 per pass)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function setPaused(panel: Frame, paused: boolean) {
  const now = await panel.$eval('[data-testid="pause"]', (b: Element) => b.getAttribute('title')!.startsWith('Resume'));
  if (now !== paused) await panel.$eval('[data-testid="pause"]', (b: Element) => (b as HTMLElement).click());
  await sleep(paused ? 500 : 50); // an analysis in flight lands before the views hold still
}

async function select(panel: Frame, testid: string, value: string | number) {
  await panel.select(`[data-testid="${testid}"]`, String(value));
}

async function key(panel: Frame, testid: string, keyName: string, times = 1) {
  for (let i = 0; i < times; i++) {
    await panel.$eval(`[data-testid="${testid}"]`, (el: Element, k: string) => {
      (el as HTMLElement).focus();
      el.dispatchEvent(new KeyboardEvent('keydown', { key: k, bubbles: true, cancelable: true }));
    }, keyName);
    await sleep(30);
  }
}

async function setTheme(devtools: Page, panel: Frame, theme: 'light' | 'dark') {
  await devtools.evaluate(`(async () => {
    const Common = await import(new URL('./core/common/common.js', location.href).href);
    Common.Settings.Settings.instance().moduleSetting('ui-theme').set(${JSON.stringify(theme)});
  })()`);
  await panel.waitForFunction((t: string) => document.documentElement.dataset.theme === t, { polling: 100, timeout: 5000 }, theme);
}

/** Every start index of a run of `n` log passes whose summed counts of `layer` equal `shown`. */
function windowStarts(log: PassRecord[], layer: number, n: number, shown: number[]): number[] {
  const starts: number[] = [];
  for (let s = 0; s + n <= log.length; s++) {
    const sum = new Array(shown.length).fill(0);
    for (let i = s; i < s + n; i++) log[i]!.counts[layer]!.forEach((c, e) => (sum[e] += c));
    if (sum.every((v, e) => v === shown[e])) starts.push(s);
  }
  return starts;
}

/**
 * The job's log index of each probe pass: from the counts the Load view shows over a window of
 * passes, found in exactly one place of the log (the job's inputs never repeat).
 */
async function alignment(panel: Frame, job: Job): Promise<(pass: number) => number> {
  await showView(panel, 'load');
  const t = await panel.$eval('[data-testid="expert-table"]', (table: Element) => ({
    layer: Number(table.getAttribute('data-layer')), passes: Number(table.getAttribute('data-passes')), fromPass: Number(table.getAttribute('data-from-pass')),
    counts: [...table.querySelectorAll('[data-testid="expert-count"]')].map((td) => Number(td.textContent)),
  }));
  expect(t.passes).toBeGreaterThan(10);
  const starts = windowStarts(job.passes(), t.layer, t.passes, t.counts);
  expect(starts, `layer ${t.layer}: ${t.counts} over ${t.passes} passes`).toHaveLength(1);
  return (pass) => starts[0]! + (pass - t.fromPass - 1);
}

type Flow = Map<string, number>;
/** Transitions from layer a to layer b over the given probe passes, from the job's log. */
function logFlow(log: PassRecord[], at: (p: number) => number, passes: number[], a: number, b: number, mode: 'top1' | 'slots', keep: (r: PassRecord, t: number) => boolean = () => true): Flow {
  const out: Flow = new Map();
  const add = (x: number, y: number, w: number) => out.set(`${x}>${y}`, (out.get(`${x}>${y}`) ?? 0) + w);
  for (const p of passes) {
    const r = log[at(p)]!;
    for (let t = 0; t < TOKENS; t++) {
      if (!keep(r, t)) continue;
      const ia = r.ids![a]![t]!;
      const ib = r.ids![b]![t]!;
      if (mode === 'top1') add(ia[0]!, ib[0]!, 1);
      else for (const x of ia) for (const y of ib) add(x, y, 1 / (ia.length * ib.length));
    }
  }
  return out;
}

/** The flow the panel shows: its summary and every row of its transitions table (the whole list, not the largest 50). */
async function shownFlow(panel: Frame) {
  await panel.evaluate(() => {
    const more = document.querySelector('[data-testid="flow-show-all"]') as HTMLElement | null;
    if (more?.textContent?.startsWith('Show all')) more.click();
  });
  await sleep(100);
  return panel.evaluate(() => {
    const s = document.querySelector('[data-testid="flow-summary"]')!;
    const t = document.querySelector('[data-testid="flow-table"]')!;
    return {
      tokens: Number(s.getAttribute('data-tokens')), passes: s.getAttribute('data-passes')!.split(',').filter(Boolean).map(Number),
      weighting: s.getAttribute('data-weighting'), filter: s.getAttribute('data-filter'), highlight: s.getAttribute('data-highlight'),
      from: Number(t.getAttribute('data-from')), to: Number(t.getAttribute('data-to')),
      listed: Number(t.getAttribute('data-rows')),
      rows: [...t.querySelectorAll('tbody tr')].map((r) => [Number(r.getAttribute('data-src')), Number(r.getAttribute('data-dst')), Number(r.getAttribute('data-weight'))] as [number, number, number]),
    };
  });
}

function expectSameFlow(shown: Array<[number, number, number]>, want: Flow) {
  expect(shown.length).toBe(want.size);
  const got = new Map(shown.map(([x, y, w]) => [`${x}>${y}`, w]));
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [k, w] of want) expect(got.get(k), k).toBeCloseTo(w, 9);
}

/** Assignments of one expert of one layer over probe passes (from, to], from the log. */
function logCount(log: PassRecord[], at: (p: number) => number, layer: number, expert: number, from: number, to: number): number {
  let n = 0;
  for (let p = from + 1; p <= to; p++) n += log[at(p)]!.counts[layer]![expert]!;
  return n;
}

function tv(a: number[], b: number[]) {
  const sa = a.reduce((x, y) => x + y, 0);
  const sb = b.reduce((x, y) => x + y, 0);
  return a.reduce((s, x, i) => s + Math.abs(b[i]! / sb - x / sa), 0) / 2;
}

describe('views for big models and the flow of tokens', () => {
  let job: Job;
  let browser: Browser;
  let profile: string;
  let tmp: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-views-'));
    job = await startTinyJob(['--arch', 'mixtral', '--layers', '4', '--experts', '8', '--cycle', '1000', '--log-tokens', '--switch-file', path.join(tmp, 'switch')]);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('shows flow, heatmaps, the 3D map and the window diff with the numbers the job routed', async () => {
    const { devtools, panel } = await openMoEPanel(browser);
    await undockDevTools(devtools, { width: 1280, height: 860 });
    await attachThroughPanel(panel, job.pid);
    await sleep(3000);

    // -- Flow: top-1 transitions of layers 0 -> 1 and 1 -> 2 equal the job's per-token log.
    await showView(panel, 'flow');
    await panel.waitForFunction(() => Number(document.querySelector('[data-testid="flow-summary"]')?.getAttribute('data-tokens')) >= 20 * 32, { polling: 100, timeout: 30000 });
    await setPaused(panel, true);
    let flow = await shownFlow(panel);
    const at = await alignment(panel, job);
    const log = job.passes();
    expect(flow.weighting).toBe('top1');
    expect(flow.tokens).toBe(flow.passes.length * TOKENS);
    expect([flow.from, flow.to]).toEqual([0, 1]);
    expectSameFlow(flow.rows, logFlow(log, at, flow.passes, 0, 1, 'top1'));
    console.log(`flow 0 -> 1: ${flow.rows.length} transitions over ${flow.passes.length} passes (${flow.tokens} tokens) equal the job's log`);
    await showView(panel, 'flow');
    await select(panel, 'flow-pair', 1);
    await panel.waitForSelector('[data-testid="flow-table"][data-from="1"][data-to="2"]', { timeout: 5000 });
    flow = await shownFlow(panel);
    expectSameFlow(flow.rows, logFlow(log, at, flow.passes, 1, 2, 'top1'));
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-flow-light.png') });

    // All top-k slots, each token split evenly over its k x k slot pairs.
    await setPaused(panel, false);
    await select(panel, 'flow-weighting', 'slots');
    await panel.waitForSelector('[data-testid="flow-summary"][data-weighting="slots"]', { timeout: 10000 });
    await setPaused(panel, true);
    await select(panel, 'flow-pair', 0);
    flow = await shownFlow(panel);
    expectSameFlow(flow.rows, logFlow(job.passes(), at, flow.passes, 0, 1, 'slots'));

    // Filtered by a token id, top-1 again.
    await setPaused(panel, false);
    await select(panel, 'flow-weighting', 'top1');
    const id = job.passes()[at(flow.passes[0]!)]!.input![0]!;
    await panel.type('[data-testid="flow-filter"]', `#${id}`);
    await panel.waitForSelector(`[data-testid="flow-summary"][data-filter="#${id}"][data-weighting="top1"]`, { timeout: 10000 });
    await setPaused(panel, true);
    flow = await shownFlow(panel);
    const withId = (r: PassRecord, t: number) => r.input![t] === id;
    expectSameFlow(flow.rows, logFlow(job.passes(), at, flow.passes, 0, 1, 'top1', withId));
    expect(flow.tokens).toBe(flow.passes.reduce((n, p) => n + job.passes()[at(p)]!.input!.filter((x) => x === id).length, 0));
    await panel.$eval('[data-testid="flow-filter"]', (el: Element) => {
      (el as HTMLInputElement).value = '';
      el.dispatchEvent(new Event('input', { bubbles: true }));
    });

    // Follow one expert by keyboard: focus the diagram, Enter on the first node (layer 0's lowest expert with flow).
    await setPaused(panel, false);
    await panel.waitForSelector('[data-testid="flow-summary"][data-filter=""]', { timeout: 10000 });
    await key(panel, 'flow-canvas', 'Enter');
    await panel.waitForSelector('[data-testid="flow-through"][data-layer="0"]', { timeout: 10000 });
    await panel.waitForFunction(() => document.querySelector('[data-testid="flow-summary"]')?.getAttribute('data-highlight'), { polling: 100, timeout: 10000 });
    await setPaused(panel, true);
    const followed = Number(await panel.$eval('[data-testid="flow-through"]', (el: Element) => el.getAttribute('data-expert')));
    flow = await shownFlow(panel);
    const through = flow.passes.reduce((n, p) => n + job.passes()[at(p)]!.ids![0]!.filter((slots) => slots[0] === followed).length, 0);
    expect(Number(flow.highlight)).toBe(through);
    expect(through).toBeGreaterThan(0);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-flow-follow-light.png') });

    // -- Heatmap, log scale, experts by load: each hovered cell names an expert and its count over the window.
    await setPaused(panel, false);
    await showView(panel, 'heatmap');
    await select(panel, 'heatmap-scale', 'log');
    await select(panel, 'heatmap-sort', 'load');
    await panel.waitForSelector('[data-testid="heatmap-view"][data-order]', { timeout: 10000 });
    await setPaused(panel, true);
    const hm = await panel.$eval('[data-testid="heatmap-view"]', (el: Element) => ({
      passes: Number(el.getAttribute('data-passes')), from: Number(el.getAttribute('data-from-pass')), order: el.getAttribute('data-order')!.split(',').map(Number),
    }));
    expect(await panel.$eval('[data-testid="legend"]', (el: Element) => el.getAttribute('data-mode'))).toBe('log');
    for (let pos = 0; pos < 8; pos++) {
      const text = (await hoverHeatmap(panel, 1, pos)) as string;
      const m = /^model\.layers\.1\.mlp \(layer 1\), expert (\d+): ([\d,]+) assignments/.exec(text);
      expect(m, text).not.toBeNull();
      const expert = Number(m![1]);
      expect(expert).toBe(hm.order[pos]);
      expect(Number(m![2]!.replace(/,/g, ''))).toBe(logCount(job.passes(), at, 1, expert, hm.from, hm.from + hm.passes));
    }
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-heatmap-light.png') });

    // Time x experts of layer 2: a cell is one expert over one 1-second interval.
    await setPaused(panel, false);
    await select(panel, 'heatmap-sort', 'index');
    await select(panel, 'heatmap-mode', 'time');
    await select(panel, 'heatmap-layer', 2);
    await panel.waitForFunction(() => Number(document.querySelector('[data-testid="heatmap"]')?.getAttribute('data-rows')) >= 3, { polling: 100, timeout: 15000 });
    await setPaused(panel, true);
    const rows = Number(await panel.$eval('[data-testid="heatmap"]', (el: Element) => el.getAttribute('data-rows')));
    for (const [row, expert] of [[0, 0], [rows - 1, 5], [Math.floor(rows / 2), 7]] as const) {
      const text = (await hoverHeatmap(panel, row, expert)) as string;
      const m = /^model\.layers\.2\.mlp \(layer 2\), expert (\d+), [\d.]+–[\d.]+ s \(passes (\d+)–(\d+)\): ([\d,]+) assignments/.exec(text);
      expect(m, text).not.toBeNull();
      expect(Number(m![1])).toBe(expert);
      expect(Number(m![4]!.replace(/,/g, ''))).toBe(logCount(job.passes(), at, 2, expert, Number(m![2]) - 1, Number(m![3])));
    }
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-heatmap-time-light.png') });

    // Tokens x experts of layer 1: a cell says whether that token chose that expert, and in which slot.
    await setPaused(panel, false);
    await select(panel, 'heatmap-mode', 'tokens');
    await select(panel, 'heatmap-layer', 1);
    await panel.waitForFunction(() => document.querySelector('[data-testid="heatmap-view"][data-mode="tokens"] [data-testid="heatmap"]'), { polling: 100, timeout: 10000 });
    await setPaused(panel, true);
    for (const [token, expert] of [[0, 0], [5, 3], [31, 6], [17, 1]] as const) {
      const text = (await hoverHeatmap(panel, token, expert)) as string;
      const m = /^token (\d+) “#(\d+)” \(pass (\d+)\), model\.layers\.1\.mlp \(layer 1\), expert (\d+): (chosen \(slot (\d)|not chosen)/.exec(text);
      expect(m, text).not.toBeNull();
      const rec = job.passes()[at(Number(m![3]))]!;
      expect(Number(m![2])).toBe(rec.input![token]);
      const slot = rec.ids![1]![token]!.indexOf(expert);
      expect(m![6] === undefined ? -1 : Number(m![6]) - 1).toBe(slot);
    }
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-heatmap-tokens-light.png') });

    // -- 3D map: move the cursor by keyboard, hover where it is drawn, read the same cell.
    await setPaused(panel, false);
    await showView(panel, 'activity');
    await panel.waitForFunction(() => Number(document.querySelector('[data-testid="activity-view"]')?.getAttribute('data-buckets')) >= 4, { polling: 100, timeout: 15000 });
    await setPaused(panel, true); // no new interval moves the cells while the cursor is read and hovered
    for (const moves of [[['ArrowDown', 1], ['ArrowRight', 3]], [['ArrowDown', 2], ['ArrowRight', 3], ['PageUp', 2]]] as const) {
      for (const [k, n] of moves) await key(panel, 'activity-canvas', k, n);
      const cursor = await panel.evaluate(() => {
        const r = document.querySelector('[data-testid="activity-readout"]')!;
        const box = document.querySelector('.activity-box')!;
        return { layer: r.getAttribute('data-layer'), expert: r.getAttribute('data-expert'), bucket: r.getAttribute('data-bucket'), x: Number(box.getAttribute('data-cursor-x')), y: Number(box.getAttribute('data-cursor-y')) };
      });
      const hovered = await panel.evaluate((x: number, y: number) => {
        const c = document.querySelector('[data-testid="activity-canvas"]')!;
        const rect = c.getBoundingClientRect();
        c.dispatchEvent(new MouseEvent('mousemove', { clientX: rect.left + x, clientY: rect.top + y, bubbles: true }));
        return new Promise<{ layer: string | null; expert: string | null; bucket: string | null; text: string }>((resolve) => setTimeout(() => {
          const r = document.querySelector('[data-testid="activity-readout"]')!;
          resolve({ layer: r.getAttribute('data-layer'), expert: r.getAttribute('data-expert'), bucket: r.getAttribute('data-bucket'), text: r.textContent ?? '' });
        }, 80));
      }, cursor.x, cursor.y);
      expect([hovered.layer, hovered.expert, hovered.bucket]).toEqual([cursor.layer, cursor.expert, cursor.bucket]);
      const m = /^model\.layers\.(\d)\.mlp \(layer \d\), expert (\d+), [\d.]+–[\d.]+ s \(passes (\d+)–(\d+)\): ([\d,]+) assignments/.exec(hovered.text);
      expect(m, hovered.text).not.toBeNull();
      expect(Number(m![5]!.replace(/,/g, ''))).toBe(logCount(job.passes(), at, Number(m![1]), Number(m![2]), Number(m![3]) - 1, Number(m![4])));
    }
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-activity-light.png') });

    // -- Layers: the last 4 s against the 4 s ending 8 s ago, while the inputs stay the same...
    await showView(panel, 'layers');
    const diff = async (windowS: number, agoS: number) => {
      await setPaused(panel, false);
      // Both inputs in one go, so that no analysis lands for a request half changed.
      await panel.evaluate((w: number, ago: number) => {
        for (const [id, v] of [['diff-window', w], ['diff-ago', ago]] as const) {
          const el = document.querySelector(`[data-testid="${id}"]`) as HTMLInputElement;
          el.value = String(v);
          el.dispatchEvent(new Event('change', { bubbles: true }));
        }
      }, windowS, agoS);
      await panel.waitForSelector('[data-testid="diff-summary"]', { timeout: 15000 });
      await setPaused(panel, true);
      const shown = await panel.evaluate(() => {
        const s = document.querySelector('[data-testid="diff-summary"]')!;
        const n = (k: string) => Number(s.getAttribute(k));
        return {
          before: [n('data-before-from'), n('data-before-to')], after: [n('data-after-from'), n('data-after-to')],
          seconds: [n('data-before-seconds'), n('data-after-seconds')], ago: n('data-ago'),
          tv: Object.fromEntries([...document.querySelectorAll('[data-testid="diff-table"] tbody tr')].map((r) => [Number(r.getAttribute('data-layer')), Number(r.getAttribute('data-tv'))])),
        };
      });
      // The windows asked for (their ends fall on the snapshots nearest to them).
      expect(shown.seconds[0]).toBeCloseTo(windowS, 0);
      expect(shown.seconds[1]).toBeCloseTo(windowS, 0);
      expect(shown.ago).toBeCloseTo(agoS, 0);
      const log = job.passes();
      const sum = (layer: number, [from, to]: number[]) => {
        const s = new Array(8).fill(0);
        for (let p = from! + 1; p <= to!; p++) log[at(p)]!.counts[layer]!.forEach((c, e) => (s[e] += c));
        return s;
      };
      const phases = (w: number[]) => new Set(Array.from({ length: w[1]! - w[0]! }, (_, i) => log[at(w[0]! + 1 + i)]!.phase ?? -1));
      for (let l = 0; l < 4; l++) expect(shown.tv[l], `layer ${l}`).toBeCloseTo(tv(sum(l, shown.before), sum(l, shown.after)), 9);
      return { ...shown, maxTv: Math.max(...Object.values(shown.tv as Record<string, number>)), phasesBefore: phases(shown.before), phasesAfter: phases(shown.after) };
    };
    await sleep(9000); // two 4-s windows 8 s apart, since attach
    const same = await diff(4, 8);
    expect([...same.phasesBefore, ...same.phasesAfter]).toEqual([0, 0]);
    console.log(`window diff, same inputs: load shift (total variation) at most ${same.maxTv.toFixed(3)} over layers`);
    expect(same.maxTv).toBeLessThan(0.15);

    // ...then after the job switches its inputs: a large shift, and the windows fall on either side.
    fs.writeFileSync(path.join(tmp, 'switch'), '');
    await setPaused(panel, false);
    const deadline = Date.now() + 60000;
    for (;;) {
      const switched = job.passes().filter((p) => p.phase === 1);
      if (switched.length && switched.at(-1)!.time! - switched[0]!.time! >= 6) break;
      expect(Date.now()).toBeLessThan(deadline);
      await sleep(250);
    }
    const changed = await diff(4, 12);
    const firstSwitched = job.passes().find((p) => p.phase === 1)!.pass;
    const why = `windows ${JSON.stringify([changed.before, changed.after])}, log index of their ends ${[...changed.before, ...changed.after].map(at)}, first switched pass ${firstSwitched}`;
    expect([...changed.phasesBefore], why).toEqual([0]);
    expect([...changed.phasesAfter], why).toEqual([1]);
    console.log(`window diff across the input switch: load shift up to ${changed.maxTv.toFixed(3)} (same inputs: ${same.maxTv.toFixed(3)})`);
    expect(changed.maxTv).toBeGreaterThan(0.2);
    expect(changed.maxTv).toBeGreaterThan(2 * same.maxTv);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'views-layers-light.png') });

    // Every new view in the dark theme too.
    await setPaused(panel, false);
    await setTheme(devtools, panel, 'dark');
    for (const view of ['layers', 'activity', 'flow', 'heatmap']) {
      await showView(panel, view);
      await sleep(1500);
      await devtools.screenshot({ path: path.join(ARTIFACTS, `views-${view}-dark.png`) });
    }
    expect(await panel.$eval('[data-testid="legend"]', (el: Element) => el.getAttribute('data-mode'))).toBe('log');

    // -- A recording of the job: the panel replaying it and `moe-devtools flow` on it count the same transitions, which are the job's.
    await showView(panel, 'flow');
    await panel.$eval('[data-testid="record"]', (b: Element) => (b as HTMLElement).click());
    await panel.waitForSelector('[data-testid="recording-status"]', { timeout: 5000 });
    await sleep(3000);
    await panel.$eval('[data-testid="record"]', (b: Element) => (b as HTMLElement).click());
    await panel.waitForSelector('[data-testid="recording-link"]', { timeout: 5000 });
    const text = await panel.$eval('[data-testid="recording-link"]', async (a: Element) => (await fetch((a as HTMLAnchorElement).href)).text());
    const file = path.join(ARTIFACTS, 'views-job.moerec');
    fs.writeFileSync(file, text);
    const cli = recordingFlow(parseRecording(text), { from: 0, to: 1, weighting: 'top1', filter: '' }).flow;
    await setPanelSettings(panel, { windowMode: 'all' });
    const input = await panel.$('[data-testid="recording-file"]');
    await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(file);
    await panel.waitForSelector('[data-testid="job"][data-status="recording"] [data-testid="flow-summary"][data-weighting="top1"]', { timeout: 15000 });
    await sleep(500);
    const replayed = await shownFlow(panel);
    expect(replayed.passes).toEqual(cli.passes);
    expect(cli.passes.length).toBeGreaterThan(10);
    expectSameFlow(replayed.rows, new Map(Array.from(cli.pairs[0]!.weight, (w, i) => [`${cli.pairs[0]!.src[i]}>${cli.pairs[0]!.dst[i]}`, w])));
    expectSameFlow(replayed.rows, logFlow(job.passes(), at, cli.passes, 0, 1, 'top1'));
    console.log(`recording: moe-devtools flow and the panel's replay count the same ${replayed.rows.length} transitions over ${cli.passes.length} passes, as the job logged them`);
  });
});
