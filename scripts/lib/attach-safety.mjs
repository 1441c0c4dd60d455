// Attach-safety checks shared by the end-to-end test (test/e2e/attach-safety.test.ts) and the
// benchmark (scripts/bench_attach.mjs): real torch jobs in chosen thread states
// (test/jobs/attach_safety_job.py), attached and detached through the built native host over
// real native messaging, and a verdict on whether each job came out exactly as it went in.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../python-env.mjs';

export const STATES = ['sleep', 'busy', 'threads', 'pipe', 'torch_threads'];

/** The built native host (dist/host), driven as Chrome drives it: length-prefixed JSON on stdio. */
export class NativeHost {
  constructor(env = {}) {
    const launcher = path.join(ROOT, 'dist/host/moe-devtools-host');
    if (!fs.existsSync(launcher)) throw new Error(`${launcher} is missing: run \`npm run build\` first`);
    this.messages = [];
    this.stderr = '';
    this.chunks = [];
    this.process = spawn(launcher, ['chrome-extension://attach-safety/'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.process.stdout.on('data', (chunk) => this.onData(chunk));
    this.process.stderr.on('data', (chunk) => (this.stderr += chunk));
    this.send({ type: 'hello', version: 1 });
  }

  /** Resolves once the host answered hello: it has started (a panel's host starts long before any attach). */
  ready() {
    return this.waitFor((m) => m.type === 'hello', 30000);
  }

  send(message) {
    const body = Buffer.from(JSON.stringify(message));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length);
    this.process.stdin.write(Buffer.concat([head, body]));
  }

  onData(chunk) {
    this.chunks.push(chunk);
    let buffer = Buffer.concat(this.chunks);
    while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32LE(0)) {
      const length = buffer.readUInt32LE(0);
      this.messages.push(JSON.parse(buffer.subarray(4, 4 + length).toString('utf8')));
      buffer = buffer.subarray(4 + length);
    }
    this.chunks = buffer.length ? [buffer] : [];
  }

  /** The first message after index `from` that matches, waiting up to timeoutMs. */
  async waitFor(match, timeoutMs, from = 0) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.slice(from).find(match);
      if (found) return found;
      if (Date.now() > deadline) {
        const last = this.messages.slice(-3).map((m) => JSON.stringify(m).slice(0, 300)).join(' | ');
        throw new Error(`timed out after ${timeoutMs} ms; the host said: ${last}; stderr: ${this.stderr.slice(-500)}`);
      }
      await sleep(5);
    }
  }

  kill() {
    this.process.kill('SIGKILL');
  }
}

/** Starts a job in `state`; resolves once it runs passes. */
export async function startSafetyJob(state, python) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `moe-safety-${state}-`));
  const log = path.join(dir, 'job.jsonl');
  const child = spawn(python, [path.join(ROOT, 'test/jobs/attach_safety_job.py'), '--state', state, '--log', log],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const job = {
    state,
    pid: child.pid,
    process: child,
    stderr: () => stderr,
    records: () => readRecords(log),
    alive: () => child.exitCode === null && child.signalCode === null,
    stop: () => {
      if (job.alive()) child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitUntil(() => job.records().filter((r) => r.pass !== undefined).length >= 3 || !job.alive(), 120000, `the ${state} job to run`);
    if (!job.alive()) throw new Error(`the ${state} job exited at start: ${stderr.slice(-2000)}`);
  } catch (err) {
    job.stop();
    throw err;
  }
  return job;
}

function readRecords(log) {
  const out = [];
  let text = '';
  try {
    text = fs.readFileSync(log, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // the line being written now
    }
  }
  return out;
}

/**
 * One attach and detach through the host; resolves with how long the attach took (from the
 * request to the host's 'attached') and which method it used. Throws with the host's words.
 */
export async function attachDetach(host, job) {
  const from = host.messages.length;
  const started = performance.now();
  host.send({ type: 'attach', pid: job.pid });
  const answer = await host.waitFor((m) => (m.type === 'attached' || m.type === 'error') && m.pid === job.pid, 30000, from);
  const ms = performance.now() - started;
  if (answer.type === 'error') throw new Error(`attach failed: ${answer.code}: ${answer.message}`);
  await host.waitFor((m) => m.type === 'update' && m.pid === job.pid, 20000, from);
  const detachFrom = host.messages.length;
  host.send({ type: 'detach', pid: job.pid });
  await host.waitFor((m) => m.type === 'detached' && m.pid === job.pid, 20000, detachFrom);
  return { ms, method: answer.method, attempts: answer.attempts ?? [] };
}

/**
 * Whether the job came out exactly as it went in: alive, no error of its own and nothing on
 * stderr, passes going on after the detach with the same outputs per input as before, its
 * helper threads answering, and no thread of the probe left.
 */
export async function checkUnharmed(job, baselineThreads) {
  const problems = [];
  const passCount = () => job.records().filter((r) => r.pass !== undefined).length;
  const before = passCount();
  // The probe's thread ends a moment after the detach: wait for it (and 3 more passes).
  await waitUntil(() => !job.alive() || (passCount() >= before + 3 && job.records().filter((r) => r.pass !== undefined).at(-1).threads === baselineThreads),
    20000, 'passes after detach').catch(() => {});
  const records = job.records();
  const errors = records.filter((r) => r.error);
  if (!job.alive()) problems.push(`exited (${job.process.exitCode ?? job.process.signalCode})`);
  if (errors.length) problems.push(`reported: ${errors[0].error}`);
  if (job.stderr().trim()) problems.push(`wrote to stderr: ${job.stderr().trim().split('\n').slice(-1)[0]}`);
  const passes = records.filter((r) => r.pass !== undefined);
  if (passes.length < before + 3) problems.push(`ran ${passes.length - before} passes in 20 s after detach`);
  const last = passes.at(-1);
  if (last && last.threads !== baselineThreads) problems.push(`has ${last.threads} threads, had ${baselineThreads} before attaching`);
  return problems;
}

export async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
