/**
 * Comparison of two real jobs in real DevTools: the same tiny Mixtral (same seed) over the same
 * fixed prompts, one with its layer-1 router rows perturbed. The Compare view must put the largest
 * Jensen-Shannon divergence in layer 1, and its share of tokens whose first-choice expert changed
 * must equal, layer by layer, the share computed from the two jobs' own logs of what their routers
 * chose for the very inputs the view matched.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inputKey } from '../../src/analysis/compare';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, pythonPath, startLoggingJob, type Job } from './jobs';

interface Logged {
  prompts: Map<number, number[]>;
  /** Per prompt, the first-choice expert of every token in every layer, as the job computed it. */
  top1: Map<number, number[][]>;
}

function readRoutingLog(file: string): Logged {
  const prompts = new Map<number, number[]>();
  const top1 = new Map<number, number[][]>();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line);
    } catch {
      continue;
    }
    if (Array.isArray(v.ids)) prompts.set(v.prompt as number, v.ids as number[]);
    else if (v.top1 && typeof v.prompt === 'number') {
      const seen = top1.get(v.prompt);
      // the same prompt routes the same way every time (a deterministic model): check, keep one
      if (seen) expect(v.top1).toEqual(seen);
      else top1.set(v.prompt, v.top1 as number[][]);
    }
  }
  return { prompts, top1 };
}

async function startRoutingJob(args: string[]): Promise<Job> {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-routing-job-')), 'job.jsonl');
  return startLoggingJob(pythonPath(), [path.join(ROOT, 'test/jobs/routing_log_job.py'), '--log', log, ...args], log, 12);
}

async function readComparison(panel: Frame) {
  return panel.evaluate(() => {
    const summary = document.querySelector('[data-testid="compare-summary"]')!;
    return {
      mostDiverged: Number(summary.getAttribute('data-most-diverged')),
      matched: JSON.parse(summary.getAttribute('data-matched') ?? '[]') as Array<{ passA: number; passB: number; tokens: number; input: string }>,
      layers: [...document.querySelectorAll('[data-testid="compare-layer"]')].map((tr) => ({
        layer: Number(tr.getAttribute('data-layer')),
        js: Number(tr.getAttribute('data-js')),
        tokens: Number(tr.getAttribute('data-top1-tokens')),
        changed: Number(tr.getAttribute('data-top1-changed')),
      })),
    };
  });
}

describe('Compare view on two real jobs', () => {
  let a: Job;
  let b: Job;
  let browser: Browser | undefined;
  let profile: string;

  beforeAll(async () => {
    [a, b] = await Promise.all([
      startRoutingJob(['--seed', '3', '--prompts', '3']),
      startRoutingJob(['--seed', '3', '--prompts', '3', '--perturb-layer', '1', '--perturb-scale', '1.5']),
    ]);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await a?.stop();
    await b?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('finds layer 1 most diverged and the first-choice changes the jobs logged', async () => {
    const { panel } = await openMoEPanel(browser!);
    await attachThroughPanel(panel, a.pid);
    await attachThroughPanel(panel, b.pid);
    await new Promise((r) => setTimeout(r, 6000));
    await clickInPanel(panel, `li[data-pid="${a.pid}"]`);
    await showView(panel, 'compare');
    await panel.select('[data-testid="compare-with"]', String(b.pid));
    await panel.waitForFunction(
      (n: number) => Number(document.querySelector('[data-testid="compare-summary"]')?.getAttribute('data-matched-passes')) >= n,
      { polling: 200, timeout: 30000 }, 20,
    );
    const shown = await readComparison(panel);
    expect(shown.layers).toHaveLength(4);

    // divergence: largest in the perturbed layer
    const js = shown.layers.map((l) => l.js);
    console.log(`JS divergence per layer: ${js.map((x) => x.toFixed(4)).join(', ')}; ${shown.matched.length} matched passes`);
    expect(shown.mostDiverged).toBe(1);
    expect(Math.max(...js)).toBe(js[1]);
    expect(js[0]).toBeLessThan(js[1]! / 4);

    // first-choice changes, recomputed from the jobs' own logs for exactly the matched inputs
    const logA = readRoutingLog(a.log);
    const logB = readRoutingLog(b.log);
    const promptOf = new Map([...logA.prompts].map(([p, ids]) => [inputKey(ids.slice(0, 128)), p]));
    expect(promptOf.size).toBe(3);
    const expected = shown.layers.map(() => ({ tokens: 0, changed: 0 }));
    for (const m of shown.matched) {
      const p = promptOf.get(m.input);
      expect(p, `matched input ${m.input} is one of the job's prompts`).toBeDefined();
      expect(logB.prompts.get(p!)).toEqual(logA.prompts.get(p!)); // the same prompt in both jobs
      const ta = logA.top1.get(p!)!;
      const tb = logB.top1.get(p!)!;
      for (let l = 0; l < expected.length; l++) {
        for (let i = 0; i < m.tokens; i++) {
          expected[l]!.tokens++;
          if (ta[l]![i] !== tb[l]![i]) expected[l]!.changed++;
        }
      }
    }
    for (const l of shown.layers) {
      expect({ layer: l.layer, tokens: l.tokens, changed: l.changed }).toEqual({ layer: l.layer, ...expected[l.layer] });
    }
    // layer 0 is the same model on the same inputs: nothing changed there; layer 1 did change
    expect(shown.layers[0]!.changed).toBe(0);
    expect(shown.layers[1]!.changed).toBeGreaterThan(0);
    console.log(`first choice changed: ${shown.layers.map((l) => `${l.changed}/${l.tokens}`).join(', ')}`);
  });
});
