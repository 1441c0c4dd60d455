/**
 * A job as it really runs: a transformers Mixtral under torch.compile (inductor, on CPU), with the
 * real host injecting the probe through real DevTools. The probe's hooks go into the compiled code
 * with one recompilation; the panel shows exactly what the compiled model routed (the job logs
 * its own router outputs) and says what attaching cost; the model's outputs stay bit for bit those
 * of the compiled model without the probe; detaching brings the original compiled code back with
 * no recompilation. (How fast the passes are before, during and after: `npm run bench`, compile.)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startTinyJob, type Job } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
// Compiling with inductor takes minutes on a busy 2-core machine: the job gets time to start,
// and the first pass after attach waits for the one recompilation.
const COMPILE_MS = 300_000;

describe('MoE panel attached to a torch.compile\'d Mixtral job', () => {
  let job: Job;
  let browser: Browser;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    job = await startTinyJob(['--arch', 'mixtral', '--layers', '2', '--experts', '4', '--hidden', '32', '--compile', 'inductor'], 8,
      { timeoutMs: COMPILE_MS });
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  }, COMPILE_MS + 30_000);

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('reads the compiled model exactly, says what attaching cost, and detaching leaves its compiled code as it was', async () => {
    const before = job.passes();
    const baselineHooks = before[0]!.hooks;
    const reference = new Map(before.map((p) => [p.pass % 4, p.out])); // the compiled model's own outputs, inputs cycling with period 4
    const graphsBefore = before.at(-1)!.graphs!;
    expect(graphsBefore).toBeGreaterThan(0);

    const { devtools, panel } = await openMoEPanel(browser);
    await attachThroughPanel(panel, job.pid);
    // Said at once: the model runs under torch.compile, and what attaching will do to it.
    const notice = await panel.$eval('[data-testid="notice"][data-code="partial_visibility"]', (el: Element) => el.textContent);
    expect(notice).toMatch(/MixtralForCausalLM runs under torch\.compile: the probe's hooks go into its compiled code at its next pass/);

    await showView(panel, 'load');
    for (const layer of [0, 1]) {
      await selectLayer(panel, layer);
      await panel.waitForFunction(() => Number(document.querySelector('[data-testid="expert-table"]')?.getAttribute('data-passes')) >= 10,
        { polling: 100, timeout: COMPILE_MS });
      const shown = await readShownCounts(panel);
      expect(shown.counts).toHaveLength(4);
      expect(shown.counts.reduce((a: number, b: number) => a + b, 0)).toBe(shown.passes * 2 * 16 * 2); // passes x batch x seq x top-k
      const start = findWindow(job.passes(), layer, shown.passes, shown.counts);
      expect(start, `no run of ${shown.passes} passes of the job sums to ${shown.counts} for layer ${layer}`).toBeGreaterThanOrEqual(0);
    }
    // What the probe saw: every pass read inside the compiled code, after one recompilation.
    const notes = await panel.$$eval('[data-testid="visibility-note"]', (els: Element[]) => els.map((el) => [el.getAttribute('data-kind'), el.textContent]));
    expect(notes).toHaveLength(1);
    expect(notes[0]![0]).toBe('compiled');
    expect(notes[0]![1]).toMatch(/^torch\.compile: [\d,]+ passes read inside the compiled code; attaching recompiled 1 graph in [\d.]+ m?s \(the job's pass waited for it\); no graph break\./);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'panel-compiled.png') });

    const attached = job.passes();
    // The job recompiled exactly once while attached (the probe's hooks went in), and its outputs never changed.
    const during = attached.slice(before.length);
    expect(Math.max(...during.map((p) => p.graphs!))).toBe(graphsBefore + 1);
    for (const record of during) expect(record.out).toBe(reference.get(record.pass % 4));
    expect(during.some((p) => p.hooks > baselineHooks)).toBe(true);

    await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
    await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 15000 }, job.pid);
    const detachedAt = job.passes().length;
    const deadline = Date.now() + 30000;
    while (job.passes().length < detachedAt + 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const after = job.passes().slice(detachedAt + 2); // a pass in flight at detach may still see the old hooks
    expect(after.length).toBeGreaterThanOrEqual(8);
    for (const record of after) {
      expect(record.hooks).toBe(baselineHooks);
      expect(record.threads).toEqual(before.at(-1)!.threads); // the job's own (inductor's compile workers among them)
      expect(record.out).toBe(reference.get(record.pass % 4));
      expect(record.graphs, 'detaching made the job recompile').toBe(graphsBefore + 1);
    }
    expect(job.process.exitCode).toBeNull();
  }, COMPILE_MS + 120_000);
});
