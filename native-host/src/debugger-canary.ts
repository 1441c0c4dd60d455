/**
 * A debugger is pointed at the user's job only after the very same injection succeeded on a
 * throwaway process of the same interpreter binary: the canary.
 *
 * The canary sleeps in a loop, as a job between passes does, so a debugger that interrupts a
 * system call and fails to restart it (gdb 13 on Intel CPUs with AMX: "Couldn't write extended
 * state status", then OSError errno 514 in the job) kills the canary, not the job. It passes when
 * the debugger reports success, the queued code really ran on the canary's main thread, and the
 * canary is still alive and has written nothing to stderr a moment later.
 *
 * Verdicts are kept per debugger program, interpreter binary and its modification time, for the host's life.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AttachError } from './attach-errors';
import { type Debugger, type DebuggerOptions, injectGdb, injectLldb } from './debugger-inject';
import { processExists, readProcessFacts } from './processes';

export interface CanaryVerdict {
  ok: boolean;
  /** What happened, in words: shown to the user when the debugger is not used. */
  detail: string;
}

const verdicts = new Map<string, Promise<CanaryVerdict>>();

/** Time the canary is watched after the debugger finished, for a delayed death (the errno 514 kind). */
const SURVIVAL_MS = 300;

/** The canary's program: sleeps in short naps, like a job between passes, until killed. */
export const CANARY_SOURCE = 'import time\nprint("ready", flush=True)\nwhile True:\n    time.sleep(0.01)\n';

export function canaryKey(debuggerName: Debugger, program: string, exe: string): string {
  let mtime = 0;
  try {
    mtime = fs.statSync(exe).mtimeMs;
  } catch {
    // gone: the key still separates it from a later binary at the same path
  }
  return `${debuggerName}\0${program}\0${exe}\0${mtime}`;
}

/** The canary verdict for this debugger and interpreter (run once, then remembered). */
export function canaryVerdict(debuggerName: Debugger, exe: string, opts: DebuggerOptions = {}): Promise<CanaryVerdict> {
  const key = canaryKey(debuggerName, (debuggerName === 'gdb' ? opts.gdbPath : opts.lldbPath) ?? debuggerName, exe);
  let verdict = verdicts.get(key);
  if (!verdict) {
    verdict = runCanary(debuggerName, exe, opts);
    verdicts.set(key, verdict);
  }
  return verdict;
}

/** Forget every verdict (tests). */
export function forgetCanaryVerdicts(): void {
  verdicts.clear();
}

export async function runCanary(debuggerName: Debugger, exe: string, opts: DebuggerOptions = {}): Promise<CanaryVerdict> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-canary-'));
  const marker = path.join(dir, 'ran');
  const child = spawn(exe, ['-I', '-S', '-c', CANARY_SOURCE], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  let exited: string | null = null;
  child.on('exit', (code, signal) => {
    exited = signal ? `killed by ${signal}` : `exited with status ${code}`;
  });
  try {
    const ready = await new Promise<boolean>((resolve) => {
      child.stdout!.once('data', () => resolve(true));
      child.once('exit', () => resolve(false));
      child.once('error', () => resolve(false));
    });
    if (!ready || !child.pid) return { ok: false, detail: `the canary (${exe}) did not start${stderr ? `: ${lastLine(stderr)}` : ''}` };
    const facts = readProcessFacts(child.pid);
    if (!facts) return { ok: false, detail: 'the canary vanished before the debugger ran' };
    const source = `open(${JSON.stringify(marker)}, "w").write(__import__("threading").current_thread().name)\n`;
    let failure: string | null = null;
    try {
      await (debuggerName === 'gdb' ? injectGdb : injectLldb)(facts, source, opts);
    } catch (err) {
      failure = (err as AttachError).message;
    }
    const deadline = Date.now() + 2500; // it naps 10 ms at a time: the queued code runs within one
    while (failure === null && !fs.existsSync(marker) && Date.now() < deadline && exited === null) await sleep(10);
    await sleep(SURVIVAL_MS);
    if (exited !== null || !processExists(child.pid)) {
      return { ok: false, detail: `${debuggerName} killed a test process of the same Python (it ${exited ?? 'exited'}${stderr ? `: ${lastLine(stderr)}` : ''})` };
    }
    if (failure !== null) return { ok: false, detail: `${debuggerName} failed on a test process of the same Python: ${failure}` };
    if (stderr.trim()) return { ok: false, detail: `${debuggerName} disturbed a test process of the same Python: ${lastLine(stderr)}` };
    if (!fs.existsSync(marker)) return { ok: false, detail: `${debuggerName} reported success, but the queued code never ran in a test process` };
    const thread = fs.readFileSync(marker, 'utf8');
    if (thread !== 'MainThread') return { ok: false, detail: `${debuggerName} ran the queued code on ${thread}, not the main thread` };
    return { ok: true, detail: `${debuggerName} passed its canary` };
  } finally {
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).at(-1) ?? '';
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
