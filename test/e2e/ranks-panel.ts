/** Reading a distributed job in the panel (Ranks and Load views) and checking it against the ranks' own logs. */
import type { Frame } from 'puppeteer-core';
import { expect } from 'vitest';
import { clickInPanel, readShownCounts, selectLayer, showView } from '../../scripts/lib/devtools-harness.mjs';
import { rankWindowFound, type RankLog } from './ranks';

export interface ShownRank {
  rank: number;
  pid: number;
  status: string;
  passes: number;
  load: number;
  counts: number[];
  held: number[];
}

export async function readRanks(panel: Frame): Promise<{ layer: number; ranks: ShownRank[] }> {
  return panel.$eval('[data-testid="ranks-view"]', (view: Element) => ({
    layer: Number(view.getAttribute('data-layer')),
    ranks: [...view.querySelectorAll('[data-testid="rank-row"]')].map((tr) => {
      const nums = (name: string) => (tr.getAttribute(name) || '').split(',').filter(Boolean).map(Number);
      return {
        rank: Number(tr.getAttribute('data-rank')), pid: Number(tr.getAttribute('data-pid')), status: tr.getAttribute('data-status') || '',
        passes: Number(tr.getAttribute('data-passes')), load: Number(tr.getAttribute('data-load')), counts: nums('data-counts'), held: nums('data-held'),
      };
    }),
  }));
}

export async function setPaused(panel: Frame, paused: boolean) {
  const now = await panel.$eval('[data-testid="pause"]', (b: Element) => b.classList.contains('on'));
  if (now !== paused) await clickInPanel(panel, '[data-testid="pause"]');
}

/** Attach to every rank of a listed job (these pids) through its "Attach all" button; the job is then shown as one. */
export async function attachAll(panel: Frame, pids: number[]): Promise<void> {
  const entry = await panel.waitForFunction((want: number[]) => {
    for (const job of document.querySelectorAll('[data-testid="dist-job"]')) {
      const have = [...job.querySelectorAll('[data-testid="dist-rank"]')].map((el) => Number(el.getAttribute('data-pid'))).sort((a, b) => a - b);
      const button = job.querySelector('[data-testid^="attach-job-"]:not([disabled])');
      if (button && have.length === want.length && have.every((p, i) => p === want[i])) return button.getAttribute('data-testid');
    }
    return null;
  }, { polling: 100, timeout: 30000 }, [...pids].sort((a, b) => a - b));
  await clickInPanel(panel, `[data-testid="${await entry.jsonValue()}"]`);
  await panel.waitForSelector('[data-testid="tab-ranks"]', { timeout: 60000 });
  await showView(panel, 'ranks');
  await panel.waitForFunction((want: number[]) => want.every((p) => document.querySelector(`[data-testid="rank-row"][data-pid="${p}"][data-status="attached"]`)),
    { polling: 100, timeout: 60000 }, pids).catch(async (err: Error) => {
    const notices = await panel.$$eval('[data-testid="notice"]', (els: Element[]) => els.map((el) => el.textContent));
    throw new Error(`${err.message}; notices: ${JSON.stringify(notices)}`);
  });
}

/**
 * With the views paused: each rank's row equals its own log over as many passes as the row says,
 * and the job's per-expert counts in the Load view are exactly the sum of the rows.
 */
export async function checkLayer(panel: Frame, logsNow: () => RankLog[], layer: number, ranks: number) {
  await setPaused(panel, false);
  await showView(panel, 'load');
  await selectLayer(panel, layer);
  await showView(panel, 'ranks');
  // every rank has counted passes, and the rows carry this layer
  await panel.waitForFunction((l: number, n: number) => {
    const view = document.querySelector('[data-testid="ranks-view"]');
    const rows = [...document.querySelectorAll('[data-testid="rank-row"]')];
    return view?.getAttribute('data-layer') === String(l) && rows.length === n && rows.every((r) => Number(r.getAttribute('data-passes')) >= 10);
  }, { polling: 100, timeout: 60000 }, layer, ranks);
  await setPaused(panel, true);
  const shown = await readRanks(panel);
  await showView(panel, 'load');
  const merged = await readShownCounts(panel);
  await setPaused(panel, false);

  expect(shown.layer).toBe(layer);
  const logs = logsNow();
  const sum = new Array<number>(8).fill(0);
  for (const r of shown.ranks) {
    const log = logs.find((l) => l.ready.pid === r.pid)!;
    expect(log, `no log of pid ${r.pid}`).toBeDefined();
    expect(r.rank).toBe(log.ready.rank);
    if (log.ready.mode === 'ep') expect(r.held).toEqual(log.ready.held);
    expect(r.counts).toHaveLength(8);
    expect(r.load).toBe(r.counts.reduce((a, b) => a + b, 0));
    expect(rankWindowFound(log, layer, r.passes, r.counts), `rank ${r.rank}: no run of ${r.passes} passes of its log sums to ${r.counts} in layer ${layer}`).toBe(true);
    r.counts.forEach((c, e) => (sum[e] += c));
  }
  expect(merged.layer).toBe(layer);
  expect(merged.passes).toBe(shown.ranks.reduce((a, r) => a + r.passes, 0));
  expect(merged.counts).toEqual(sum);
  return shown;
}

