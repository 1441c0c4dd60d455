/** `moe-devtools export run.moerec --to tensorboard DIR | perfetto FILE | wandb DIR | csv DIR`. */
import * as os from 'node:os';
import * as path from 'node:path';
import { fmtInt } from '../../src/analysis';
import { buildReport, type ReportOptions } from '../routing-report';
import { CliError } from '../errors';
import { prepareDir, prepareFile, readRecording, writeFileAtomic } from '../files';
import { chromeTrace } from '../export/chrome-trace';
import { reportCsvFiles } from '../export/csv';
import { eventFileName, tensorboardEvents } from '../export/tensorboard';
import { wandbRows, writeWandbRun } from '../export/wandb';

export const EXPORT_TARGETS = ['tensorboard', 'perfetto', 'wandb', 'csv'] as const;
export type ExportTarget = (typeof EXPORT_TARGETS)[number];

export function parseTarget(value: string | undefined): ExportTarget {
  if (value === undefined) throw new CliError(`export needs --to TARGET DESTINATION (targets: ${EXPORT_TARGETS.join(', ')})`);
  if (!(EXPORT_TARGETS as readonly string[]).includes(value)) {
    throw new CliError(`unknown export target "${value}" (targets: ${EXPORT_TARGETS.join(', ')})`);
  }
  return value as ExportTarget;
}

export interface ExportOptions {
  file: string;
  target: ExportTarget;
  dest: string;
  force: boolean;
  report: Partial<ReportOptions>;
  /** W&B: the Python that has wandb, the project and run names, and the writer script. */
  python: string;
  project: string;
  wandbWriter: string;
}

/** Runs the export; returns what to tell the user. */
export async function exportCommand(opts: ExportOptions): Promise<string> {
  const recording = readRecording(opts.file);
  const report = buildReport(recording, opts.report);
  const steps = report.series.points.length;
  const what = `${fmtInt(steps)} steps of ${report.model.layers} layers`;
  switch (opts.target) {
    case 'tensorboard': {
      const dir = prepareDir(opts.dest);
      const file = path.join(dir, eventFileName(report, os.hostname()));
      prepareFile(file, opts.force);
      writeFileAtomic(file, tensorboardEvents(report));
      return `wrote ${file}: ${what}\nopen it with: tensorboard --logdir ${dir}`;
    }
    case 'perfetto': {
      prepareFile(opts.dest, opts.force);
      const trace = chromeTrace(recording, report);
      writeFileAtomic(opts.dest, JSON.stringify(trace));
      const slices = trace.traceEvents.filter((e) => e.ph === 'X').length;
      const counters = trace.traceEvents.filter((e) => e.ph === 'C').length;
      return `wrote ${opts.dest}: ${fmtInt(slices)} slices, ${fmtInt(counters)} counter samples\n` +
        "open it in https://ui.perfetto.dev or in Chrome DevTools' Performance panel (Load profile)";
    }
    case 'wandb': {
      const dir = prepareDir(opts.dest);
      if (!wandbRows(report).length) throw new CliError(`${opts.file}: the recording has no interval with passes to log`);
      const name = path.basename(opts.file).replace(/\.moerec$/, '');
      const runDir = await writeWandbRun(report, { dir, python: opts.python, project: opts.project, name, writer: opts.wandbWriter });
      return `wrote W&B offline run ${runDir}: ${what}\nupload it later with: wandb sync ${runDir}`;
    }
    case 'csv': {
      const dir = prepareDir(opts.dest);
      const files = reportCsvFiles(report);
      for (const name of Object.keys(files)) prepareFile(path.join(dir, name), opts.force);
      for (const [name, text] of Object.entries(files)) writeFileAtomic(path.join(dir, name), text);
      return `wrote ${Object.keys(files).map((n) => path.join(dir, n)).join(', ')}: ${what}`;
    }
  }
}
