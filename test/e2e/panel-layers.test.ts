/**
 * Layers that differ, named as the model names them, in real DevTools: a hand-written job
 * (test/jobs/mixed_moe_job.py, which never imports the probe and logs what each block dispatched)
 * with attention experts beside MLP experts of another width, zero-compute experts behind a router
 * applied with F.linear, and a block whose gate holds a NaN. Every number checked against the
 * job's own log; NaN logits are reported as such and draw no load verdict.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attachThroughPanel, clickInPanel, hoverHeatmap, launchBrowser, makeProfile, openMoEPanel, readFindings, readShownCounts, selectLayer, setPanelSettings, showView,
} from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startMixedJob, type Job } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const LABELS = [
  'model.layers.0.self_attn (layer 0, attention experts)',
  'model.layers.0.mlp (layer 0)',
  'model.layers.1.mlp (layer 1)',
  'model.layers.2.mlp (layer 2)',
];
const WIDTHS = [8, 4, 8, 4];

type Finding = { kind: string; layer: number; experts: number[]; text: string };

async function shownLayer(panel: Frame, job: Job, layer: number) {
  await selectLayer(panel, layer);
  await panel.waitForFunction(() => Number(document.querySelector('[data-testid="expert-table"]')?.getAttribute('data-passes')) >= 5, { polling: 100, timeout: 30000 });
  const shown = await readShownCounts(panel);
  expect(shown.counts, `layer ${layer}`).toHaveLength(WIDTHS[layer]!);
  expect(findWindow(job.passes(), layer, shown.passes, shown.counts), `layer ${layer}: ${shown.counts} over ${shown.passes} passes`).toBeGreaterThanOrEqual(0);
  return shown;
}

describe('MoE panel on a model whose layers differ', () => {
  let job: Job;
  let browser: Browser;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    job = await startMixedJob(['--nan']);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('keeps each layer\'s width, names layers by path and model layer, and reports NaN routing as such', async () => {
    const before = job.passes();
    const baselineHooks = before[0]!.hooks;
    const reference = new Map(before.map((p) => [p.pass % 4, p.out]));
    // The job's own log: the NaN layer sent every token to the same two experts.
    const nanLayer = before.at(-1)!.counts[3]!;
    expect(nanLayer.filter((c) => c > 0)).toHaveLength(2);

    const { devtools, panel } = await openMoEPanel(browser);
    await setPanelSettings(panel, { minTokens: 200 });
    await attachThroughPanel(panel, job.pid);
    await panel.waitForSelector('[data-testid="finding"][data-kind="nan_logits"][data-layer="3"]', { timeout: 15000 });
    await new Promise((r) => setTimeout(r, 1500)); // a window that can judge every layer (200 tokens)

    // Layers as the model names them, each with its own experts and how its routing was read.
    const labels = await panel.$$eval('[data-testid="layer-label"]', (els: Element[]) => els.map((el) => el.firstChild?.textContent));
    expect(labels).toEqual(LABELS);
    const read = await panel.$$eval('[data-testid="layer-source"]', (els: Element[]) => els.map((el) => el.textContent));
    expect(read).toEqual(['as dispatched', 'as dispatched', 'as dispatched', 'expert inputs']);
    const notes = await panel.$eval('[data-testid="routing-notes"]', (el: Element) => el.textContent ?? '');
    expect(notes).toContain('model.layers.1.mlp (layer 1): 8 experts (2 of them zero-compute: the last 2); top-2 per token');
    expect(notes).toContain('rows each expert module received (no per-token ids)');

    // NaN logits: reported with the layer's name, and no collapse, dead-expert or imbalance
    // verdict on that layer, although its counts (what its experts really got) look collapsed.
    const findings = (await readFindings(panel)) as Finding[];
    const onNan = findings.filter((f) => f.layer === 3);
    expect(onNan.map((f) => f.kind)).toEqual(['nan_logits']);
    expect(onNan[0]!.text).toMatch(/model\.layers\.2\.mlp \(layer 2\): router logits contained [\d,]+ NaN and 0 infinite values/);
    // No layer is judged over experts it does not have: a dead expert named exists in its layer and got nothing in the job's log.
    for (const f of findings.filter((x) => x.kind === 'dead_expert')) {
      expect(Math.max(...f.experts)).toBeLessThan(WIDTHS[f.layer]!);
    }

    // Every layer's counts, at its own width, equal what the job dispatched over the passes shown.
    await showView(panel, 'load');
    await shownLayer(panel, job, 0);
    await shownLayer(panel, job, 1);
    const zero = await shownLayer(panel, job, 2);
    expect(zero.counts[6]! + zero.counts[7]!, 'the zero-compute experts are chosen').toBeGreaterThan(0);
    const nan = await shownLayer(panel, job, 3);
    expect(nan.counts.filter((c: number) => c > 0)).toHaveLength(2);
    const marks = await panel.$$eval('[data-testid="expert-table"] tr[data-expert]', (rows: Element[]) => rows.length);
    expect(marks).toBe(4);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'mixed-load.png') });

    // The heatmap draws each layer at its own width: the 4-expert layer has no expert 6.
    await showView(panel, 'heatmap');
    await panel.waitForFunction(() => {
      const canvas = document.querySelector('[data-testid="heatmap"]') as HTMLCanvasElement | null;
      return canvas && canvas.height === 4 && canvas.width === 8; // 4 layers, the widest has 8 experts
    }, { polling: 100, timeout: 10000 });
    expect(await hoverHeatmap(panel, 1, 6)).toBe('model.layers.0.mlp (layer 0) has 4 experts (no expert 6)');
    expect(await hoverHeatmap(panel, 2, 7)).toMatch(/^model\.layers\.1\.mlp \(layer 1\), expert 7 \(zero-compute\): [\d,]+ assignments/);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'mixed-heatmap.png') });
    await showView(panel, 'overview');
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'mixed-overview.png') });

    // Detach: the job goes on unchanged, with the hooks it had.
    await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
    await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 15000 }, job.pid);
    const detachedAt = job.passes().length;
    const deadline = Date.now() + 20000;
    while (job.passes().length < detachedAt + 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const after = job.passes().slice(detachedAt + 2);
    expect(after.length).toBeGreaterThanOrEqual(6);
    for (const record of after) {
      expect(record.hooks).toBe(baselineHooks);
      expect(record.out).toBe(reference.get(record.pass % 4));
    }
  });
});
