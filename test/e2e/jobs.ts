/** Real Python jobs for the end-to-end tests, and reading what they recorded about themselves. */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');

export function pythonPath(): string {
  const venv = path.join(ROOT, '.venv/bin/python');
  const python = process.env.MOE_PYTHON ?? venv;
  if (!fs.existsSync(python)) throw new Error(`No Python at ${python}: run \`npm run setup-python\` (or set MOE_PYTHON).`);
  return python;
}

export interface PassRecord {
  pass: number;
  counts: number[][];
  out: string;
  hooks: number;
  threads: string[];
  /** --compile: graphs dynamo had compiled in the job by the end of this pass, and the pass's seconds. */
  graphs?: number;
  seconds?: number;
  /** tiny_moe_job.py: input distribution (0, or 1 after --switch-file) and wall time. */
  phase?: number;
  time?: number;
  /** With --log-tokens: input token ids (batch flattened) and each token's top-k experts per layer [layer][token][k]. */
  input?: number[];
  ids?: number[][][];
  /** How many parameters carried a .grad when the pass ended (tiny job). */
  grads?: number;
}

export interface Job {
  pid: number;
  process: ChildProcess;
  log: string;
  passes(): PassRecord[];
  stop(): Promise<void>;
}

function readLog(log: string): { ready?: Record<string, unknown>; passes: PassRecord[] } {
  const out: { ready?: Record<string, unknown>; passes: PassRecord[] } = { passes: [] };
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line);
    } catch {
      continue; // the line being written right now
    }
    if (value.ready) out.ready = value;
    else if ('pass' in value) out.passes.push(value as unknown as PassRecord);
  }
  return out;
}

/**
 * Start test/jobs/tiny_moe_job.py (a real transformers model; it never imports the probe).
 * `prelude`: Python run first in the same process (e.g. to start a library-mode probe).
 */
export async function startTinyJob(args: string[] = [], minPasses = 8, opts: { prelude?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Job> {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-job-')), 'job.jsonl');
  const script = path.join(ROOT, 'test/jobs/tiny_moe_job.py');
  const argv = opts.prelude
    ? ['-c', `${opts.prelude}\nimport runpy, sys\nsys.argv = ${JSON.stringify([script, '--log', log, ...args])}\nrunpy.run_path(sys.argv[0], run_name='__main__')`]
    : [script, '--log', log, ...args];
  return startLoggingJob(pythonPath(), argv, log, minPasses, opts.env, opts.timeoutMs);
}

/**
 * Start scripts/demo_job.py (the committed demo model generating text; `--faults` plants a dead
 * expert in layer 1 and a collapse in layer 3) under `python -m moe_probe run`, so that it is
 * attachable over its socket without a debugger. It logs every pass's routing like the tiny job.
 * `python`: the interpreter (default the project's), `env`: e.g. PYTHONPATH for the probe.
 */
export async function startDemoJob(args: string[] = [], minPasses = 8, opts: { python?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Job> {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-demo-job-')), 'job.jsonl');
  const argv = ['-m', 'moe_probe', 'run', path.join(ROOT, 'scripts/demo_job.py'), '--quiet', '--log', log, ...args];
  return startLoggingJob(opts.python ?? pythonPath(), argv, log, minPasses, opts.env);
}

/**
 * Start test/jobs/mixed_moe_job.py: a hand-written model whose MoE layers differ (attention experts,
 * 4 and 8 experts, zero-compute experts, a ModuleList block); `--nan` puts a NaN in one gate.
 * It never imports the probe and logs what each block dispatched, like the tiny job.
 */
export async function startMixedJob(args: string[] = [], minPasses = 8): Promise<Job> {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-mixed-job-')), 'job.jsonl');
  return startLoggingJob(pythonPath(), [path.join(ROOT, 'test/jobs/mixed_moe_job.py'), '--log', log, ...args], log, minPasses);
}

/**
 * Start one of test/jobs/*_moe_job.py of another framework (onnx_moe_job.py, jax_moe_job.py,
 * keras_moe_job.py, trainer_moe_job.py): a real process that never imports the probe and logs
 * its own routing per pass (or per training step), as the tiny torch job does.
 */
export async function startFrameworkJob(script: string, args: string[] = [], minPasses = 8, env: NodeJS.ProcessEnv = {}): Promise<Job> {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-framework-job-')), 'job.jsonl');
  return startLoggingJob(pythonPath(), [path.join(ROOT, 'test/jobs', script), '--log', log, ...args], log, minPasses, { TF_CPP_MIN_LOG_LEVEL: '2', ...env });
}

/** Spawn a job that appends one JSON line per pass to `log`, and wait (90 s unless told) until it has logged `minPasses`. */
export async function startLoggingJob(python: string, argv: string[], log: string, minPasses: number, env: NodeJS.ProcessEnv = {},
  timeoutMs = 90_000): Promise<Job> {
  const child = spawn(python, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const job: Job = {
    pid: child.pid!,
    process: child,
    log,
    passes: () => readLog(log).passes,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`job exited early (${child.exitCode}): ${stderr}`);
    if (fs.existsSync(log) && readLog(log).passes.length >= minPasses) return job;
    await new Promise((r) => setTimeout(r, 100));
  }
  await job.stop();
  throw new Error(`job did not run ${minPasses} passes within ${timeoutMs / 1000} s: ${stderr}`);
}

/**
 * The start of a run of `n` consecutive passes whose summed counts for `layer`
 * equal `shown`, or -1. The probe attaches at an arbitrary pass, so the test
 * looks for the window rather than assuming where it starts.
 */
export function findWindow(passes: PassRecord[], layer: number, n: number, shown: number[]): number {
  if (n <= 0) return -1;
  for (let start = 0; start + n <= passes.length; start++) {
    const sum = new Array(shown.length).fill(0);
    for (let i = start; i < start + n; i++) passes[i].counts[layer].forEach((c, e) => (sum[e] += c));
    if (sum.every((v, e) => v === shown[e])) return start;
  }
  return -1;
}
