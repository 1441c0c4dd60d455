/**
 * One process, two frameworks, end to end: a real job running a tiny transformers Mixtral (torch)
 * and an ONNX Runtime MoE session side by side (test/jobs/multi_framework_job.py), injected through
 * the panel in real DevTools. The job's header offers both models; each, picked in turn, is shown
 * with its own framework and counted exactly as its own framework routed (the job logs both); after
 * Detach the job runs on with the outputs it had and nothing of the probe left.
 */
import * as fs from 'node:fs';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView,
} from '../../scripts/lib/devtools-harness.mjs';
import { findWindow, startFrameworkJob, type Job, type PassRecord } from './jobs';

/** multi_framework_job.py logs the ONNX Runtime model's counts as `counts`, the Mixtral's as `counts_torch`. */
type MultiRecord = PassRecord & { counts_torch: number[][] };

describe('MoE panel attached to a job with a torch model and an ONNX Runtime session', () => {
  let browser: Browser;
  let profile: string;

  beforeAll(async () => {
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('offers both models, each counted exactly as its own framework routed, and detach leaves the job as it was', async () => {
    let job: Job | undefined;
    try {
      job = await startFrameworkJob('multi_framework_job.py', [], 6);
      const before = job.passes();
      const hooks = before.at(-1)!.hooks; // transformers' own forward hooks; the probe's come and go
      const { panel } = await openMoEPanel(browser);
      await panel.waitForSelector(`[data-testid="attach-${job.pid}"]`, { timeout: 30000 });
      await attachThroughPanel(panel, job.pid, 60000);

      const options: Array<{ value: string; text: string | null }> = await panel.$$eval('[data-testid="model-select"] option', (els: Element[]) => els.map((el) => ({ value: (el as HTMLOptionElement).value, text: el.textContent })));
      expect(options.map((o) => o.value)).toEqual(['0', '1']);
      expect(options[0].text).toMatch(/^MixtralForCausalLM \(PyTorch, 2 MoE layers\)$/);
      expect(options[1].text).toMatch(/^InferenceSession \(ONNX Runtime, 2 MoE layers\)$/);

      const cases: Array<{ model: string; framework: string; experts: number; key: 'counts' | 'counts_torch' }> = [
        { model: '0', framework: 'torch', experts: 4, key: 'counts_torch' },
        { model: '1', framework: 'onnxruntime', experts: 8, key: 'counts' },
      ];
      await showView(panel, 'load');
      for (const c of cases) {
        await panel.select('[data-testid="model-select"]', c.model);
        await panel.waitForFunction((f: string) => document.querySelector('[data-testid="job-framework"]')?.getAttribute('data-framework') === f, { polling: 100, timeout: 10000 }, c.framework);
        for (const layer of [0, 1]) {
          await selectLayer(panel, layer);
          await panel.waitForFunction((n: number) => {
            const table = document.querySelector('[data-testid="expert-table"]');
            return Number(table?.getAttribute('data-passes')) >= 8 && table!.querySelectorAll('[data-testid="expert-count"]').length === n;
          }, { polling: 100, timeout: 60000 }, c.experts);
          const shown = await readShownCounts(panel);
          expect(shown.counts).toHaveLength(c.experts);
          const records = (job.passes() as MultiRecord[]).map((r) => ({ ...r, counts: r[c.key] }));
          const start = findWindow(records, layer, shown.passes, shown.counts);
          expect(start, `${c.framework} layer ${layer}: no run of ${shown.passes} passes sums to ${shown.counts}`).toBeGreaterThanOrEqual(0);
        }
      }

      await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
      await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 30000 }, job.pid);
      const detachedAt = job.passes().length;
      const deadline = Date.now() + 30000;
      while (job.passes().length < detachedAt + 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      const after = job.passes().slice(detachedAt + 1);
      expect(after.length).toBeGreaterThanOrEqual(3);
      expect(after.map((p) => p.hooks)).toEqual(after.map(() => hooks));
      const reference = new Map(before.map((p) => [p.pass % 4, p.out]));
      for (const p of after) if (reference.has(p.pass % 4)) expect(p.out).toBe(reference.get(p.pass % 4));
    } finally {
      await job?.stop();
    }
  }, 240000);
});
