/**
 * The History view in real DevTools: attach to a real job through the panel, detach, close the
 * browser (and with it the host); start a new browser: the session is listed and reopens with the
 * same numbers the live view showed, every view works on it, it exports as a .moerec that holds
 * those numbers and imports back as a session. A damaged database gets a clear message in the
 * panel and is left as it was.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, setPanelSettings, showView,
} from '../../scripts/lib/devtools-harness.mjs';
import { findWindow, startTinyJob, type Job } from './jobs';
import { contiguousPlacement, eplbPlacement, planPlacement } from '../../src/analysis/placement';

const LAYERS = 4;

async function shownLayers(panel: Frame) {
  await showView(panel, 'load');
  const out = [];
  for (let l = 0; l < LAYERS; l++) {
    await selectLayer(panel, l);
    out.push(await readShownCounts(panel));
  }
  return out;
}

async function openHistory(panel: Frame) {
  if (!(await panel.$('[data-testid="history-view"]'))) await clickInPanel(panel, '[data-testid="history-toggle"]');
  await panel.waitForSelector('[data-testid="history-view"]', { timeout: 10000 });
}

describe('History view', () => {
  let job: Job;
  let browser: Browser | undefined;
  const profiles: string[] = [];
  let dir: string;
  let db: string;
  const envBefore = process.env.MOE_DEVTOOLS_DB;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-panel-history-'));
    db = path.join(dir, 'history.sqlite');
    process.env.MOE_DEVTOOLS_DB = db; // the browser passes its environment on to the host
    job = await startTinyJob(['--sleep', '0.02']);
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    for (const p of profiles) fs.rmSync(p, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    if (envBefore === undefined) delete process.env.MOE_DEVTOOLS_DB;
    else process.env.MOE_DEVTOOLS_DB = envBefore;
  });

  async function freshBrowser() {
    await browser?.close();
    const profile = makeProfile();
    profiles.push(profile);
    browser = await launchBrowser({ userDataDir: profile });
    return openMoEPanel(browser);
  }

  it('lists the session after the browser and host restart and reopens it with the same numbers', async () => {
    let { panel } = await freshBrowser();
    await setPanelSettings(panel, { windowMode: 'all' });
    await attachThroughPanel(panel, job.pid);
    await new Promise((r) => setTimeout(r, 5000));
    await clickInPanel(panel, '[data-testid="toolbar-detach"]');
    await panel.waitForSelector(`[data-testid="job"][data-pid="${job.pid}"][data-status="detached"]`, { timeout: 15000 });
    await new Promise((r) => setTimeout(r, 500)); // the last analysis after the final counts
    const live = await shownLayers(panel);
    expect(live[0]!.passes).toBeGreaterThan(10);
    for (let l = 0; l < LAYERS; l++) expect(findWindow(job.passes(), l, live[l]!.passes, live[l]!.counts), `layer ${l}`).toBeGreaterThanOrEqual(0);

    ({ panel } = await freshBrowser()); // closes the first browser: its host exits
    await openHistory(panel);
    const row = `[data-testid="session-row"][data-pid="${job.pid}"]`;
    await panel.waitForSelector(row, { timeout: 20000 });
    const listed = await panel.$eval(row, (el: Element) => el.textContent ?? '');
    expect(listed).toMatch(/tiny_moe_job\.py/);
    expect(listed).toMatch(/MixtralForCausalLM/);
    expect(listed).not.toMatch(/recording/); // it ended when the panel detached
    await setPanelSettings(panel, { windowMode: 'all' });
    await clickInPanel(panel, `${row} [data-testid="session-open"]`);
    await panel.waitForSelector('[data-testid="job"][data-status="recording"]', { timeout: 30000 });
    const reopened = await shownLayers(panel);
    expect(reopened).toEqual(live);

    // every view works on the reopened session
    for (const view of ['overview', 'heatmap', 'tokens', 'timeline', 'coactivation', 'profiler', 'anomalies', 'compare']) {
      await showView(panel, view);
    }
    await showView(panel, 'tokens');
    await panel.waitForSelector('[data-testid="token"]', { timeout: 10000 });
    await showView(panel, 'compare');
    // against itself: no divergence anywhere
    await panel.waitForSelector('[data-testid="compare-layer"]', { timeout: 10000 });

    // the placement plan beside Load, from the loads the reopened session shows (the selected layer; 4
    // devices, 4 redundant slots by default): the same placements the analyses give for those loads
    await showView(panel, 'load');
    await clickInPanel(panel, '[data-testid="plan-make"]');
    await panel.waitForSelector('[data-testid="plan-layer"], [data-testid="plan-error"]', { timeout: 20000 });
    const shownPlan = await panel.$eval('[data-testid="plan-layer"]', (el: Element) => ({
      layer: Number(el.getAttribute('data-layer')),
      before: Number(el.getAttribute('data-before')), eplb: Number(el.getAttribute('data-eplb')), ours: Number(el.getAttribute('data-ours')),
    }));
    const load = live[shownPlan.layer]!.counts;
    expect(shownPlan.before).toBeCloseTo(contiguousPlacement(load, 4).balancedness, 12);
    expect(shownPlan.eplb).toBeCloseTo(eplbPlacement(load, 4, 4).balancedness, 12);
    expect(shownPlan.ours).toBeCloseTo(planPlacement(load, 4, 4).balancedness, 12);
    expect(shownPlan.ours).toBeGreaterThanOrEqual(shownPlan.eplb - 1e-12);

    // export it as a .moerec: the last snapshot is the live view's
    await openHistory(panel);
    await clickInPanel(panel, `${row} [data-testid="session-export"]`);
    await panel.waitForSelector('[data-testid="recording-link"]', { timeout: 30000 });
    const text = await panel.$eval('[data-testid="recording-link"]', async (a: Element) => (await fetch((a as HTMLAnchorElement).href)).text());
    const lines = text.trim().split('\n').map((l: string) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ format: 'moe-devtools-recording', pid: job.pid });
    const last = lines.filter((m: { type: string }) => m.type === 'update').pop();
    expect(last.passes).toBe(live[0]!.passes);
    expect(last.counts.slice(8, 16)).toEqual(live[1]!.counts);
    // and import it back: a second session, from the file
    const file = path.join(dir, 'exported.moerec');
    fs.writeFileSync(file, text);
    const input = await panel.$('[data-testid="history-import-file"]');
    await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(file);
    await panel.waitForFunction(() => document.querySelectorAll('[data-testid="session-row"]').length === 2, { polling: 200, timeout: 30000 });
    expect(await panel.$eval('[data-testid="sessions"]', (el: Element) => el.textContent)).toMatch(/imported/);
  });

  it('says so when the database is damaged, and leaves it as it was', async () => {
    const damaged = path.join(dir, 'damaged.sqlite');
    fs.writeFileSync(damaged, Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(8176, 0x37)]));
    const before = fs.readFileSync(damaged);
    process.env.MOE_DEVTOOLS_DB = damaged;
    const { panel } = await freshBrowser();
    await openHistory(panel);
    await panel.waitForSelector('[data-testid="history-error"]', { timeout: 20000 });
    const message = await panel.$eval('[data-testid="history-error"]', (el: Element) => el.textContent ?? '');
    expect(message).toMatch(/damaged\.sqlite .*(is damaged|not a MoE DevTools history).*left as it is/);
    expect(message).toMatch(/Move it aside|another file/);
    // attaching still works without history
    await attachThroughPanel(panel, job.pid);
    await browser!.close();
    browser = undefined;
    await new Promise((r) => setTimeout(r, 1000));
    expect(fs.readFileSync(damaged).equals(before)).toBe(true);
  });
});
