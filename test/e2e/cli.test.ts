/**
 * The `moe-devtools` command line against real jobs: the demo model generating text with planted
 * faults (a dead expert in layer 1, a collapse in layer 3) and without, both started under
 * `python -m moe_probe run` and attached to over their sockets. Recordings made by `record` are
 * judged by `report --fail-on`, checked against the jobs' own routing logs, and exported; the
 * exports are then read by the real consumers: TensorBoard's event reader and server, Chrome
 * DevTools' Performance panel, and wandb's offline run format. Every bad argument must give one
 * clear line and exit status 2.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import puppeteer from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate, ProcessInfo } from '../../src/protocol/panel';
import { findChromium } from '../../scripts/lib/devtools-harness.mjs';
import { startTensorBoard } from '../../scripts/lib/tensorboard.mjs';
import { ROOT, findWindow, pythonPath, startDemoJob, type Job } from './jobs';

const CLI = path.join(ROOT, 'bin/moe-devtools.mjs');
const PROBE_ENV = { PYTHONPATH: path.join(ROOT, 'native-host') };
const RECORD_SECONDS = 15;
const ARTIFACTS = path.join(ROOT, 'test-artifacts');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A failed command: exit status 2, nothing on stdout, exactly one line on stderr. */
function expectOneLineError(run: Run, pattern: RegExp) {
  expect(run.code, run.stderr).toBe(2);
  expect(run.stdout).toBe('');
  expect(run.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  expect(run.stderr).toMatch(/^moe-devtools: /);
  expect(run.stderr).toMatch(pattern);
}

/** The Python that has wandb: MOE_WANDB_PYTHON, else the project's if it can import wandb, else null. */
function wandbPython(): string | null {
  for (const python of [process.env.MOE_WANDB_PYTHON, pythonPath()]) {
    if (!python) continue;
    try {
      execFileSync(python, ['-c', 'import wandb'], { stdio: 'ignore' });
      return python;
    } catch {
      // not there; try the next
    }
  }
  return null;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-cli-'));
const jobs: Job[] = [];
let faulty: Job;
let healthy: Job;
const faultyRec = path.join(tmp, 'faulty.moerec');
const healthyRec = path.join(tmp, 'healthy.moerec');

beforeAll(async () => {
  // --sleep 0 and short generations: back-to-back prompts (a prefill pass carries a whole prompt,
  // a decode pass one token), so a recording holds enough tokens to judge dead experts even
  // when the machine is busy.
  [faulty, healthy] = await Promise.all([
    startDemoJob(['--faults', '--sleep', '0', '--max-new', '8'], 8, { env: PROBE_ENV }),
    startDemoJob(['--sleep', '0', '--max-new', '8'], 8, { env: PROBE_ENV }),
  ]);
  jobs.push(faulty, healthy);
}, 180_000);

afterAll(async () => {
  await Promise.all(jobs.map((j) => j.stop()));
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('moe-devtools command line', () => {
  it('lists the jobs as JSON, run as `npx moe-devtools` from the checkout', async () => {
    const run = spawnSync('npx', ['--no-install', 'moe-devtools', 'list', '--json'], { cwd: ROOT, encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    const processes = JSON.parse(run.stdout) as ProcessInfo[];
    for (const job of [faulty, healthy]) {
      expect(processes.find((p) => p.pid === job.pid)).toMatchObject({ torch: true, probe: true, attached: false, python: expect.stringMatching(/^3\.\d+$/) });
    }
  });

  it('records both jobs, and report --fail-on dead_expert fails on the faulty one only', async () => {
    const [f, h] = await Promise.all([
      cli(['record', String(faulty.pid), '--seconds', String(RECORD_SECONDS), '-o', faultyRec]),
      cli(['record', String(healthy.pid), '--seconds', String(RECORD_SECONDS), '-o', healthyRec]),
    ]);
    for (const [run, file] of [[f, faultyRec], [h, healthyRec]] as const) {
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toMatch(new RegExp(`^saved ${file}: \\d+\\.\\d s, [\\d,]+ passes`));
      expect(run.stderr).toMatch(/recording process \d+: [\d.]+ of 15 s/); // the progress line
    }
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.copyFileSync(faultyRec, path.join(ARTIFACTS, 'cli-faulty.moerec'));

    const bad = await cli(['report', faultyRec, '--fail-on', 'dead_expert']);
    const good = await cli(['report', healthyRec, '--fail-on', 'dead_expert']);
    console.log(`report of the faulty job:\n${bad.stdout}`);
    expect(bad.stdout).toMatch(/dead_expert\s+model\.layers\.1\.mlp \(layer 1\): expert 5 received no tokens/);
    expect(bad.stderr).toBe('moe-devtools: 1 finding of a kind named in --fail-on (dead_expert)\n');
    expect(bad.code).toBe(1);
    expect(good.code, good.stdout + good.stderr).toBe(0);
    expect(good.stdout).toContain('Findings:');

    const report = JSON.parse((await cli(['report', faultyRec, '--json'])).stdout);
    expect(report.window.tokens, 'too few tokens recorded to judge dead experts on this machine').toBeGreaterThanOrEqual(1000);
    expect(report.findings.filter((x: { kind: string }) => x.kind === 'dead_expert').map((x: { layer: number; experts: number[] }) => [x.layer, x.experts])).toEqual([[1, [5]]]);
    expect(report.findings.find((x: { kind: string }) => x.kind === 'collapse')).toMatchObject({ layer: 3, experts: [2] });
    expect(report.job.method).toBe('socket');
    const healthyReport = JSON.parse((await cli(['report', healthyRec, '--json'])).stdout);
    expect(healthyReport.findings.filter((x: { kind: string }) => ['dead_expert', 'collapse', 'nan_logits'].includes(x.kind))).toEqual([]);
  });

  it('recorded exactly what the jobs routed: per-expert counts equal the sum of their own per-pass logs', async () => {
    for (const [job, file] of [[faulty, faultyRec], [healthy, healthyRec]] as const) {
      const report = JSON.parse((await cli(['report', file, '--json'])).stdout);
      const passes = job.passes();
      for (const layer of [0, 1, 3]) {
        const start = findWindow(passes, layer, report.window.toPass, report.layers[layer].counts);
        expect(start, `layer ${layer}: no run of ${report.window.toPass} passes of the job's log sums to ${report.layers[layer].counts}`).toBeGreaterThanOrEqual(0);
      }
    }
  });

  it('exports TensorBoard scalars and histograms that TensorBoard reads back as the report says', async () => {
    const dir = path.join(tmp, 'tensorboard');
    const run = await cli(['export', faultyRec, '--to', 'tensorboard', dir]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`tensorboard --logdir ${dir}`);
    const report = JSON.parse((await cli(['report', faultyRec, '--json'])).stdout);
    const read = JSON.parse(execFileSync(pythonPath(), [path.join(ROOT, 'test/tools/read_tensorboard.py'), dir], { encoding: 'utf8' }));
    const metrics = { balancedness: 'balancedness', maxVio: 'max_vio', loadEntropy: 'load_entropy', routerEntropy: 'router_entropy', zLoss: 'z_loss', deadExperts: 'dead_experts' };
    let compared = 0;
    for (let l = 0; l < report.model.layers; l++) {
      for (const [key, tag] of Object.entries(metrics)) {
        const expected = report.series.points
          .filter((p: { layers: Array<Record<string, number | null>> }) => p.layers[l]![key] !== null)
          .map((p: { passes: number; layers: Array<Record<string, number>> }) => [p.passes, Math.fround(p.layers[l]![key]!)]);
        const got = (read.scalars[`moe_${tag}/layer_${l}`] ?? []).map(([step, , value]: number[]) => [step, value]);
        expect(got, `moe_${tag}/layer_${l}`).toEqual(expected);
        compared += got.length;
      }
      // The last point's window (30 s) holds the whole recording: its histogram is the report's counts.
      const histograms = read.histograms[`moe_expert_load/layer_${l}`];
      expect(histograms).toHaveLength(report.series.points.length);
      expect(histograms.at(-1)[1].bucket).toEqual(report.layers[l].counts);
    }
    expect(compared).toBeGreaterThan(100);
    // The dead expert shows in TensorBoard as it does in the report.
    expect(read.scalars['moe_dead_experts/layer_1'].at(-1)[2]).toBe(1);

    // A real TensorBoard server (its Rust data server reads the files on its own) serves the same values.
    const tb = await startTensorBoard(pythonPath(), dir);
    try {
      const tag = 'moe_balancedness/layer_3';
      let served: number[][] = [];
      for (let i = 0; i < 60 && served.length < read.scalars[tag].length; i++) {
        const res = await fetch(`${tb.url}data/plugin/scalars/scalars?run=.&tag=${encodeURIComponent(tag)}`);
        if (res.ok) served = await res.json();
        if (served.length < read.scalars[tag].length) await new Promise((r) => setTimeout(r, 500));
      }
      expect(served.map(([, step, value]) => [step, value])).toEqual(read.scalars[tag].map(([step, , value]: number[]) => [step, value]));
    } finally {
      await tb.stop();
    }
  });

  it('exports a trace that DevTools\' Performance panel loads with one slice per interval and track', async () => {
    const file = path.join(tmp, 'trace.json');
    const run = await cli(['export', faultyRec, '--to', 'perfetto', file]);
    expect(run.code, run.stderr).toBe(0);
    // Expected slices, from the recording itself: one per pair of consecutive snapshots with passes in between, per track.
    const updates = fs.readFileSync(faultyRec, 'utf8').trim().split('\n').slice(1).map((l) => JSON.parse(l) as HostMessage)
      .filter((m): m is JobUpdate => m.type === 'update');
    let intervals = 0;
    for (let i = 1; i < updates.length; i++) if (updates[i]!.passes > updates[i - 1]!.passes) intervals++;
    expect(intervals).toBeGreaterThan(50);
    expect(run.stdout).toMatch(new RegExp(`^wrote ${file}: ${(intervals * 5).toLocaleString('en-US')} slices`));

    const browser = await puppeteer.launch({
      executablePath: findChromium(), headless: true, pipe: true, defaultViewport: null,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1400,900'],
    });
    try {
      const page = (await browser.pages())[0]!;
      const devtools = await page.openDevTools();
      const trace = fs.readFileSync(file, 'utf8');
      // DevTools' front end starts up after the window opens: wait until it lists the Performance panel.
      const ready = `(async () => {
        const UI = await import(new URL('./ui/legacy/legacy.js', location.href).href);
        return UI.InspectorView.InspectorView.instance().tabbedPane.tabIds().includes('timeline');
      })()`;
      for (let i = 0; ; i++) {
        if (await devtools.evaluate(ready).catch(() => false)) break;
        if (i > 300) throw new Error('DevTools never showed its Performance panel');
        await new Promise((r) => setTimeout(r, 100));
      }
      // The Performance panel's own "Load profile" path (TimelinePanel.loadFromFile), then its parsed model.
      const threads = await devtools.evaluate(`(async () => {
        const UI = await import(new URL('./ui/legacy/legacy.js', location.href).href);
        await UI.InspectorView.InspectorView.instance().showPanel('timeline');
        const Timeline = await import(new URL('./panels/timeline/timeline.js', location.href).href);
        const panel = Timeline.TimelinePanel.TimelinePanel.instance();
        await panel.loadFromFile(new File([${JSON.stringify(trace)}], 'trace.json', { type: 'application/json' }));
        let parsed = null;
        for (let i = 0; i < 300 && !parsed; i++) {
          try { parsed = panel.getParsedTraceForLayoutTests(); } catch { await new Promise((r) => setTimeout(r, 100)); }
        }
        if (!parsed) return null;
        const data = parsed.data ?? parsed;
        return [...data.Renderer.processes.values()].flatMap((p) => [...p.threads.values()].map((t) => ({ name: t.name, entries: t.entries.length })));
      })()`);
      expect(threads).toEqual([
        { name: 'forward passes', entries: intervals },
        ...[0, 1, 2, 3].map((l) => ({ name: `MoE layer ${l} (model.layers.${l}.mlp)`, entries: intervals })),
      ]);
    } finally {
      await browser.close();
    }
  });

  it.skipIf(!wandbPython())('exports a W&B offline run whose history holds one row per step with the report\'s numbers', async () => {
    const python = wandbPython()!;
    const dir = path.join(tmp, 'wandb');
    const run = await cli(['export', faultyRec, '--to', 'wandb', dir, '--python', python]);
    expect(run.code, run.stderr).toBe(0);
    const runDir = /^wrote W&B offline run (\S+):/.exec(run.stdout)![1]!;
    expect(path.basename(runDir)).toMatch(/^offline-run-/);
    const rows = execFileSync(python, [path.join(ROOT, 'test/tools/read_wandb_history.py'), runDir], { encoding: 'utf8' })
      .trim().split('\n').map((l) => JSON.parse(l));
    const report = JSON.parse((await cli(['report', faultyRec, '--json'])).stdout);
    expect(rows.map((r) => r._step)).toEqual(report.series.points.map((p: { passes: number }) => p.passes));
    rows.forEach((row, i) => {
      const point = report.series.points[i];
      expect(row['moe_balancedness/layer_1']).toBe(point.layers[1].balancedness);
      expect(row['moe_z_loss/layer_3']).toBe(point.layers[3].zLoss);
      expect(row['moe_dead_experts/layer_1']).toBe(point.layers[1].deadExperts ?? undefined);
    });
    // wandb itself recognises the folder as an offline run it can upload.
    const sync = spawnSync(path.join(path.dirname(python), 'wandb'), ['sync', '--dry-run', runDir], { encoding: 'utf8', env: { ...process.env, WANDB_MODE: 'offline' } });
    expect(sync.status, sync.stderr).toBe(0);
    expect(sync.stdout + sync.stderr).toMatch(/Would sync 1 run/);
  });

  it('record --wait attaches to a job started a moment ago, once its probe listens, without injecting', async () => {
    const log = path.join(tmp, 'starting-job.jsonl');
    const child = spawn(pythonPath(), ['-m', 'moe_probe', 'run', path.join(ROOT, 'test/jobs/tiny_moe_job.py'), '--log', log], { env: { ...process.env, ...PROBE_ENV }, stdio: 'ignore' });
    jobs.push({ pid: child.pid!, process: child, log, passes: () => [], stop: async () => void child.kill('SIGKILL') });
    const out = path.join(tmp, 'starting-job.moerec');
    const run = await cli(['record', String(child.pid), '--wait', '90', '--seconds', '2', '-o', out]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(new RegExp(`^waiting up to 90 s for process ${child.pid}: `));
    const report = JSON.parse((await cli(['report', out, '--json'])).stdout);
    expect(report.job.method).toBe('socket'); // its own probe, not an injected one
    expect(report.window.passes).toBeGreaterThan(0);
  });

  it('saves what it recorded when stopped with Ctrl-C, and detaches', async () => {
    const out = path.join(tmp, 'interrupted.moerec');
    const child = spawn(process.execPath, [CLI, 'record', String(healthy.pid), '--seconds', '120', '-o', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // Interrupt once it has recorded passes (the progress line says so every 5 s in a log).
    for (let i = 0; i < 300 && !/recording process \d+: [\d.]+ of 120 s, [1-9][\d,]* passes/.test(stderr); i++) await new Promise((r) => setTimeout(r, 100));
    expect(stderr).toMatch(/[1-9][\d,]* passes/);
    child.kill('SIGINT');
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/\(ended early: stopped by SIGINT\)/);
    const report = JSON.parse((await cli(['report', out, '--json'])).stdout);
    expect(report.window.passes).toBeGreaterThan(0);
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.partial'))).toEqual([]);
    // Detached: the job's probe accepts the next host straight away.
    const again = await cli(['record', String(healthy.pid), '--seconds', '1', '-o', path.join(tmp, 'after-interrupt.moerec')]);
    expect(again.code, again.stderr).toBe(0);
  });

  it('gives one clear line and exit status 2 for every bad argument, and loses nothing', async () => {
    expectOneLineError(await cli(['record', String(2 ** 30), '--seconds', '1', '-o', path.join(tmp, 'none.moerec')]), /cannot attach to process 1073741824: Process 1073741824 does not exist/);
    expect(fs.existsSync(path.join(tmp, 'none.moerec'))).toBe(false);
    expectOneLineError(await cli(['record', 'abc', '--seconds', '1', '-o', 'x.moerec']), /"abc" is not a process id/);
    expectOneLineError(await cli(['record', String(healthy.pid), '-o', path.join(tmp, 'x.moerec')]), /--seconds is required/);
    // An unwritable output folder is refused before attaching: the job is never touched.
    expectOneLineError(await cli(['record', String(healthy.pid), '--seconds', '1', '-o', '/proc/moe-devtools/run.moerec']), /cannot write to folder \/proc\/moe-devtools: no such file or folder/);
    // An existing recording is never overwritten without --force.
    const before = fs.readFileSync(healthyRec);
    expectOneLineError(await cli(['record', String(healthy.pid), '--seconds', '1', '-o', healthyRec]), /already exists \(pass --force to replace it\)/);
    expect(fs.readFileSync(healthyRec).equals(before)).toBe(true);

    const garbage = path.join(tmp, 'garbage.moerec');
    fs.writeFileSync(garbage, 'this is not a recording\n');
    expectOneLineError(await cli(['report', garbage]), /garbage\.moerec: This is not a MoE DevTools recording/);
    const truncated = path.join(tmp, 'truncated.moerec');
    const text = fs.readFileSync(faultyRec, 'utf8');
    fs.writeFileSync(truncated, text.slice(0, Math.floor(text.length * 0.6)));
    expectOneLineError(await cli(['report', truncated]), /truncated\.moerec: The recording is corrupt: line \d+ is not valid JSON/);
    expectOneLineError(await cli(['report', path.join(tmp, 'missing.moerec')]), /cannot read .*missing\.moerec: no such file or folder/);
    expectOneLineError(await cli(['report', faultyRec, '--fail-on', 'dead']), /unknown finding kind "dead"/);

    expectOneLineError(await cli(['export', faultyRec, '--to', 'tensorflow', path.join(tmp, 'x')]), /unknown export target "tensorflow" \(targets: tensorboard, perfetto, wandb, csv\)/);
    expectOneLineError(await cli(['export', faultyRec, '--to', 'tensorboard']), /export needs the DIR to export to/);
    expectOneLineError(await cli(['export', faultyRec, '--to', 'tensorboard', '/sys/moe-devtools-tb']), /cannot write to folder \/sys\/moe-devtools-tb: (operation not permitted|permission denied)/);
    expectOneLineError(await cli(['export', faultyRec, '--to', 'csv', path.join(faultyRec, 'csv')]), /cannot write to folder .*faulty\.moerec\/csv: part of the path is a file, not a folder/);
    expectOneLineError(await cli(['export', faultyRec, '--to', 'perfetto', '/proc/moe-devtools/trace.json']), /cannot write to folder \/proc\/moe-devtools/);
    expectOneLineError(await cli(['export', garbage, '--to', 'csv', path.join(tmp, 'csv')]), /not a MoE DevTools recording/);
    expect(fs.existsSync(path.join(tmp, 'csv'))).toBe(false);
    expectOneLineError(await cli(['export', faultyRec, '--to', 'wandb', path.join(tmp, 'wb'), '--python', path.join(tmp, 'no-python')]), /cannot run .*no-python for the W&B export: not found/);

    expectOneLineError(await cli(['frobnicate']), /unknown command "frobnicate"/);
    expectOneLineError(await cli(['list', '--jsn']), /Unknown option '--jsn'/);
    expect((await cli(['list', '--jsn'])).stderr).not.toMatch(/To specify a positional/);
    // The jobs ran on through all of this.
    expect(faulty.process.exitCode).toBeNull();
    expect(healthy.process.exitCode).toBeNull();
  });
});
