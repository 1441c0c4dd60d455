// The README's pictures of an explanation and of a similarity graph, from the demo model.
//
//   npm run build && node scripts/explain-screenshots.mjs
//
// Starts the demo job (scripts/demo_job.py: the committed byte-level Mixtral generating Python-like
// text), opens headless Chromium with DevTools on the MoE panel, attaches, and then
//   1. in the Tokens view picks the most recent generated token that is a space and asks why
//      layers 1 and 0 sent it to their first expert, from a zero and from the mean embedding;
//      the last one is docs/screenshots/demo-explanation.png;
//   2. in the Experts view asks for the experts' weight analysis and shows layer 0's router-row
//      similarity graph: docs/screenshots/demo-similarity.png.
// It prints what it explained and what the probe answered (time, completeness), for the README.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, showView, undockDevTools } from './lib/devtools-harness.mjs';
import { ROOT, requireProjectPython } from './python-env.mjs';

const shots = path.join(ROOT, 'docs/screenshots');
const python = requireProjectPython();
const job = spawn(python, [path.join(ROOT, 'scripts/demo_job.py'), '--quiet', '--seed', '3'], { stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((resolve, reject) => {
  let out = '';
  job.on('exit', (code) => reject(new Error(`the demo job exited with code ${code}`)));
  job.stdout.on('data', (d) => {
    out += d;
    if (out.includes('demo_job: generating')) resolve();
  });
});
const profile = makeProfile('moe-devtools-shots-');
const browser = await launchBrowser({ userDataDir: profile });
try {
  const { devtools, panel } = await openMoEPanel(browser);
  await undockDevTools(devtools, { width: 1280, height: 860 });
  await attachThroughPanel(panel, job.pid, 90000);
  await new Promise((r) => setTimeout(r, 4000));

  await showView(panel, 'tokens');
  await panel.waitForSelector('[data-testid="token"]', { timeout: 30000 });
  const picked = await panel.evaluate(() => {
    const tokens = [...document.querySelectorAll('[data-testid="token"]')];
    const space = tokens.reverse().find((el) => el.textContent === ' ' && Number(el.getAttribute('data-index')) === 0);
    const el = space ?? tokens[0];
    el.click();
    return { pass: el.getAttribute('data-pass'), index: el.getAttribute('data-index'), text: el.textContent };
  });
  await panel.waitForSelector('[data-testid="explain"]', { timeout: 5000 });
  const read = () => panel.evaluate(() => {
    document.querySelector('[data-testid="explain"]').scrollIntoView({ block: 'start' });
    const e = document.querySelector('[data-testid="explanation"]');
    return {
      expert: e.getAttribute('data-expert'),
      completeness: document.querySelector('[data-testid="explain-completeness"]').textContent,
      cost: document.querySelector('[data-testid="explain-cost"]').textContent,
      recomputed: document.querySelector('[data-testid="explain-recomputed"]').textContent,
      top: [...document.querySelectorAll('[data-testid="explain-top-row"]')].slice(0, 3).map((r) => r.textContent).join(' | '),
    };
  });
  /** Explain the picked token in `layer` from `baseline` (the first expert it went to there). */
  const explain = async (layer, baseline) => {
    await panel.select('[data-testid="explain-layer"]', String(layer));
    await panel.select('[data-testid="explain-baseline"]', baseline);
    const before = await panel.$$eval('[data-testid="explanation"]', (els) => els.length);
    await clickInPanel(panel, '[data-testid="explain-run"]');
    await panel.waitForFunction((l, b, n) => {
      const e = document.querySelector(`[data-testid="explain"] [data-testid="explanation"][data-layer="${l}"]`);
      return e && e.querySelector('.stats-line').textContent.includes(b === 'mean' ? 'mean embedding' : 'zero embedding') && !document.querySelector('[data-testid="explain-running"]');
    }, { timeout: 120000, polling: 100 }, layer, baseline, before);
    const r = await read();
    console.log(`  layer ${layer}, ${baseline} baseline, expert ${r.expert}: ${r.completeness}\n    top: ${r.top}\n    ${r.recomputed}\n    ${r.cost}`);
  };
  console.log(`explaining token "${picked.text}" (pass ${picked.pass}, index ${picked.index}):`);
  await explain(1, 'zero');
  await explain(1, 'mean');
  await explain(0, 'zero');
  await explain(0, 'mean');
  await new Promise((r) => setTimeout(r, 300));
  await devtools.screenshot({ path: path.join(shots, 'demo-explanation.png') });

  await showView(panel, 'experts');
  await clickInPanel(panel, '[data-testid="experts-analyze"]');
  await panel.waitForSelector('[data-testid="experts-cost"]', { timeout: 120000 });
  await panel.select('[data-testid="layer-select"]', '0');
  await clickInPanel(panel, '[data-testid="similarity-router"]');
  await panel.waitForSelector('[data-testid="similarity-graph"]', { timeout: 5000 });
  const experts = await panel.evaluate(() => ({
    cost: document.querySelector('[data-testid="experts-cost"]').textContent,
    findings: [...document.querySelectorAll('[data-testid="param-finding"]')].map((el) => el.textContent),
    graph: document.querySelector('[data-testid="graph-readout"]').textContent,
  }));
  await new Promise((r) => setTimeout(r, 300));
  await devtools.screenshot({ path: path.join(shots, 'demo-similarity.png') });
  console.log(`expert weights: ${experts.cost}; findings: ${experts.findings.length ? experts.findings.join(' | ') : 'none'}`);
  console.log(`  layer 0 router rows: ${experts.graph}`);
  console.log(`saved ${path.relative(ROOT, path.join(shots, 'demo-explanation.png'))} and ${path.relative(ROOT, path.join(shots, 'demo-similarity.png'))}`);
} finally {
  await browser.close();
  job.kill('SIGTERM');
  fs.rmSync(profile, { recursive: true, force: true });
}
