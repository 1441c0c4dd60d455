// The README's TensorBoard screenshot, made the way a user would get there: start the demo job
// with its planted faults under `python -m moe_probe run`, `moe-devtools record` it, `moe-devtools
// export --to tensorboard`, open a real TensorBoard on the folder in headless Chromium, and save
// the Time Series view of layers 1 (dead expert) and 3 (collapse).
//
//   node scripts/tensorboard-screenshot.mjs [--recording FILE.moerec] [--seconds 30] [--out docs/screenshots/tensorboard.png]
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import puppeteer from 'puppeteer-core';
import { findChromium } from './lib/devtools-harness.mjs';
import { requireProjectPython, ROOT } from './python-env.mjs';
import { startTensorBoard } from './lib/tensorboard.mjs';

const { values } = parseArgs({
  options: { recording: { type: 'string' }, seconds: { type: 'string', default: '30' }, out: { type: 'string', default: path.join(ROOT, 'docs/screenshots/tensorboard.png') } },
});
const python = requireProjectPython();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-tb-shot-'));
const cli = (args) => {
  const run = spawnSync(process.execPath, [path.join(ROOT, 'bin/moe-devtools.mjs'), ...args], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`moe-devtools ${args.join(' ')} failed`);
  process.stdout.write(run.stdout);
};

async function recordFaultyDemoJob() {
  const job = spawn(python, ['-m', 'moe_probe', 'run', path.join(ROOT, 'scripts/demo_job.py'), '--faults', '--quiet', '--sleep', '0'], {
    env: { ...process.env, PYTHONPATH: path.join(ROOT, 'native-host') }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise((resolve, reject) => {
      let out = '';
      job.stdout.on('data', (d) => {
        out += d;
        if (out.includes('demo_job: generating')) resolve();
      });
      job.on('exit', (code) => reject(new Error(`the demo job exited (${code})`)));
    });
    const file = path.join(tmp, 'faulty-demo-job.moerec');
    cli(['record', String(job.pid), '--seconds', values.seconds, '-o', file]);
    return file;
  } finally {
    job.kill('SIGKILL');
  }
}

const recording = values.recording ?? (await recordFaultyDemoJob());
const logdir = path.join(tmp, 'logs');
cli(['export', recording, '--to', 'tensorboard', path.join(logdir, 'faulty-demo-job')]);
const tb = await startTensorBoard(python, logdir);
const browser = await puppeteer.launch({
  executablePath: findChromium(), headless: true, pipe: true, defaultViewport: { width: 1500, height: 1050 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = (await browser.pages())[0];
  const filter = encodeURIComponent('moe_(balancedness|dead_experts|expert_load)/layer_[13]');
  // Raw values rather than TensorBoard's default smoothing (0.6): its settings live in localStorage.
  await page.goto(tb.url, { waitUntil: 'networkidle0' });
  await page.evaluate(() => localStorage.setItem('_tb_global_settings', JSON.stringify({ scalarSmoothing: 0 })));
  await page.goto(`${tb.url}?tagFilter=${filter}#timeseries`, { waitUntil: 'networkidle0' });
  await page.waitForSelector('button[aria-label="Close side pane"]', { timeout: 30000 });
  await page.click('button[aria-label="Close side pane"]'); // no settings pane over the charts
  await new Promise((r) => setTimeout(r, 4000)); // charts draw after their data arrives
  fs.mkdirSync(path.dirname(values.out), { recursive: true });
  await page.screenshot({ path: values.out });
  console.log(`saved ${path.relative(ROOT, values.out)}`);
} finally {
  await browser.close();
  await tb.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
}
