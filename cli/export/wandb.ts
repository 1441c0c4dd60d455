/**
 * A Weights & Biases offline run for a recording, written by wandb itself (cli/export/wandb_offline.py,
 * run with the user's Python) so that `wandb sync` accepts it whatever the version of W&B's
 * internal run format. One W&B step per point of the report's series (step = passes since
 * attach), under the same names as the TensorBoard scalars; the whole-recording numbers go to
 * the run's summary.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { SERIES_METRICS, type RoutingReport } from '../routing-report';
import { CliError } from '../errors';
import { scalarTag } from './tensorboard';

export interface WandbRow {
  step: number;
  values: Record<string, number>;
}

/** The rows wandb logs: per point, every measured metric of every layer, plus time and window size. */
export function wandbRows(report: RoutingReport): WandbRow[] {
  return report.series.points.map((p) => {
    const values: Record<string, number> = { seconds: p.t, window_passes: p.windowPasses };
    p.layers.forEach((layer, l) => {
      for (const m of SERIES_METRICS) {
        const v = layer[m.key];
        if (v !== null) values[scalarTag(m.tag, l)] = v;
      }
    });
    return { step: p.passes, values };
  });
}

function wandbSummary(report: RoutingReport): Record<string, number> {
  const out: Record<string, number> = { passes: report.window.passes, findings: report.findings.length };
  report.layers.forEach((layer, l) => {
    for (const m of SERIES_METRICS) {
      const v = layer[m.key];
      if (v !== null) out[`recording/${scalarTag(m.tag, l)}`] = v;
    }
  });
  return out;
}

export interface WandbOptions {
  dir: string;
  python: string;
  project: string;
  name: string;
  writer: string;
}

/** Run the writer; returns the offline run's folder. */
export async function writeWandbRun(report: RoutingReport, opts: WandbOptions): Promise<string> {
  const spec = {
    dir: path.resolve(opts.dir), project: opts.project, name: opts.name,
    config: { recorded_pid: report.pid, model: report.model.class, layers: report.model.layers, command: report.job?.argv.join(' ') ?? null, thresholds: report.thresholds },
    rows: wandbRows(report), summary: wandbSummary(report),
  };
  const child = spawn(opts.python, [opts.writer], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, WANDB_MODE: 'offline' } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exit = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  child.stdin.on('error', () => {}); // a writer that died early: its exit status says why
  child.stdin.end(JSON.stringify(spec));
  let code: number | null;
  try {
    code = await exit;
  } catch (err) {
    throw new CliError(`cannot run ${opts.python} for the W&B export: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (err as Error).message} (pass --python PATH to a Python that has wandb)`);
  }
  const lastLine = (text: string) => text.trim().split('\n').pop() ?? '';
  if (code === 3) throw new CliError(`${lastLine(stderr)} (or pass --python PATH to a Python that has it)`);
  if (code !== 0) throw new CliError(`wandb could not write the run (exit ${code}): ${lastLine(stderr) || 'no message'}`);
  return lastLine(stdout);
}
