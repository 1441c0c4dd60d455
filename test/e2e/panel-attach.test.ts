/**
 * The walking skeleton, end to end: real Chromium, the unpacked extension inside
 * real DevTools, real native messaging, the real host injecting the probe into a
 * real, unprepared Python process running a transformers Mixtral model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startTinyJob, type Job } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');

describe('MoE panel attached to a running Mixtral job', () => {
  let job: Job;
  let browser: Browser;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    job = await startTinyJob(['--arch', 'mixtral', '--layers', '4', '--experts', '8']);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('shows exactly what the model routed, and detaching leaves the job as it was', async () => {
    const before = job.passes();
    const baselineHooks = before[0].hooks;
    const reference = new Map(before.map((p) => [p.pass % 4, p.out])); // inputs cycle with period 4

    const { devtools, panel } = await openMoEPanel(browser);
    // Inside real DevTools the panel reaches the service worker and gets the host's messages as
    // structured clones over its MessageChannel (protocol/panel-channel.ts), not as JSON.
    await panel.waitForFunction(() => document.documentElement.dataset.transport, { polling: 100, timeout: 15000 });
    expect(await panel.evaluate(() => document.documentElement.dataset.transport)).toBe('channel');
    const started = Date.now();
    await attachThroughPanel(panel, job.pid);
    const attachMs = Date.now() - started;
    // The panel says how the probe got in: our own injector, at a completed system call.
    const status = await panel.$eval('[data-testid="attach-status"]', (el: Element) => ({ text: el.textContent, detail: el.getAttribute('title') }));
    expect(status.text).toMatch(/^attached via ptrace in \d+ ms$/);
    expect(status.detail).toMatch(/^ptrace: queued at (the main thread|thread \d+)'s \w+ exit in \d+ ms$/);
    await showView(panel, 'load'); // the per-expert table lives in the Load view

    // The panel must show live counts that equal the job's own record of its routing,
    // for every layer we look at, over the very passes the panel says it counted.
    for (const layer of [0, 3]) {
      await selectLayer(panel, layer);
      await panel.waitForFunction(() => Number(document.querySelector('[data-testid="expert-table"]')?.getAttribute('data-passes')) >= 10, { polling: 100, timeout: 30000 });
      const shown = await readShownCounts(panel);
      expect(shown.layer).toBe(layer);
      expect(shown.counts).toHaveLength(8);
      expect(shown.counts.reduce((a: number, b: number) => a + b, 0)).toBe(shown.passes * 2 * 16 * 2); // passes x batch x seq x top-k
      const start = findWindow(job.passes(), layer, shown.passes, shown.counts);
      expect(start, `no run of ${shown.passes} passes of the job sums to ${shown.counts} for layer ${layer}`).toBeGreaterThanOrEqual(0);
    }
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'panel-attached.png') });

    await clickInPanel(panel, `[data-testid="detach-${job.pid}"]`);
    await panel.waitForFunction((pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="detached"]`), { polling: 100, timeout: 15000 }, job.pid);
    const detachedAt = job.passes().length;

    // The job goes on: more passes, same outputs for the same inputs, no hooks or threads of ours.
    const deadline = Date.now() + 20000;
    while (job.passes().length < detachedAt + 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const after = job.passes().slice(detachedAt + 2); // a pass in flight at detach may still see the old hooks
    expect(after.length).toBeGreaterThanOrEqual(8);
    for (const record of after) {
      expect(record.hooks).toBe(baselineHooks);
      expect(record.threads).toEqual(['MainThread']);
      expect(record.out).toBe(reference.get(record.pass % 4));
    }
    expect(job.process.exitCode).toBeNull();
    console.log(`attach through the panel took ${attachMs} ms`);
  });
});
