// npm run demo: start the demo MoE job (a small Mixtral trained by this project, generating
// text in a loop) and a second one with planted faults, open Chromium with the extension
// loaded and DevTools on the MoE tab, and attach to them through the panel.
// With a display it stays open until Ctrl-C; headless (no DISPLAY, or CI=true) it saves a
// screenshot of every view to docs/screenshots/ and exits.
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { attachThroughPanel, clickInPanel, findChromium, launchBrowser, makeProfile, openMoEPanel, undockDevTools } from './lib/devtools-harness.mjs';
import { ROOT, VENV_PYTHON, projectPython } from './python-env.mjs';

const headless = process.env.CI === 'true' || !process.env.DISPLAY || process.argv.includes('--headless');
const shots = path.join(ROOT, 'docs/screenshots');

function die(message) {
  console.error(`demo: ${message}`);
  process.exit(1);
}

try {
  findChromium();
} catch (err) {
  die(err.message);
}
if (!process.env.MOE_PYTHON && !fs.existsSync(VENV_PYTHON)) {
  console.log('demo: no Python environment yet; creating .venv (torch, transformers)...');
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/setup-python.mjs')], { stdio: 'inherit' });
}

const jobs = [];
/** Start a demo job; resolves once it has built its model and is generating. */
function startJob(args, label) {
  const child = spawn(projectPython(), [path.join(ROOT, 'scripts/demo_job.py'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  jobs.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`${label} exited with code ${code} before it was ready`)));
    child.stdout.on('data', (d) => {
      out += d;
      if (!headless || /FAULT/.test(String(d))) process.stdout.write(`[${label}] ${d}`);
      if (out.includes('demo_job: generating')) resolve(child);
    });
  });
}

const [healthy, faulty] = await Promise.all([
  startJob(['--quiet'], 'demo job'),
  startJob(['--quiet', '--faults', '--seed', '1'], 'faulty job'),
]).catch((err) => die(err.message));
console.log(`demo: demo job pid ${healthy.pid}, faulty job (dead expert, collapsed layer) pid ${faulty.pid}`);

const profile = makeProfile('moe-devtools-demo-');
let browser;
async function shutdown(code = 0) {
  await browser?.close().catch(() => {});
  for (const job of jobs) job.kill('SIGTERM');
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGINT', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));

try {
  browser = await launchBrowser({ userDataDir: profile, headless });
  const { devtools, panel } = await openMoEPanel(browser);
  if (headless) await undockDevTools(devtools, { width: 1280, height: 820 });
  await attachThroughPanel(panel, faulty.pid, 90000);
  await attachThroughPanel(panel, healthy.pid, 90000);
  console.log('demo: attached to both jobs through the panel');
  if (!headless) {
    console.log('demo: DevTools is open on the MoE tab. Press Ctrl-C to stop the demo.');
    await new Promise(() => {});
  }
  // Headless: let the views fill, then photograph each tab for both jobs.
  await new Promise((r) => setTimeout(r, 8000));
  fs.mkdirSync(shots, { recursive: true });
  for (const [label, job] of [['demo', healthy], ['faulty', faulty]]) {
    await clickInPanel(panel, `li[data-pid="${job.pid}"]`).catch(() => {});
    const tabs = await panel.$$eval('[role="tab"]', (els) => els.map((el) => (el.getAttribute('data-testid') ?? '').replace(/^tab-/, '')));
    for (let i = 0; i < Math.max(1, tabs.length); i++) {
      if (tabs.length) await panel.$$eval('[role="tab"]', (els, n) => els[n].click(), i);
      await new Promise((r) => setTimeout(r, 1200));
      const name = (tabs[i] || 'panel').toLowerCase().replace(/[^a-z0-9]+/g, '-');
      const file = path.join(shots, `${label}-${name}.png`);
      await devtools.screenshot({ path: file });
      console.log(`demo: saved ${path.relative(ROOT, file)}`);
    }
  }
  await shutdown(0);
} catch (err) {
  console.error(`demo: ${err.message}`);
  await shutdown(1);
}
