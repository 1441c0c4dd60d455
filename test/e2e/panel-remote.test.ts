/**
 * A job on "another machine": its probe listens on TCP (moe_probe.attach(tcp_port=0)), and the
 * user connects through the panel's Remote jobs form with the address and token, as through an
 * SSH tunnel. What the panel then shows must equal what the job routed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, makeProfile, openMoEPanel, readShownCounts, selectLayer, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, findWindow, startTinyJob, type Job } from './jobs';

describe('MoE panel connected to a probe over TCP', () => {
  let job: Job;
  let browser: Browser;
  let profile: string;
  let socketDir: string;

  beforeAll(async () => {
    socketDir = fs.mkdtempSync('/tmp/moe-remote-');
    const prelude = [
      'import sys',
      `sys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'native-host'))})`,
      'import moe_probe',
      'moe_probe.attach(tcp_port=0)',
    ].join('\n');
    job = await startTinyJob([], 8, { prelude, env: { MOE_DEVTOOLS_SOCKET_DIR: socketDir } });
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
  });

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('connects with the address and token, and shows what the model routed', async () => {
    const info = JSON.parse(fs.readFileSync(path.join(socketDir, `probe-${job.pid}.tcp.json`), 'utf8'));
    const { devtools, panel } = await openMoEPanel(browser);
    await panel.waitForSelector('[data-testid="connect"]:not([disabled])', { timeout: 30000 });
    // Set the fields and press Connect through the DOM: mouse clicks by coordinates missed the
    // button when the process list above it changed size mid-click (jobs of earlier tests exiting).
    const fill = (selector: string, value: string) =>
      panel.$eval(selector, (el: Element, v: string) => {
        (el as HTMLInputElement).value = v;
      }, value);
    await fill('[data-testid="connect-address"]', info.address);
    await fill('[data-testid="connect-token"]', info.token);
    await panel.$eval('[data-testid="connect"]', (el: Element) => (el as HTMLButtonElement).click());
    await panel
      .waitForFunction(
        (pid: number) => document.querySelector(`[data-testid="job"][data-pid="${pid}"][data-status="attached"]`),
        { polling: 100, timeout: 30000 },
        job.pid,
      )
      .catch(async (err: Error) => {
        const notices = await panel.$$eval('[data-testid="notice"]', (els: Element[]) => els.map((el) => el.textContent));
        const shown = await panel.evaluate(() => document.body.innerText.slice(0, 600));
        throw new Error(`${err.message}; notices: ${JSON.stringify(notices)}; panel: ${JSON.stringify(shown)}`);
      });
    await showView(panel, 'load');
    await selectLayer(panel, 1);
    await panel.waitForFunction(() => Number(document.querySelector('[data-testid="expert-table"]')?.getAttribute('data-passes')) >= 5, { polling: 100, timeout: 30000 });
    const shown = await readShownCounts(panel);
    expect(findWindow(job.passes(), 1, shown.passes, shown.counts)).toBeGreaterThanOrEqual(0);
    const remoteRow = await panel.$eval(`.remote li[data-pid="${job.pid}"]`, (li: Element) => li.textContent);
    expect(remoteRow).toContain('remote');

    // The panel follows DevTools' theme when the user switches it.
    expect(await panel.evaluate(() => document.documentElement.dataset.theme)).toBe('light');
    await devtools.evaluate(`(async () => {
      const Common = await import(new URL('./core/common/common.js', location.href).href);
      Common.Settings.Settings.instance().moduleSetting('ui-theme').set('dark');
    })()`);
    await panel.waitForFunction(() => document.documentElement.dataset.theme === 'dark', { polling: 100, timeout: 5000 });
  });
});
