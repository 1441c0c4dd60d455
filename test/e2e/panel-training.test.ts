/**
 * A Hugging Face training run in the panel, end to end: a real transformers Trainer fine-tuning a
 * tiny random Mixtral (test/jobs/trainer_moe_job.py, which never imports the probe), the probe
 * injected through the panel in the middle of the run. The Training view shows, for the last pass
 * it got, each layer's aux load-balancing loss and router z-loss, the model's aux_loss and loss,
 * exactly as the job logged them for that step; forward and backward passes are counted apart;
 * the Load view's counts equal the model's own routing; and the whole run, attached or not, gives
 * the same loss and the same gradients at every step as a run nobody watched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startFrameworkJob, type Job } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const ARGS = ['--steps', '300', '--layers', '2', '--sleep', '0.04'];

interface Step { pass: number; loss: number; grads: string; aux: number[]; z: number[]; model_aux: number; counts: number[][]; hooks: number }

async function finished(job: Job, timeoutMs = 300000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (job.process.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  expect(job.process.exitCode).toBe(0);
}

describe('MoE panel attached to a transformers Trainer run', () => {
  let browser: Browser;
  let profile: string;
  let unwatched: Job;
  let job: Job;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    // The same run, never watched, for the step-by-step comparison at the end.
    unwatched = await startFrameworkJob('trainer_moe_job.py', ARGS, 1);
    job = await startFrameworkJob('trainer_moe_job.py', ARGS, 30);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    await unwatched?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('shows per-layer aux and z losses as the model computed them, backward passes apart, and trains bitwise as unwatched', async () => {
    const { devtools, panel } = await openMoEPanel(browser);
    await attachThroughPanel(panel, job.pid, 60000);

    await showView(panel, 'training');
    await panel.waitForFunction(() => Number(document.querySelector('[data-testid="training-view"]')?.getAttribute('data-passes')) >= 20, { polling: 100, timeout: 60000 });
    const shown = await panel.$eval('[data-testid="training-table"]', (t: Element) => ({
      pass: Number(t.getAttribute('data-pass')),
      loss: Number(t.getAttribute('data-loss')),
      modelAux: Number(t.getAttribute('data-model-aux')),
      aux: [...t.querySelectorAll('tr[data-layer]')].map((r) => Number(r.getAttribute('data-aux'))),
      z: [...t.querySelectorAll('tr[data-layer]')].map((r) => Number(r.getAttribute('data-z'))),
      backwardMs: [...t.querySelectorAll('[data-testid="backward-ms"]')].map((td) => Number(td.textContent)),
    }));
    const forward = Number(await panel.$eval('[data-testid="train-passes"]', (el: Element) => (el.textContent ?? '').replace(/,/g, '')));
    const backward = Number(await panel.$eval('[data-testid="backward-passes"]', (el: Element) => (el.textContent ?? '').replace(/,/g, '')));
    // The step whose loss the panel shows: every per-layer value is that step's, as the job logged it.
    const steps = job.passes() as unknown as Step[];
    const step = steps.find((s) => s.loss === shown.loss);
    expect(step, `no step of the run had loss ${shown.loss}`).toBeDefined();
    expect(shown.aux).toEqual(step!.aux);
    expect(shown.z).toEqual(step!.z);
    expect(shown.modelAux).toBe(step!.model_aux);
    // Forward and backward passes counted apart; each layer's backward took time.
    expect(forward).toBeGreaterThanOrEqual(20);
    expect(backward).toBeGreaterThanOrEqual(forward - 2);
    expect(backward).toBeLessThanOrEqual(forward);
    expect(shown.backwardMs.every((ms: number) => ms > 0)).toBe(true);
    await showView(panel, 'timeline');
    await panel.waitForSelector('[data-testid="timeline-backward"]', { timeout: 20000 });
    await showView(panel, 'training');
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'panel-training.png') });

    // Counts: each layer's, over the passes shown, equal the model's own routing in those steps.
    await showView(panel, 'load');
    for (const layer of [0, 1]) {
      await selectLayer(panel, layer);
      const counts = await readShownCounts(panel);
      expect(counts.passes).toBeGreaterThan(0);
      expect(findWindow(job.passes(), layer, counts.passes, counts.counts), `layer ${layer}: ${counts.counts} over ${counts.passes} passes`).toBeGreaterThanOrEqual(0);
    }

    await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
    await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 30000 }, job.pid);

    // The run, watched in the middle, is bitwise the run nobody watched: loss and gradients at every step.
    await finished(job);
    await finished(unwatched);
    const watchedSteps = job.passes() as unknown as Step[];
    const unwatchedSteps = unwatched.passes() as unknown as Step[];
    expect(watchedSteps).toHaveLength(300);
    expect(watchedSteps.map((s) => [s.loss, s.grads])).toEqual(unwatchedSteps.map((s) => [s.loss, s.grads]));
    expect(watchedSteps.at(-1)!.hooks).toBe(unwatchedSteps.at(-1)!.hooks);
  });
});
