/**
 * Findings and views in real DevTools, against real Mixtral jobs with planted faults:
 * a dead expert and a collapsed layer (tiny_moe_job.py --dead / --collapse, whose own
 * log is the ground truth), and a healthy job beside it. Then the session's recording
 * is opened in a fresh browser with no job running and must show the same numbers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser, Frame, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attachThroughPanel, clickInPanel, hoverHeatmap, launchBrowser, makeProfile, openMoEPanel, readFindings, readShownCounts, selectLayer, setPanelSettings, showView,
} from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startTinyJob, type Job, type PassRecord } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const RECORDING = path.join(ARTIFACTS, 'faulty-job.moerec');
const VIEWS = ['overview', 'load', 'heatmap', 'tokens', 'timeline', 'coactivation', 'profiler'];

type Finding = { kind: string; layer: number; experts: number[]; text: string };

function totals(passes: PassRecord[], layer: number): number[] {
  const sum = new Array(passes[0]!.counts[layer]!.length).fill(0);
  for (const p of passes) p.counts[layer]!.forEach((c, e) => (sum[e] += c));
  return sum;
}

async function waitFindings(panel: Frame, pid: number, ready: string, timeout: number): Promise<Finding[]> {
  await panel.waitForFunction(
    (p: number, sel: string) => document.querySelector(`[data-testid="job"][data-pid="${p}"]`) && document.querySelector(sel),
    { polling: 100, timeout }, pid, ready,
  );
  return (await readFindings(panel)) as Finding[];
}

/** Every heatmap value of one layer, read from the hover readout, and the passes it covers. */
async function heatmapRow(panel: Frame, layer: number, experts: number) {
  const passes = Number(await panel.$eval('[data-testid="heatmap-view"]', (el) => el.getAttribute('data-passes')));
  const counts: number[] = [];
  for (let e = 0; e < experts; e++) {
    const text = (await hoverHeatmap(panel, layer, e)) as string;
    const m = /^model\.layers\.(\d+)\.mlp \(layer (\d+)\), expert (\d+): ([\d,]+) assignments/.exec(text);
    expect(m, text).not.toBeNull();
    expect([Number(m![1]), Number(m![2]), Number(m![3])]).toEqual([layer, layer, e]);
    counts.push(Number(m![4]!.replace(/,/g, '')));
  }
  return { passes, counts };
}

async function screenshots(devtools: Page, panel: Frame, prefix: string) {
  for (const view of VIEWS) {
    await showView(panel, view);
    await new Promise((r) => setTimeout(r, 250));
    await devtools.screenshot({ path: path.join(ARTIFACTS, `${prefix}-${view}.png`) });
  }
}

describe('MoE panel findings on jobs with planted faults', () => {
  let faulty: Job;
  let healthy: Job;
  let browser: Browser | undefined;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.rmSync(RECORDING, { force: true });
    [faulty, healthy] = await Promise.all([
      startTinyJob(['--arch', 'mixtral', '--layers', '4', '--experts', '8', '--dead', '1:3', '--collapse', '2']),
      startTinyJob(['--arch', 'mixtral', '--layers', '4', '--experts', '8']),
    ]);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await faulty?.stop();
    await healthy?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('names the dead expert and the collapsed layer within 5 s of attaching, and nothing on a healthy job', async () => {
    // Ground truth, from the jobs' own logs of what their routers chose.
    const truth = faulty.passes();
    expect(totals(truth, 1)[3]).toBe(0);
    expect(totals(truth, 1).filter((c) => c === 0)).toHaveLength(1);
    const l2 = totals(truth, 2);
    expect(l2[0]! + l2[1]!).toBe(l2.reduce((a, b) => a + b, 0)); // experts 0 and 1 take every assignment
    for (const l of [0, 3]) expect(totals(truth, l).every((c) => c > 0)).toBe(true);
    for (let l = 0; l < 4; l++) expect(totals(healthy.passes(), l).every((c) => c > 0)).toBe(true);

    const { devtools, panel } = await openMoEPanel(browser!);
    // A small dead-expert window (the default judges from 1000 tokens): 200 tokens, ~7 passes here.
    await setPanelSettings(panel, { minTokens: 200 });
    const started = Date.now();
    await attachThroughPanel(panel, faulty.pid);
    const findings = await waitFindings(panel, faulty.pid, '[data-testid="finding"][data-kind="dead_expert"][data-layer="1"]', Math.max(500, 5000 - (Date.now() - started)));
    const seconds = (Date.now() - started) / 1000;
    expect(seconds).toBeLessThan(5);
    console.log(`dead expert named ${seconds.toFixed(2)} s after clicking Attach`);

    const dead = findings.filter((f) => f.kind === 'dead_expert');
    expect(dead.find((f) => f.layer === 1)?.experts).toEqual([3]);
    expect(dead.some((f) => f.layer === 0 || f.layer === 3)).toBe(false);
    // In the collapsed layer experts 2..7 really get nothing; the only other dead experts named are those.
    for (const f of dead.filter((f) => f.layer === 2)) expect(f.experts).toEqual([2, 3, 4, 5, 6, 7]);
    await panel.waitForSelector('[data-testid="finding"][data-kind="collapse"]', { timeout: 5000 });
    const collapse = ((await readFindings(panel)) as Finding[]).filter((f) => f.kind === 'collapse');
    expect(collapse.map((f) => f.layer)).toEqual([2]);
    expect(collapse[0]!.experts.sort()).toEqual([0, 1]);
    // named as the model names the layer: its module path and its own layer number
    expect(collapse[0]!.text).toMatch(/model\.layers\.2\.mlp \(layer 2\): routing has collapsed onto experts 0 and 1/);
    // Thresholds are shown beside each finding, and each links to its view.
    expect(await panel.$eval('[data-testid="finding"][data-kind="dead_expert"] .finding-threshold', (el: Element) => el.textContent)).toMatch(/judged from 200/);

    // Record a few seconds of the faulty job while checking the numbers against its log.
    await panel.click('[data-testid="record"]');
    await panel.waitForSelector('[data-testid="recording-status"]', { timeout: 5000 });
    await panel.click('[data-testid="finding"][data-kind="dead_expert"] [data-testid="finding-link"]');
    await panel.waitForSelector('[data-testid="view-heatmap"]', { timeout: 5000 });
    await new Promise((r) => setTimeout(r, 1500));
    await panel.click('[data-testid="record"]');
    await panel.waitForSelector('[data-testid="recording-link"]', { timeout: 5000 });
    // Pause so that the heatmap holds still while it is read; the job's log must hold a run of exactly those passes.
    await panel.click('[data-testid="pause"]');
    await new Promise((r) => setTimeout(r, 400));
    const rows: number[][] = [];
    for (const layer of [0, 1, 2]) {
      const row = await heatmapRow(panel, layer, 8);
      rows.push(row.counts);
      expect(findWindow(faulty.passes(), layer, row.passes, row.counts), `layer ${layer}: ${row.counts} over ${row.passes} passes`).toBeGreaterThanOrEqual(0);
    }
    expect(rows[1]![3]).toBe(0);
    await panel.click('[data-testid="pause"]');

    // Save the recording through its <a download> blob link.
    const text = await panel.$eval('[data-testid="recording-link"]', async (a: Element) => (await fetch((a as HTMLAnchorElement).href)).text());
    fs.writeFileSync(RECORDING, text);
    expect(text.split('\n')[0]).toContain('moe-devtools-recording');

    // The healthy job, attached beside it: no dead expert, no collapse, once the window can judge.
    await attachThroughPanel(panel, healthy.pid);
    await showView(panel, 'overview');
    const healthyFindings = await waitFindings(panel, healthy.pid, '[data-testid="view-overview"]:not(:has([data-testid="window-too-small"])) [data-testid="layer-health"]', 15000);
    await new Promise((r) => setTimeout(r, 1000));
    const later = (await readFindings(panel)) as Finding[];
    for (const f of [...healthyFindings, ...later]) expect(['dead_expert', 'collapse']).not.toContain(f.kind);
    await screenshots(devtools, panel, 'healthy');

    // Back to the faulty job: the store kept its state.
    await clickInPanel(panel, `li[data-pid="${faulty.pid}"]`);
    await showView(panel, 'overview');
    await panel.waitForSelector(`[data-testid="job"][data-pid="${faulty.pid}"] [data-testid="finding"][data-kind="collapse"]`, { timeout: 5000 });
    await screenshots(devtools, panel, 'faulty');
    // Tokens: click a sampled token to see its path; in layer 2 it went to experts 0 and 1, as every token did.
    await showView(panel, 'tokens');
    await panel.waitForSelector('[data-testid="token"]', { timeout: 10000 });
    await clickInPanel(panel, '[data-testid="token"]'); // a DOM click: the stream re-renders under a mouse click
    await panel.waitForSelector('[data-testid="token-path"] tr[data-layer="2"]', { timeout: 5000 });
    const path2 = await panel.$eval('[data-testid="token-path"] tr[data-layer="2"] [data-testid="token-experts"]', (el: Element) => el.textContent);
    expect(path2).toMatch(/^[01] \(.*\)[01] \(/);
  });

  it('opens that recording with no job running and shows the same numbers; rejects a corrupt file', async () => {
    expect(fs.existsSync(RECORDING), 'the first test saves the recording').toBe(true);
    await browser?.close();
    await faulty.stop();
    await healthy.stop();
    fs.rmSync(profile, { recursive: true, force: true });
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
    const { devtools, panel } = await openMoEPanel(browser);

    // A foreign file first: a clear notice, and nothing else changes.
    const bogus = path.join(ARTIFACTS, 'not-a-recording.moerec');
    fs.writeFileSync(bogus, '{"hello": "world"}\nnot json\n');
    const input = await panel.$('[data-testid="recording-file"]');
    await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(bogus);
    await panel.waitForSelector('[data-testid="notice"][data-code="bad_recording"]', { timeout: 10000 });
    expect(await panel.$eval('[data-testid="notice"][data-code="bad_recording"]', (el: Element) => el.textContent)).toMatch(/not a MoE DevTools recording/);
    expect(await panel.$('[data-testid="job"]')).toBeNull();

    await setPanelSettings(panel, { minTokens: 200, windowMode: 'all' });
    const input2 = await panel.$('[data-testid="recording-file"]');
    await (input2 as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(RECORDING);
    await panel.waitForSelector('[data-testid="job"][data-status="recording"] [data-testid="finding"][data-kind="collapse"]', { timeout: 10000 });
    const findings = (await readFindings(panel)) as Finding[];
    expect(findings.find((f) => f.kind === 'dead_expert' && f.layer === 1)?.experts).toEqual([3]);
    expect(findings.filter((f) => f.kind === 'collapse').map((f) => f.layer)).toEqual([2]);

    // Same numbers as live: the recording's cumulative counts since attach, read in the Load view.
    await showView(panel, 'load');
    await selectLayer(panel, 1);
    const shown = await readShownCounts(panel);
    const log = fs.readFileSync(RECORDING, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const lastUpdate = log.filter((m) => m.type === 'update').pop();
    expect(shown.passes).toBe(lastUpdate.passes);
    expect(shown.counts).toEqual(lastUpdate.counts.slice(8, 16));
    expect(shown.counts[3]).toBe(0);
    // ...which is what the job's own log says it routed over that many passes.
    expect(findWindow(faulty.passes(), 1, shown.passes, shown.counts)).toBeGreaterThanOrEqual(0);
    await screenshots(devtools, panel, 'replay');
  });
});
