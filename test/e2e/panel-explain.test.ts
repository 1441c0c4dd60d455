/**
 * Explaining routing and reading the experts' weights, in real DevTools, on real jobs
 * (tiny_moe_job.py, a transformers Mixtral that never imports the probe):
 *
 * - pick a sampled token in the Tokens view, ask why it went to its expert in a layer: the
 *   attributions the panel shows, and its top positions, equal this suite's own computation
 *   (test/tools/explain_reference.py: autograd through inputs_embeds, a plain Riemann loop);
 *   the job's output hashes are unchanged before, during and after, and no parameter ever
 *   carries a .grad;
 * - the Experts view of a job with two experts made identical and one router row zeroed names
 *   exactly that near-duplicate pair and that dead-by-weights expert; a healthy job gets neither;
 * - a recording made after that holds both, and the opened recording shows them.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, pythonPath, startTinyJob, type Job, type PassRecord } from './jobs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const MODEL = ['--arch', 'mixtral', '--layers', '4', '--experts', '8', '--top-k', '2', '--hidden', '64', '--seed', '0'];
const PLANTED = ['--duplicate', '1:2:6', '--zero-router', '2:5'];
const LAYER = 2;

interface Shown { position: number; value: number; text: string }

/** Each pass's output hash against the first pass of the same input batch (the job cycles through 4). */
function hashesStable(passes: PassRecord[], cycle = 4): boolean {
  const reference = new Map<number, string>();
  for (const p of passes) {
    const slot = p.pass % cycle;
    if (!reference.has(slot)) reference.set(slot, p.out);
    if (reference.get(slot) !== p.out) return false;
  }
  return reference.size === cycle;
}

async function shownValues(panel: Frame): Promise<{ tokens: Shown[]; top: Array<{ position: number; value: number }> }> {
  return panel.evaluate(() => ({
    tokens: [...document.querySelectorAll('[data-testid="explanation"] [data-testid="explain-token"]')].map((el: Element) => ({
      position: Number(el.getAttribute('data-position')), value: Number(el.getAttribute('data-value')), text: el.textContent ?? '',
    })),
    top: [...document.querySelectorAll('[data-testid="explanation"] [data-testid="explain-top-row"]')].map((el: Element) => ({
      position: Number(el.getAttribute('data-position')), value: Number(el.getAttribute('data-value')),
    })),
  }));
}

/** The top positions by |value| as the reference ranks them, allowing swaps only between values within `tie`. */
function expectSameRanking(shown: Array<{ position: number; value: number }>, reference: number[], tie: number) {
  const order = reference.map((_, i) => i).sort((a, b) => Math.abs(reference[b]!) - Math.abs(reference[a]!) || a - b);
  shown.forEach((s, rank) => {
    const expected = order[rank]!;
    if (s.position !== expected) expect(Math.abs(Math.abs(reference[s.position]!) - Math.abs(reference[expected]!))).toBeLessThan(tie);
    expect(s.value).toBeCloseTo(reference[s.position]!, 5);
  });
}

describe('why a token went to an expert, and what the experts look like', () => {
  let planted: Job;
  let healthy: Job;
  let browser: Browser | undefined;
  let profile: string;

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    [planted, healthy] = await Promise.all([startTinyJob([...MODEL, ...PLANTED], 12), startTinyJob(MODEL, 12)]);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await planted?.stop();
    await healthy?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('explains a sampled token as an independent computation does, and leaves the job exactly as it was', async () => {
    const { devtools, panel } = await openMoEPanel(browser!);
    const hooksBefore = planted.passes().at(-1)!.hooks;
    await attachThroughPanel(panel, planted.pid);
    await showView(panel, 'tokens');
    // token 21 of a pass: row 1 (the second sequence of the batch of 2 x 16), position 5
    await panel.waitForSelector('[data-testid="token"][data-index="21"]', { timeout: 20000 });
    await panel.$$eval('[data-testid="token"][data-index="21"]', (els: Element[]) => (els[els.length - 1] as HTMLElement).click());
    await panel.waitForSelector('[data-testid="explain"]', { timeout: 5000 });
    await panel.select('[data-testid="explain-layer"]', String(LAYER));
    const expert = Number(await panel.$eval('[data-testid="explain-expert"][aria-checked="true"]', (el: Element) => el.getAttribute('data-expert')));
    const started = Date.now() / 1000;
    await clickInPanel(panel, '[data-testid="explain-run"]');
    await panel.waitForSelector(`[data-testid="explanation"][data-layer="${LAYER}"][data-expert="${expert}"]`, { timeout: 120000 });
    const answered = Date.now() / 1000;
    console.log(`explanation shown ${(answered - started).toFixed(2)} s after clicking Explain`);
    const pass = Number(await panel.$eval('[data-testid="explanation"]', (el: Element) => el.getAttribute('data-pass')));
    const ig = await shownValues(panel);
    await clickInPanel(panel, '[data-testid="explain-method-gxi"]');
    await panel.waitForSelector('[data-testid="explanation"][data-method="gxi"]', { timeout: 5000 });
    const gxi = await shownValues(panel);
    await clickInPanel(panel, '[data-testid="explain-method-ig"]');
    const completeness = await panel.$eval('[data-testid="explain-completeness"]', (el: Element) => el.textContent ?? '');
    const recomputed = await panel.$eval('[data-testid="explain-recomputed"]', (el: Element) => el.getAttribute('data-same'));
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'explain.png') });

    // The sequence is the token's row of the job's batch, and the token sits at position 5.
    const ids = ig.tokens.map((t) => Number(t.text.replace(/^#/, '')));
    expect(ig.tokens).toHaveLength(16);
    expect(await panel.$eval('[data-testid="explanation"] .tok.target', (el: Element) => Number(el.getAttribute('data-position')))).toBe(5);
    const reference = JSON.parse(execFileSync(pythonPath(), [
      path.join(ROOT, 'test/tools/explain_reference.py'), '--ids', ids.join(','), '--position', '5', '--layer', String(LAYER),
      '--expert', String(expert), '--steps', '32', ...MODEL, ...PLANTED,
    ], { encoding: 'utf8' })) as { logit: number; baseline_logit: number; gxi_logit: number[]; ig_logit: number[]; batches: number[][][] };
    expect(reference.batches.some((batch) => JSON.stringify(batch[1]) === JSON.stringify(ids))).toBe(true);
    ig.tokens.forEach((t) => expect(t.value).toBeCloseTo(reference.ig_logit[t.position]!, 5));
    gxi.tokens.forEach((t) => expect(t.value).toBeCloseTo(reference.gxi_logit[t.position]!, 5));
    expect(ig.top.length).toBe(8);
    expectSameRanking(ig.top, reference.ig_logit, 1e-5);
    expectSameRanking(gxi.top, reference.gxi_logit, 1e-5);
    // causal: nothing after the token moves its router
    for (const t of ig.tokens.filter((x) => x.position > 5)) expect(t.value).toBe(0);
    expect(completeness).toMatch(/error \d+\.\d+ %/);
    expect(recomputed).toBe('true'); // the recomputed router chooses as the job did for this token
    expect(pass).toBeGreaterThan(0);

    // The job: passes ran while the probe explained, every output hash is its batch's, no .grad anywhere.
    await new Promise((r) => setTimeout(r, 300));
    const during = planted.passes().filter((p) => p.time! >= started && p.time! <= answered);
    expect(during.length).toBeGreaterThan(0);
    expect(hashesStable(planted.passes())).toBe(true);
    expect(planted.passes().every((p) => p.grads === 0)).toBe(true);

    // The weights: the planted pair and the zeroed row, and nothing else.
    await showView(panel, 'experts');
    await clickInPanel(panel, '[data-testid="experts-analyze"]');
    await panel.waitForSelector('[data-testid="experts-cost"]', { timeout: 60000 });
    const findings = await panel.$$eval('[data-testid="param-finding"]', (els: Element[]) => els.map((el: Element) => ({
      kind: el.getAttribute('data-kind'), layer: Number(el.getAttribute('data-layer')), experts: el.getAttribute('data-experts'), text: el.textContent,
    })));
    expect(findings.map((f: { kind: string | null; layer: number; experts: string | null }) => [f.kind, f.layer, f.experts])).toEqual([['near_duplicate', 1, '2,6'], ['dead_by_weights', 2, '5']]);
    expect(findings[0]!.text).toMatch(/model\.layers\.1\.mlp \(layer 1\): experts 2 and 6 are near-duplicates: the cosine similarity of their weights is 1\.0000/);
    await panel.select('[data-testid="layer-select"]', '1');
    await panel.waitForSelector('[data-testid="experts-view"][data-layer="1"] [data-testid="graph-edge"][data-a="2"][data-b="6"]', { timeout: 5000 });
    const clusters = await panel.$$eval('[data-testid="graph-node"]', (els: Element[]) => els.map((el: Element) => Number(el.getAttribute('data-cluster'))));
    expect(clusters[2]).toBe(clusters[6]);
    await devtools.screenshot({ path: path.join(ARTIFACTS, 'experts.png') });

    // Record a moment: the recording starts with what the probe answered so far.
    await clickInPanel(panel, '[data-testid="record"]');
    await panel.waitForSelector('[data-testid="recording-status"]', { timeout: 5000 });
    await new Promise((r) => setTimeout(r, 1200));
    await clickInPanel(panel, '[data-testid="record"]');
    await panel.waitForSelector('[data-testid="recording-link"]', { timeout: 5000 });
    const text = await panel.$eval('[data-testid="recording-link"]', async (a: Element) => (await fetch((a as HTMLAnchorElement).href)).text());
    const recording = path.join(ARTIFACTS, 'explained-job.moerec');
    fs.writeFileSync(recording, text);

    // Detach: the job runs on with its hooks gone and the same outputs.
    await clickInPanel(panel, '[data-testid="toolbar-detach"]');
    await panel.waitForSelector(`[data-testid="job"][data-pid="${planted.pid}"][data-status="detached"]`, { timeout: 10000 });
    const detachedAt = planted.passes().length;
    const deadline = Date.now() + 10000;
    while (planted.passes().length < detachedAt + 8 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const after = planted.passes().slice(detachedAt + 2);
    expect(after.length).toBeGreaterThan(4);
    expect(after.every((p) => p.hooks === hooksBefore && p.grads === 0 && p.threads.join() === 'MainThread')).toBe(true);
    expect(hashesStable(planted.passes())).toBe(true);

    // The recording, opened: the same explanation and the same findings, with no job behind it.
    const input = await panel.$('[data-testid="recording-file"]');
    await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(recording);
    await panel.waitForSelector('[data-testid="job"][data-status="recording"]', { timeout: 10000 });
    await showView(panel, 'tokens');
    await panel.waitForSelector(`[data-testid="explanation-item"][data-layer="${LAYER}"]`, { timeout: 10000 });
    await clickInPanel(panel, `[data-testid="explanation-item"][data-layer="${LAYER}"]`);
    // The recording's token stream may be shown after the click: the opened explanation stays.
    await panel.waitForSelector('[data-testid="token-pass"]', { timeout: 10000 });
    await panel.waitForSelector('[data-testid="explanation-list"] [data-testid="explanation"]', { timeout: 5000 });
    const replayed = await panel.$$eval('[data-testid="explanation-list"] [data-testid="explain-token"]', (els: Element[]) => els.map((el: Element) => Number(el.getAttribute('data-value'))));
    expect(replayed).toEqual(ig.tokens.map((t) => t.value));
    expect(await panel.$('[data-testid="explain-run"]:not([disabled])')).toBeNull();
    await showView(panel, 'experts');
    await panel.waitForSelector('[data-testid="param-finding"]', { timeout: 5000 });
    const replayFindings = await panel.$$eval('[data-testid="param-finding"]', (els: Element[]) => els.map((el: Element) => `${el.getAttribute('data-kind')}:${el.getAttribute('data-layer')}:${el.getAttribute('data-experts')}`));
    expect(replayFindings).toEqual(['near_duplicate:1:2,6', 'dead_by_weights:2:5']);
  });

  it('finds neither a near-duplicate nor a collapsed router row in a healthy random model', async () => {
    const { panel } = await openMoEPanel(browser!);
    await attachThroughPanel(panel, healthy.pid);
    await showView(panel, 'experts');
    await clickInPanel(panel, '[data-testid="experts-analyze"]');
    await panel.waitForSelector('[data-testid="experts-no-findings"]', { timeout: 60000 });
    expect(await panel.$('[data-testid="param-finding"]')).toBeNull();
    // the matrix is there, and every pair of random experts is far from alike
    const shown = await panel.$eval('[data-testid="similarity-graph"]', (el: Element) => Number(el.getAttribute('data-threshold')));
    expect(shown).toBeLessThan(0.5);
    expect(healthy.passes().every((p) => p.grads === 0)).toBe(true);
  });
});
