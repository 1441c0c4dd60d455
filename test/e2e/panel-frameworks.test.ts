/**
 * Jobs of other frameworks in the same panel, end to end: real Chromium, the unpacked extension in
 * real DevTools, the real host injecting the probe (ptrace) into real, unprepared processes, each
 * running a tiny MoE language model written in its framework (test/jobs/*_moe_job.py: ONNX
 * Runtime, JAX/Flax linen and nnx under jit, Keras 3 in a tf.function), top-2 of 8 experts, 3 layers.
 * For each: the process list and the job say the framework; every layer's counts equal the job's
 * own top-k over its router logits over exactly the passes the panel counted; every view renders
 * for it; after Detach the job's outputs are the ones it had before, with nothing of the probe left.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView,
} from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startFrameworkJob, type Job } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const LAYERS = 3;

interface Case {
  name: string;
  script: string;
  args: string[];
  framework: string;
  /** What the job head's tag starts with. */
  tag: RegExp;
  layerNames: string[];
  /** Whether attaching re-traces compiled functions (then the panel says so in a notice). */
  retrace: RegExp | null;
}

const CASES: Case[] = [
  {
    name: 'ONNX Runtime', script: 'onnx_moe_job.py', args: [], framework: 'onnxruntime', tag: /^ONNX Runtime \d/,
    layerNames: [0, 1, 2].map((i) => `model.layers.${i}.mlp (layer ${i})`), retrace: null,
  },
  {
    name: 'JAX/Flax linen under jit', script: 'jax_moe_job.py', args: ['--api', 'linen'], framework: 'jax', tag: /^JAX \d+\.\d+\.\d+ \(flax /,
    layerNames: [0, 1, 2].map((i) => `layers_${i} (layer ${i})`), retrace: /cleared JAX's compilation caches.*first pass after attaching took [\d.]+ s/,
  },
  {
    name: 'JAX/Flax nnx under nnx.jit', script: 'jax_moe_job.py', args: ['--api', 'nnx'], framework: 'jax', tag: /^JAX /,
    layerNames: [0, 1, 2].map((i) => `layers.${i} (layer ${i})`), retrace: /cleared JAX's compilation caches/,
  },
  {
    name: 'Keras 3 on TensorFlow in a tf.function', script: 'keras_moe_job.py', args: [], framework: 'tensorflow', tag: /^TensorFlow \d+\.\d+\.\d+ \(keras /,
    layerNames: [0, 1, 2].map((i) => `blocks.${i} (layer ${i})`), retrace: /cleared the traces of every tf\.function/,
  },
];

async function noticeTexts(panel: Frame): Promise<string[]> {
  return panel.$$eval('[data-testid="notice"]', (els: Element[]) => els.map((el) => el.textContent ?? ''));
}

describe('MoE panel attached to jobs of other frameworks', () => {
  let browser: Browser;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  for (const c of CASES) {
    it(`${c.name}: the framework is shown, counts equal the job's own top-k, every view works, detach leaves it as it was`, async () => {
      let job: Job | undefined;
      try {
        job = await startFrameworkJob(c.script, [...c.args, '--layers', String(LAYERS)]);
        const before = job.passes();
        const reference = new Map(before.map((p) => [p.pass % 4, p.out]));
        expect(before.at(-1)!.hooks).toBe(0);
        const { devtools, panel } = await openMoEPanel(browser);

        // The process list names the framework from the libraries the process loaded.
        const row = `li[data-pid="${job.pid}"]`;
        await panel.waitForSelector(`${row} [data-testid="attach-${job.pid}"]`, { timeout: 30000 });
        const listed = await panel.$$eval(`${row} [data-testid="process-framework"]`, (els: Element[]) => els.map((el) => el.textContent));
        expect(listed).toContain({ onnxruntime: 'ONNX Runtime', jax: 'JAX', tensorflow: 'TensorFlow' }[c.framework]);

        await attachThroughPanel(panel, job.pid, 60000);
        const status = await panel.$eval('[data-testid="attach-status"]', (el: Element) => el.textContent);
        expect(status).toMatch(/^attached via ptrace in \d+ ms$/);
        const tag = await panel.$eval('[data-testid="job-framework"]', (el: Element) => ({ text: el.textContent, framework: el.getAttribute('data-framework') }));
        expect(tag.framework).toBe(c.framework);
        expect(tag.text).toMatch(c.tag);
        const notices = await noticeTexts(panel);
        if (c.retrace) expect(notices.some((n) => c.retrace!.test(n)), notices.join(' | ')).toBe(true);
        else expect(notices).toEqual([]);

        // Every layer, named as the model names it, counted exactly as the job's own top-k over its router logits.
        await showView(panel, 'load');
        const labels = await panel.$$eval('[data-testid="layer-select"] option', (els: Element[]) => els.map((el) => el.textContent));
        expect(labels).toEqual(c.layerNames);
        for (let layer = 0; layer < LAYERS; layer++) {
          await selectLayer(panel, layer);
          await panel.waitForFunction(() => Number(document.querySelector('[data-testid="expert-table"]')?.getAttribute('data-passes')) >= 10, { polling: 100, timeout: 60000 });
          const shown = await readShownCounts(panel);
          expect(shown.counts).toHaveLength(8);
          expect(shown.counts.reduce((a: number, b: number) => a + b, 0)).toBe(shown.passes * 2 * 16 * 2); // passes x batch x seq x top-k
          const start = findWindow(job.passes(), layer, shown.passes, shown.counts);
          expect(start, `${c.name} layer ${layer}: no run of ${shown.passes} passes sums to ${shown.counts}`).toBeGreaterThanOrEqual(0);
        }

        // Every view works for this job as for a torch one.
        await showView(panel, 'overview');
        await panel.waitForSelector('[data-testid="layer-health"]', { timeout: 10000 });
        const overview = await panel.$$eval('[data-testid="layer-label"]', (els: Element[]) => els.map((el) => el.firstChild?.textContent));
        expect(overview).toEqual(c.layerNames);
        await showView(panel, 'heatmap');
        await panel.waitForFunction(() => {
          const canvas = document.querySelector('[data-testid="heatmap"]') as HTMLCanvasElement | null;
          return canvas && canvas.height === 3 && canvas.width === 8;
        }, { polling: 100, timeout: 10000 });
        await showView(panel, 'tokens');
        await panel.waitForFunction(() => document.querySelectorAll('[data-testid="view-tokens"] [data-testid="token"]').length > 0, { polling: 100, timeout: 20000 });
        await showView(panel, 'timeline');
        await panel.waitForFunction(() => Number(document.querySelector('[data-testid="timeline-view"]')?.getAttribute('data-points')) > 0, { polling: 100, timeout: 20000 });
        await showView(panel, 'coactivation');
        await showView(panel, 'profiler');
        expect(await panel.$('[data-testid="profile-unmeasured"]')).not.toBeNull(); // no per-layer time inside a compiled graph
        await showView(panel, 'training');
        expect(await panel.$('[data-testid="training-empty"]')).not.toBeNull();
        await showView(panel, 'load');
        await devtools.screenshot({ path: path.join(ARTIFACTS, `framework-${c.script.replace('.py', '')}-${c.args.join('-') || 'default'}.png`) });

        // Detach: the job runs on with its outputs as before and nothing of the probe in it.
        await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
        await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 30000 }, job.pid);
        const detachedAt = job.passes().length;
        const deadline = Date.now() + 60000;
        while (job.passes().length < detachedAt + 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        const after = job.passes().slice(detachedAt + 2);
        expect(after.length).toBeGreaterThanOrEqual(8);
        for (const record of after) {
          expect(record.hooks).toBe(0);
          expect(record.threads).toEqual(['MainThread']);
        }
        for (const record of job.passes()) expect(record.out, `pass ${record.pass}`).toBe(reference.get(record.pass % 4));
        expect(job.process.exitCode).toBeNull();
        await devtools.close();
      } finally {
        await job?.stop();
      }
    });
  }
});
