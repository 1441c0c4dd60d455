/**
 * A distributed MoE job in the panel: a real torchrun job (4 processes, torch.distributed with gloo
 * on CPU, expert parallel: each rank holds 2 of the 8 experts of every layer and tokens go to them
 * with all_to_all), attached through the panel's one "Attach all" in real DevTools. What the panel
 * shows for the job must equal the sum of what each rank's experts received by its own log, each
 * rank's row in the Ranks view its own log, and after Detach every rank runs on unchanged. Then a
 * job whose ranks are data-parallel replicas loses a rank mid-stream: the panel names it within a
 * second and the other ranks keep streaming.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clickInPanel, launchBrowser, makeProfile, openMoEPanel, setPanelSettings, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT } from './jobs';
import { startRanks, startTorchrunJob, type RankedJob } from './ranks';
import { attachAll, checkLayer, readRanks } from './ranks-panel';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');

describe('a distributed MoE job in the panel', () => {
  let browser: Browser;
  let profile: string;
  const jobs: RankedJob[] = [];

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    for (const job of jobs) await job.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('shows an expert-parallel torchrun job as one: counts the sum of its ranks, each rank its own, and Detach leaves every rank as it was', async () => {
    // rank 3's experts take 10 ms more per call: a straggler the others wait for in the all_to_all
    const job = await startTorchrunJob(['--mode', 'ep', '--sleep', '0.05', '--slow-rank', '3']);
    jobs.push(job);
    const before = job.logs();
    const baselineHooks = before.map((l) => l.passes[0]!.hooks);
    const reference = before.map((l) => new Map(l.passes.map((p) => [p.pass % 4, p.out]))); // inputs cycle with period 4

    const { devtools, panel } = await openMoEPanel(browser);
    await setPanelSettings(panel, { windowMode: 'all' });
    const started = Date.now();
    await attachAll(panel, job.pids());
    console.log(`attach to 4 ranks through the panel took ${Date.now() - started} ms`);
    const status = await panel.$eval('[data-testid="attach-status"]', (el: Element) => el.textContent);
    expect(status).toMatch(/^4 of 4 ranks streaming · torchrun /);

    const shown0 = await checkLayer(panel, () => job.logs(), 0, 4);
    expect(shown0.ranks.map((r) => r.held)).toEqual([[0, 1], [2, 3], [4, 5], [6, 7]]);
    // the Ranks view's rank x expert: each rank's experts only received rows for the experts it holds
    for (const r of shown0.ranks) r.counts.forEach((c, e) => expect(c > 0).toBe(r.held.includes(e)));
    await checkLayer(panel, () => job.logs(), 1, 4);
    await showView(panel, 'ranks');
    // the straggler: named by the time inside its own experts, which the time in MoE blocks hides
    // (every rank's block time includes waiting for it)
    const straggler = await panel.waitForFunction(() => document.querySelector('[data-testid="rank-finding"][data-kind="rank_straggler"]')?.textContent,
      { polling: 200, timeout: 20000 });
    expect(await straggler.jsonValue()).toMatch(/^Rank 3's experts compute for [\d.]+ ms per pass, \d+% over the median rank's [\d.]+ ms: the other ranks wait for it in the all-to-all$/);
    expect(await panel.$eval('[data-testid="time-basis"]', (el: Element) => el.getAttribute('data-basis'))).toBe('experts');
    expect(Number(await panel.$eval('[data-testid="time-skew"]', (el: Element) => el.textContent!.replace('×', '')))).toBeGreaterThan(3);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'panel-ranks.png') });

    await clickInPanel(panel, '[data-testid="detach-job-0"]');
    await panel.waitForFunction(() => document.querySelector('[data-testid="job"][data-status="detached"]'), { polling: 100, timeout: 20000 });
    const detachedAt = job.logs().map((l) => l.passes.length);
    const deadline = Date.now() + 30000;
    while (job.logs().some((l, i) => l.passes.length < detachedAt[i]! + 12) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    job.logs().forEach((log, i) => {
      const after = log.passes.slice(detachedAt[i]! + 2); // a pass in flight at detach may still see the old hooks
      expect(after.length).toBeGreaterThanOrEqual(8);
      for (const p of after) {
        expect(p.hooks).toBe(baselineHooks[i]);
        expect(p.threads).toEqual(['MainThread']);
        expect(p.out).toBe(reference[i]!.get(p.pass % 4));
      }
    });
    expect(job.launchers[0]!.exitCode).toBeNull();
    await job.stop();
  });

  it('names a rank that dies within a second, and the other ranks keep streaming', async () => {
    const job = await startRanks(['--mode', 'dp', '--sleep', '0.05']);
    jobs.push(job);
    const { panel } = await openMoEPanel(browser);
    await attachAll(panel, job.pids());
    const shown = await checkLayer(panel, () => job.logs(), 0, 4);
    const victim = shown.ranks.find((r) => r.rank === 2)!;

    const killed = Date.now();
    process.kill(victim.pid, 'SIGKILL');
    const notice = await panel.waitForFunction((pid: number) => {
      const n = [...document.querySelectorAll('[data-testid="notice"][data-code="rank_lost"]')].find((el) => el.textContent!.includes(`pid ${pid}`));
      return n?.textContent;
    }, { polling: 20, timeout: 10000 }, victim.pid);
    const namedMs = Date.now() - killed;
    const text = await notice.jsonValue();
    console.log(`rank 2 killed; the panel named it after ${namedMs} ms: ${text}`);
    expect(text).toContain(`Rank 2 (pid ${victim.pid}`);
    expect(text).toContain('exited; ranks 0, 1 and 3 go on');
    expect(namedMs).toBeLessThan(1000);

    // the others go on: more passes of ranks 0, 1 and 3, the dead rank's row stays as it ended
    await showView(panel, 'ranks');
    await panel.waitForFunction(() => document.querySelector('[data-testid="rank-row"][data-rank="2"][data-status="exited"]'), { polling: 100, timeout: 10000 });
    const at = await readRanks(panel);
    await new Promise((r) => setTimeout(r, 2500));
    const later = await readRanks(panel);
    for (const rank of [0, 1, 3]) {
      const a = at.ranks.find((r) => r.rank === rank)!;
      const b = later.ranks.find((r) => r.rank === rank)!;
      expect(b.status).toBe('attached');
      expect(b.passes).toBeGreaterThan(a.passes + 5);
    }
    const findings = await panel.$$eval('[data-testid="rank-finding"]', (els: Element[]) => els.map((el) => [el.getAttribute('data-kind'), el.getAttribute('data-rank')]));
    expect(findings).toContainEqual(['rank_ended', '2']);
  });
});
