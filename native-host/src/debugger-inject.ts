/**
 * Injection through a debugger (gdb on Linux, lldb on Linux and macOS): the debugger attaches,
 * calls Py_AddPendingCall(PyRun_SimpleString, bootstrap) inside the job, and detaches, so the
 * bootstrap runs on the job's main thread at its next safe point.
 *
 * On Linux these are fallbacks behind the native injector (ptrace-inject.ts), and each is used
 * on a job only after the same call succeeded on a throwaway process of the same interpreter
 * (debugger-canary.ts): gdb 13's inferior calls fail on Intel CPUs with AMX and can leave an
 * interrupted system call unrestarted, which kills the job.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AttachError, HINTS } from './attach-errors';
import { type ProcessFacts, processExists } from './processes';

export type Debugger = 'gdb' | 'lldb';

export interface DebuggerOptions {
  gdbPath?: string;
  lldbPath?: string;
  timeoutMs?: number;
  /** Platform whose constants the lldb expression uses (default: this one); for tests. */
  platform?: NodeJS.Platform;
  /** Runs the debugger (default: execFile); for tests. */
  run?: Runner;
}

/** The debugger's program on PATH: `gdb`, or `lldb` / a versioned `lldb-NN` (Debian installs only those). */
export function findDebugger(name: Debugger, envPath = process.env.PATH ?? ''): string | null {
  const names = name === 'gdb' ? ['gdb'] : ['lldb', ...Array.from({ length: 12 }, (_, i) => `lldb-${22 - i}`)];
  for (const candidate of names) {
    for (const dir of envPath.split(path.delimiter)) {
      if (!dir) continue;
      const file = path.join(dir, candidate);
      try {
        fs.accessSync(file, fs.constants.X_OK);
        return file;
      } catch {
        // not here
      }
    }
  }
  return null;
}

function ptraceScope(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/kernel/yama/ptrace_scope', 'utf8').trim());
  } catch {
    return 0;
  }
}

/** A C string literal gdb will accept, for any bytes. */
export function cStringLiteral(text: string): string {
  let out = '"';
  for (const byte of Buffer.from(text, 'utf8')) {
    if (byte === 0x22) out += '\\"';
    else if (byte === 0x5c) out += '\\\\';
    else if (byte === 0x0a) out += '\\n';
    else if (byte >= 0x20 && byte < 0x7f) out += String.fromCharCode(byte);
    else out += `\\${byte.toString(8).padStart(3, '0')}`;
  }
  return `${out}"`;
}

export interface RunResult {
  /** The program is not installed. */
  missing: boolean;
  ok: boolean;
  out: string;
}

/** Runs a debugger or interpreter to completion; tests replace it (DebuggerOptions.run) with captured output. */
export type Runner = (file: string, args: string[], timeoutMs: number) => Promise<RunResult>;

export function run(file: string, args: string[], timeoutMs: number, closeStdin = false): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ missing: error?.code === 'ENOENT', ok: !error, out: `${stdout}\n${stderr}` });
    });
    if (closeStdin) child.stdin?.end();
  });
}


export async function injectGdb(facts: ProcessFacts, source: string, opts: DebuggerOptions): Promise<void> {
  if (ptraceScope() >= 3) {
    throw new AttachError('ptrace_denied', 'ptrace is disabled on this machine (kernel.yama.ptrace_scope = 3).', HINTS.ptrace);
  }
  const call = `call (int)Py_AddPendingCall((int(*)(void*))PyRun_SimpleString, ${cStringLiteral(source)})`;
  const gdb = opts.gdbPath ?? findDebugger('gdb') ?? 'gdb';
  // Load only libpython's and libc's symbols: torch's libraries would cost gdb seconds.
  const args = ['-batch', '-nx', '-p', String(facts.pid),
    '-iex', 'set auto-solib-add off', '-ex', 'sharedlibrary libpython', '-ex', 'sharedlibrary libc\\.so', '-ex', call];
  const result = await (opts.run ?? run)(gdb, args, opts.timeoutMs ?? 20000);
  if (result.missing) throw new AttachError('gdb_missing', 'gdb is not installed, and this Python is older than 3.14 (no sys.remote_exec).', HINTS.gdb);
  const out = result.out;
  if (/ptrace: Operation not permitted|Could not attach to process/i.test(out)) {
    throw new AttachError('ptrace_denied', `The system refused to let gdb attach to process ${facts.pid} (ptrace not permitted).`, HINTS.ptrace);
  }
  if (/No such process/i.test(out) || !processExists(facts.pid)) {
    throw new AttachError('process_exited', `Process ${facts.pid} exited while attaching.`);
  }
  const m = /\$1 = (-?\d+)/.exec(out);
  if (!m) {
    const why = out.split('\n').find((line) => /No symbol|error|not found/i.test(line)) ?? out.trim().split('\n').slice(-1)[0];
    throw new AttachError('inject_failed', `gdb could not queue the probe in process ${facts.pid}: ${why}`,
      'Start the job with `python -m moe_probe run script.py` instead.');
  }
  if (m[1] !== '0') throw new AttachError('inject_failed', `Python refused the probe's pending call (Py_AddPendingCall returned ${m[1]}).`, 'Try again in a moment.');
}

/** A C string literal for lldb: cStringLiteral, with backticks escaped too (lldb evaluates `...` in a command, even in a raw `expr`). */
export function lldbStringLiteral(text: string): string {
  return cStringLiteral(text).replace(/`/g, '\\140');
}

/** RTLD_DEFAULT and MAP_PRIVATE|MAP_ANON, which differ between the two. */
const LLDB_CONSTANTS: Partial<Record<NodeJS.Platform, { rtldDefault: string; mapPrivateAnon: string }>> = {
  darwin: { rtldDefault: '(void*)-2L', mapPrivateAnon: '0x1002' },
  linux: { rtldDefault: '(void*)0', mapPrivateAnon: '0x22' },
};

/** What lldbExpression returns besides Py_AddPendingCall's own 0 / -1. */
export const LLDB_NO_SYMBOLS = -9;
export const LLDB_NO_MEMORY = -8;

/**
 * One C expression for `expr -l c --` that queues the bootstrap with Py_AddPendingCall.
 *
 * - The functions are found with dlsym(RTLD_DEFAULT): the interpreter that is running, whichever
 *   image holds it, and no debug info needed. Passing a function's address straight from a symbol
 *   as an argument fails in lldb ("Couldn't rewrite one of the arguments of a function call").
 * - The source is copied into a page of its own (mmap + memcpy) that is never freed: the pending
 *   call runs after lldb has detached, when lldb's own expression memory may be gone, and mmap and
 *   memcpy take no lock (strdup would take malloc's, which the stopped thread may hold).
 */
export function lldbExpression(source: string, platform: NodeJS.Platform = process.platform): string {
  const c = LLDB_CONSTANTS[platform] ?? LLDB_CONSTANTS.darwin!;
  const size = `${Buffer.byteLength(source, 'utf8') + 1}UL`;
  const dlsym = `((void*(*)(void*, const char*))dlsym)`;
  // lldb brings the stopped frame's locals into scope: prefixed names cannot clash with them
  // (a plain `r` did, in CPython's time.sleep).
  return [
    `void *moe_add = ${dlsym}(${c.rtldDefault}, "Py_AddPendingCall");`,
    `void *moe_run = ${dlsym}(${c.rtldDefault}, "PyRun_SimpleString");`,
    `int moe_r = ${LLDB_NO_SYMBOLS};`,
    `if (moe_add && moe_run) {`,
    `void *moe_code = ((void*(*)(void*, unsigned long, int, int, int, long long))mmap)((void*)0, ${size}, 3, ${c.mapPrivateAnon}, -1, 0LL);`,
    `moe_r = moe_code == (void*)-1L ? ${LLDB_NO_MEMORY} : ((int(*)(void*, void*))moe_add)(moe_run, ((void*(*)(void*, const void*, unsigned long))memcpy)(moe_code, ${lldbStringLiteral(source)}, ${size}));`,
    `}`,
    `moe_r`,
  ].join(' ');
}

/** lldb's command line: attach, queue the bootstrap, detach. Batch mode stops at the first failing command. */
export function lldbArgs(pid: number, source: string, platform: NodeJS.Platform = process.platform): string[] {
  return [
    '--batch', '--no-lldbinit', '--no-use-colors',
    // Symbols are read when a lookup needs them, not for every image (torch's are large) at attach.
    '-O', 'settings set target.preload-symbols false',
    '-p', String(pid),
    '-o', `expr -l c -- ${lldbExpression(source, platform)}`,
    '-o', 'process detach',
  ];
}

const LLDB_NOT_INSTALLED = /xcrun: error|xcode-select: (?:note|error)|no developer tools were found|invalid active developer path/i;
const LLDB_ATTACH_FAILED = /^error: (?:attach failed|attach by pid \S+ failed|process exited with status -?\d+ \((?:attach failed|lost connection|Not allowed))[^\n]*/im;

/** Reads lldb's output: returns when the pending call was queued, throws an AttachError saying why not otherwise. */
export function checkLldbResult(result: RunResult, pid: number, alive: (pid: number) => boolean = processExists): void {
  const out = result.out;
  if (result.missing || LLDB_NOT_INSTALLED.test(out)) {
    throw new AttachError('lldb_missing', 'lldb is not installed, and this Python is older than 3.14 (no sys.remote_exec).', HINTS.lldb);
  }
  const attach = LLDB_ATTACH_FAILED.exec(out);
  if (attach) {
    if (!alive(pid)) throw new AttachError('process_exited', `Process ${pid} exited while attaching.`);
    const why = attach[0].replace(/^error: /i, '');
    throw new AttachError('ptrace_denied', `macOS did not let lldb attach to process ${pid}: ${why.length > 200 ? `${why.slice(0, 197)}...` : why}`,
      HINTS.macos_attach);
  }
  const m = /^\(int\) \$\d+ = (-?\d+)\s*$/m.exec(out);
  if (!m) {
    if (!alive(pid)) throw new AttachError('process_exited', `Process ${pid} exited while attaching.`);
    const lines = out.split('\n').map((line) => line.trim()).filter(Boolean);
    const why = lines.find((line) => /^error:/i.test(line) && !/expression failed to parse/i.test(line)) ?? lines.at(-1) ?? 'no output';
    throw new AttachError('inject_failed', `lldb could not queue the probe in process ${pid}: ${why}`,
      'Start the job with `python -m moe_probe run script.py` instead.');
  }
  const code = Number(m[1]);
  if (code === 0) return;
  if (code === LLDB_NO_SYMBOLS) {
    throw new AttachError('inject_failed', `Process ${pid} does not export Python's C API (Py_AddPendingCall, PyRun_SimpleString), so lldb cannot queue the probe.`,
      'Start the job with `python -m moe_probe run script.py` instead.');
  }
  if (code === LLDB_NO_MEMORY) throw new AttachError('inject_failed', `Process ${pid} could not map a page for the probe's bootstrap.`, 'Try again in a moment.');
  throw new AttachError('inject_failed', `Python refused the probe's pending call (Py_AddPendingCall returned ${code}).`, 'Try again in a moment.');
}

export async function injectLldb(facts: ProcessFacts, source: string, opts: DebuggerOptions): Promise<void> {
  const exec = opts.run ?? ((file, args, timeoutMs) => run(file, args, timeoutMs, true));
  const result = await exec(opts.lldbPath ?? findDebugger('lldb') ?? 'lldb', lldbArgs(facts.pid, source, opts.platform ?? process.platform), opts.timeoutMs ?? 30000);
  if (!result.missing) {
    // lldb can leave a process it detached from stopped (memray's attach works around the same);
    // SIGCONT does nothing to a running process.
    try {
      process.kill(facts.pid, 'SIGCONT');
    } catch {
      // gone, or not ours
    }
  }
  checkLldbResult(result, facts.pid);
}

