// Drives real Chromium with the unpacked extension inside real DevTools.
// Shared by the end-to-end tests, the demo and the panel benchmark.
// Facts this relies on are in shared/notes/chromium-and-native-messaging.md.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const EXTENSION_DIR = path.join(ROOT, 'dist/extension');

export function extensionId() {
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'manifest.json'), 'utf8'));
  const hex = createHash('sha256').update(Buffer.from(manifest.key, 'base64')).digest('hex').slice(0, 32);
  return [...hex].map((c) => String.fromCharCode(97 + parseInt(c, 16))).join('');
}

export function findChromium() {
  const candidates = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].filter(Boolean);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error('No Chromium found: install it (`apt-get install chromium`) or set CHROMIUM_PATH.');
  return found;
}

/** A fresh profile folder with the native host registered inside it (no root, no ~/.config changes). */
export function makeProfile(prefix = 'moe-devtools-profile-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  if (!fs.existsSync(path.join(ROOT, 'dist/host/host.cjs'))) throw new Error('dist/ is missing: run `npm run build` first.');
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/install-host.mjs'), '--user-data-dir', dir], { stdio: 'ignore' });
  return dir;
}

export async function launchBrowser({ userDataDir, headless = true, extraArgs = [] }) {
  return puppeteer.launch({
    executablePath: findChromium(),
    headless,
    pipe: true,
    enableExtensions: [EXTENSION_DIR],
    userDataDir,
    defaultViewport: null,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic', '--window-size=1400,900', ...extraArgs,
    ],
  });
}

/**
 * Open DevTools on a tab and show the MoE panel. Returns the inspected page,
 * the DevTools front-end page, and the panel's frame.
 */
export async function openMoEPanel(browser, { url = 'about:blank' } = {}) {
  const id = extensionId();
  const page = (await browser.pages())[0] ?? (await browser.newPage());
  await page.goto(url);
  const devtools = await page.openDevTools();
  // Wait for the extension's devtools page before touching DevTools' views (see the shared note).
  await devtools.waitForFrame((f) => f.url() === `chrome-extension://${id}/devtools.html`, { timeout: 30000 });
  await devtools.bringToFront();
  const panelId = `chrome-extension://${id}MoE`;
  const deadline = Date.now() + 30000;
  for (;;) {
    // A string, not a function: test runners (vite) rewrite import() inside function sources.
    const shown = await devtools.evaluate(`(async () => {
      const UI = await import(new URL('./ui/legacy/legacy.js', location.href).href);
      const view = UI.InspectorView.InspectorView.instance();
      if (!view.tabbedPane.tabIds().includes(${JSON.stringify(panelId)})) return false;
      // Not awaited: showPanel can wait on rendering that a hidden DevTools window never does.
      void view.showPanel(${JSON.stringify(panelId)});
      return true;
    })()`);
    if (shown) break;
    if (Date.now() > deadline) throw new Error(`DevTools never listed the ${panelId} panel`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const panel = await devtools.waitForFrame((f) => f.url() === `chrome-extension://${id}/panel.html`, { timeout: 30000 });
  await panel.waitForSelector('.layout', { timeout: 30000 });
  return { page, devtools, panel };
}

/**
 * Click an element of the panel through the DOM. Mouse clicks go to coordinates computed a moment
 * earlier, and the sidebar's process list (refreshed every 2 s) can move its rows in between.
 */
export async function clickInPanel(panel, selector) {
  await panel.$eval(selector, (el) => el.click());
}

/** Click the panel's own Attach button for a pid (waits for the process to be listed). */
export async function attachThroughPanel(panel, pid, timeout = 30000) {
  const selector = `[data-testid="attach-${pid}"]:not([disabled])`;
  await panel.waitForSelector(selector, { timeout });
  await clickInPanel(panel, selector);
  // A notice of what the probe can see only partly (torch.compile, CUDA graphs) is no failure.
  const failed = '[data-testid="notice"]:not([data-code="partial_visibility"])';
  await panel.waitForFunction(
    (p, f) => document.querySelector(`[data-testid="job"][data-pid="${p}"][data-status="attached"]`) || document.querySelector(f),
    { polling: 100, timeout },
    pid,
    failed,
  );
  const notice = await panel.$eval(failed, (el) => el.textContent).catch(() => null);
  if (notice) throw new Error(`attach failed in the panel: ${notice}`);
}

/** What the panel shows for the selected layer: the passes counter and the per-expert counts. */
export async function readShownCounts(panel) {
  return panel.$eval('[data-testid="expert-table"]', (table) => ({
    layer: Number(table.getAttribute('data-layer')),
    passes: Number(table.getAttribute('data-passes')),
    counts: [...table.querySelectorAll('[data-testid="expert-count"]')].map((td) => Number(td.textContent)),
  }));
}

export async function selectLayer(panel, layer) {
  await panel.select('[data-testid="layer-select"]', String(layer));
  await panel.waitForFunction((l) => document.querySelector(`[data-testid="expert-table"][data-layer="${l}"]`), { polling: 100, timeout: 10000 }, layer);
}

/** Undock DevTools into its own window of the given size, so screenshots show only DevTools. */
export async function undockDevTools(devtools, { width = 1280, height = 800 } = {}) {
  await devtools.evaluate(`(async () => {
    const UI = await import(new URL('./ui/legacy/legacy.js', location.href).href);
    UI.DockController.DockController.instance().setDockSide('undocked');
  })()`);
  await devtools.setViewport({ width, height });
  await new Promise((r) => setTimeout(r, 300));
}

/** Show one of the panel's views (tabs): overview, load, heatmap, tokens, timeline, coactivation, profiler. */
export async function showView(panel, view) {
  await panel.waitForSelector(`[data-testid="tab-${view}"]`, { timeout: 30000 });
  await clickInPanel(panel, `[data-testid="tab-${view}"]`);
  await panel.waitForFunction((v) => document.querySelector(`[data-testid="view-${v}"]`), { polling: 100, timeout: 30000 }, view);
}

/** Set the panel's window and threshold settings through its Settings bar (values as the inputs take them). */
export async function setPanelSettings(panel, settings) {
  if (!(await panel.$('[data-testid="settings"]'))) await panel.click('[data-testid="settings-toggle"]');
  await panel.waitForSelector('[data-testid="settings"]', { timeout: 10000 });
  await panel.evaluate((s) => {
    const set = (testid, value) => {
      const el = document.querySelector(`[data-testid="${testid}"]`);
      el.value = String(value);
      el.dispatchEvent(new Event('change', { bubbles: true }));
    };
    if (s.windowMode !== undefined) set('setting-window-mode', s.windowMode);
    if (s.windowValue !== undefined) set('setting-window-value', s.windowValue);
    if (s.minTokens !== undefined) set('setting-min-tokens', s.minTokens);
    if (s.minExpectedPerExpert !== undefined) set('setting-min-per-expert', s.minExpectedPerExpert);
  }, settings);
}

/** The findings the Overview lists: kind, layer and experts of each. */
export async function readFindings(panel) {
  return panel.$$eval('[data-testid="finding"]', (els) =>
    els.map((el) => ({
      kind: el.getAttribute('data-kind'),
      layer: Number(el.getAttribute('data-layer')),
      experts: (el.getAttribute('data-experts') || '').split(',').filter(Boolean).map(Number),
      text: el.textContent,
    })),
  );
}

/** The heatmap's hover readout for the cell at (row, column position), by moving the mouse over it (in index order: (layer, expert)). */
export async function hoverHeatmap(panel, layer, expert) {
  return panel.evaluate((l, e) => {
    const canvas = document.querySelector('[data-testid="heatmap"]');
    const rect = canvas.getBoundingClientRect();
    // The map's cells, as it says (its pixels may be fewer: one pixel column can cover several experts).
    const cols = Number(canvas.getAttribute('data-cols') ?? canvas.width);
    const rows = Number(canvas.getAttribute('data-rows') ?? canvas.height);
    const x = rect.left + ((e + 0.5) / cols) * rect.width;
    const y = rect.top + ((l + 0.5) / rows) * rect.height;
    canvas.dispatchEvent(new MouseEvent('mousemove', { clientX: x, clientY: y, bubbles: true }));
    return new Promise((resolve) => setTimeout(() => resolve(document.querySelector('[data-testid="heatmap-readout"]').textContent), 50));
  }, layer, expert);
}
