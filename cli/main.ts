/**
 * `moe-devtools`: the command line for scripts and CI. It drives the same host code the panel
 * talks to (attach, relay, detach) and judges routing with the same analyses, so a recording
 * made here opens in the panel and shows the same numbers.
 *
 * Output for people and programs goes to stdout; progress, notes and errors to stderr. Every
 * error is one line, "moe-devtools: ...", with exit status 2; `report --fail-on` exits 1 when it
 * finds what it was told to fail on (errors.ts).
 */
import { parseArgs } from 'node:util';
import packageJson from '../package.json';
import { fmtInt } from '../src/analysis';
import { buildReport, DEFAULT_REPORT_OPTIONS, type ReportOptions } from './routing-report';
import { CliError, EXIT } from './errors';
import { readRecording } from './files';
import { PROBE_ROOT, WANDB_WRITER } from './paths';
import { listCommand } from './commands/list';
import { describeRecord, recordCommand } from './commands/record';
import { failingFindings, parseFailOn, reportJson, reportText } from './commands/report';
import { exportCommand, parseTarget } from './commands/export';
import { databaseFile, historyDelete, historyExport, historyImport, historyList } from './commands/history';
import { planFromRecording, planJson, planText } from './commands/plan';
import { prepareFile, writeFileAtomic } from './files';
import { relayCommand } from './commands/relay';
import { flowJson, flowText, recordingFlow } from './commands/flow';
import { FLOW_WEIGHTINGS, type FlowWeighting } from '../src/analysis';

/** One version for the command line and the probe package (a test holds moe_probe.__version__ to it). */
const VERSION = packageJson.version;

export const USAGE = `usage: moe-devtools <command> [options]

  list [--json]                       Python processes with torch loaded that can be attached to
  record PID --seconds N -o FILE      attach, record N seconds of routing into FILE (.moerec), detach
         [--rate HZ] [--wait S]         counts snapshots kept per second (default 10); retry up to S s
         [--force]                      while the job is still loading torch or its model; replace FILE
  report FILE [--json]                findings and per-layer metrics of a recording
         [--fail-on KINDS]              exit 1 when any of these kinds is found, e.g. dead_expert,collapse,nan_logits
  export FILE --to TARGET DEST        tensorboard DIR | perfetto FILE | wandb DIR | csv DIR
         [--force] [--python PATH] [--project NAME]   (W&B: a Python with wandb, default $MOE_PYTHON or python3)
  report and export: [--step S] [--window S]   a point of the series every S s over the trailing S s (1, 30)
  plan FILE --devices G [--redundant R]  expert placement per layer from a recording's loads (vs EPLB's greedy)
         [-o PLAN.json] [--force]
  history list [--json]               sessions in the history database the host keeps (the panel's History view)
  history export ID -o FILE           every snapshot of a session (or --from S --to S, seconds since it began) as .moerec
  history import FILE                 a .moerec into the history as a new session
  history delete ID                   remove a session
         [--db FILE]                    the database (default: where the host keeps it, MOE_DEVTOOLS_DB or the user data folder)
  relay [--port P] [--token-file F]   serve this node's ranks of a distributed job to a panel elsewhere
        [--node NAME] [--job KEY]      (127.0.0.1 only: ssh -L P:127.0.0.1:P node; token printed,
        [--all-namespaces]             or MOE_DEVTOOLS_RELAY_TOKEN); runs until Ctrl-C
  flow FILE --from L --to L2 [--json]  sampled tokens' transitions between consecutive MoE layers L..L2
         [--weighting top1|slots|gates]  (the panel's Flow view; default top1) [--filter TEXT] [--passes A-B]

Exit status: 0 done; 1 report --fail-on found something; 2 error (one line on stderr).`;

const out = (text: string) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);

function positiveNumber(value: string | undefined, flag: string, fallback?: number): number {
  if (value === undefined) {
    if (fallback !== undefined) return fallback;
    throw new CliError(`${flag} is required`);
  }
  const n = Number(value);
  if (!(n > 0) || !Number.isFinite(n)) throw new CliError(`${flag} should be a positive number, got "${value}"`);
  return n;
}

function wholeNumber(value: string | undefined, flag: string, min: number): number {
  if (value === undefined) throw new CliError(`${flag} is required`);
  if (!/^\d+$/.test(value) || Number(value) < min) throw new CliError(`${flag} should be a whole number of at least ${min}, got "${value}"`);
  return Number(value);
}

function nonNegative(value: string, flag: string): number {
  const n = Number(value);
  if (!(n >= 0) || !Number.isFinite(n)) throw new CliError(`${flag} should be a number of seconds, got "${value}"`);
  return n;
}

function parsePid(value: string | undefined): number {
  if (value === undefined) throw new CliError('record needs the PID of the job to attach to (see `moe-devtools list`)');
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) >= 2 ** 31) throw new CliError(`"${value}" is not a process id`);
  return Number(value);
}

function reportOptions(values: { step?: string; window?: string }): Partial<ReportOptions> {
  return {
    stepS: positiveNumber(values.step, '--step', DEFAULT_REPORT_OPTIONS.stepS),
    windowS: positiveNumber(values.window, '--window', DEFAULT_REPORT_OPTIONS.windowS),
  };
}

/** Exactly `n` positional arguments, or a clear error naming what is missing or extra. */
function positionals(args: string[], names: string[], command: string): string[] {
  if (args.length < names.length) throw new CliError(`${command} needs ${names.slice(args.length).join(' and ')}`);
  if (args.length > names.length) throw new CliError(`${command}: unexpected argument "${args[names.length]}"`);
  return args;
}

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== undefined && (rest.includes('--help') || rest.includes('-h'))) return out(USAGE), EXIT.ok;
  switch (command) {
    case undefined:
      process.stderr.write(`${USAGE}\n`);
      return EXIT.error;
    case 'help':
    case '--help':
    case '-h':
      out(USAGE);
      return EXIT.ok;
    case '--version':
    case 'version':
      out(VERSION);
      return EXIT.ok;
    case 'list': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: { json: { type: 'boolean' } } });
      positionals(args, [], 'list');
      listCommand(Boolean(values.json), out);
      return EXIT.ok;
    }
    case 'record': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        seconds: { type: 'string' }, output: { type: 'string', short: 'o' }, rate: { type: 'string' }, wait: { type: 'string' }, force: { type: 'boolean' },
      } });
      const [pidArg] = positionals(args, ['PID'], 'record');
      const pid = parsePid(pidArg);
      const seconds = positiveNumber(values.seconds, '--seconds');
      if (!values.output) throw new CliError('record needs -o FILE (where to save the recording, e.g. run.moerec)');
      const rateHz = positiveNumber(values.rate, '--rate', 10);
      if (rateHz > 120) throw new CliError('--rate should be at most 120 snapshots per second');
      const waitS = values.wait === undefined ? 0 : positiveNumber(values.wait, '--wait');
      const result = await recordCommand({ pid, seconds, out: values.output, rateHz, waitS, force: Boolean(values.force), probeRoot: PROBE_ROOT, log: process.stderr });
      out(describeRecord(values.output, result));
      return EXIT.ok;
    }
    case 'report': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        json: { type: 'boolean' }, 'fail-on': { type: 'string' }, step: { type: 'string' }, window: { type: 'string' },
      } });
      const [file] = positionals(args, ['FILE'], 'report');
      const failOn = values['fail-on'] !== undefined ? parseFailOn(values['fail-on']) : [];
      const options = reportOptions(values);
      const report = buildReport(readRecording(file!), options);
      out(values.json ? reportJson(report) : reportText(report, file!));
      const failing = failingFindings(report, failOn);
      if (failing.length) {
        const kinds = [...new Set(failing.map((f) => f.kind))].join(', ');
        process.stderr.write(`moe-devtools: ${fmtInt(failing.length)} finding${failing.length > 1 ? 's' : ''} of a kind named in --fail-on (${kinds})\n`);
        return EXIT.findings;
      }
      return EXIT.ok;
    }
    case 'export': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        to: { type: 'string' }, force: { type: 'boolean' }, python: { type: 'string' }, project: { type: 'string' },
        step: { type: 'string' }, window: { type: 'string' },
      } });
      const target = parseTarget(values.to);
      const [file, dest] = positionals(args, ['FILE', `the ${target === 'perfetto' ? 'FILE' : 'DIR'} to export to (--to ${target} DEST)`], 'export');
      const message = await exportCommand({
        file: file!, target, dest: dest!, force: Boolean(values.force), report: reportOptions(values),
        python: values.python ?? process.env.MOE_PYTHON ?? 'python3', project: values.project ?? 'moe-devtools', wandbWriter: WANDB_WRITER,
      });
      out(message);
      return EXIT.ok;
    }
    case 'plan': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        devices: { type: 'string' }, redundant: { type: 'string' }, output: { type: 'string', short: 'o' }, force: { type: 'boolean' },
      } });
      const [file] = positionals(args, ['FILE'], 'plan');
      const devices = wholeNumber(values.devices, '--devices', 1);
      const redundant = values.redundant === undefined ? 0 : wholeNumber(values.redundant, '--redundant', 0);
      if (values.output) prepareFile(values.output, Boolean(values.force));
      const { plan, modelClass } = planFromRecording(readRecording(file!), devices, redundant);
      out(planText(plan));
      if (values.output) {
        writeFileAtomic(values.output, planJson(plan, { class: modelClass, pid: plan.pid }));
        out(`saved ${values.output}`);
      }
      return EXIT.ok;
    }
    case 'history': {
      const [sub, ...more] = rest;
      const { values, positionals: args } = parseArgs({ args: more, allowPositionals: true, strict: true, options: {
        db: { type: 'string' }, json: { type: 'boolean' }, output: { type: 'string', short: 'o' }, force: { type: 'boolean' }, from: { type: 'string' }, to: { type: 'string' },
      } });
      const file = databaseFile(values.db);
      const sessionId = (v: string | undefined) => {
        if (v === undefined || !/^\d+$/.test(v)) throw new CliError(`history ${sub} needs a session id (see \`moe-devtools history list\`)`);
        return Number(v);
      };
      switch (sub) {
        case 'list':
          positionals(args, [], 'history list');
          out(historyList(file, Boolean(values.json)));
          return EXIT.ok;
        case 'export': {
          const [id] = positionals(args, ['ID'], 'history export');
          if (!values.output) throw new CliError('history export needs -o FILE (where to save the .moerec)');
          const from = values.from === undefined ? undefined : nonNegative(values.from, '--from');
          const to = values.to === undefined ? undefined : nonNegative(values.to, '--to');
          out(historyExport(file, sessionId(id), values.output, Boolean(values.force), from, to));
          return EXIT.ok;
        }
        case 'import': {
          const [recording] = positionals(args, ['FILE'], 'history import');
          out(historyImport(file, recording!));
          return EXIT.ok;
        }
        case 'delete': {
          const [id] = positionals(args, ['ID'], 'history delete');
          out(historyDelete(file, sessionId(id)));
          return EXIT.ok;
        }
        default:
          throw new CliError(`history needs one of list, export, import, delete${sub ? ` (not "${sub}")` : ''}`);
      }
    }
    case 'relay': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        port: { type: 'string' }, 'token-file': { type: 'string' }, node: { type: 'string' }, job: { type: 'string' },
        'all-namespaces': { type: 'boolean' },
      } });
      positionals(args, [], 'relay');
      const port = values.port === undefined ? 5800 : Number(values.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CliError(`--port should be a TCP port (0 for any free one), got "${values.port}"`);
      await relayCommand({
        port, tokenFile: values['token-file'], node: values.node, job: values.job, allNamespaces: Boolean(values['all-namespaces']),
        probeRoot: PROBE_ROOT, log: (line) => process.stderr.write(`${line}\n`),
      });
      return EXIT.ok;
    }
    case 'flow': {
      const { values, positionals: args } = parseArgs({ args: rest, allowPositionals: true, strict: true, options: {
        from: { type: 'string' }, to: { type: 'string' }, weighting: { type: 'string' }, filter: { type: 'string' }, passes: { type: 'string' }, json: { type: 'boolean' },
      } });
      const [file] = positionals(args, ['FILE'], 'flow');
      const layer = (v: string | undefined, flag: string) => {
        if (v === undefined || !/^\d+$/.test(v)) throw new CliError(`${flag} needs a layer index (0 for the first MoE layer), got ${v === undefined ? 'nothing' : `"${v}"`}`);
        return Number(v);
      };
      const weighting = (values.weighting ?? 'top1') as FlowWeighting;
      if (!FLOW_WEIGHTINGS.includes(weighting)) throw new CliError(`--weighting should be one of ${FLOW_WEIGHTINGS.join(', ')}, got "${values.weighting}"`);
      const passes = values.passes === undefined ? null : /^(\d+)-(\d+)$/.exec(values.passes);
      if (values.passes !== undefined && !passes) throw new CliError(`--passes takes a range FIRST-LAST of pass numbers, got "${values.passes}"`);
      const result = recordingFlow(readRecording(file!), {
        from: layer(values.from, '--from'), to: layer(values.to, '--to'), weighting, filter: values.filter ?? '',
        fromPass: passes ? Number(passes[1]) : undefined, toPass: passes ? Number(passes[2]) : undefined,
      });
      out(values.json ? flowJson(result) : flowText(result));
      return EXIT.ok;
    }
    default:
      throw new CliError(`unknown command "${command}" (commands: list, record, report, export, plan, history, relay, flow; see moe-devtools --help)`);
  }
}

/** Run one command line; resolves to the exit status. Never throws. */
export async function main(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (err) {
    // parseArgs' own errors (unknown option, missing value) are already one clear line.
    // (Their advice on positionals that start with '-' is left out: not one of ours does.)
    const message = (err instanceof Error ? err.message : String(err)).replace(/\. To specify a positional argument[^]*$/, '');
    process.stderr.write(`moe-devtools: ${message.split('\n')[0]}\n`);
    if (process.env.MOE_DEVTOOLS_DEBUG && err instanceof Error && !(err instanceof CliError)) process.stderr.write(`${err.stack}\n`);
    return err instanceof CliError ? err.exitCode : EXIT.error;
  }
}

