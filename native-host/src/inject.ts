/**
 * Getting the probe into a running Python process that was not prepared for it.
 *
 * - Python 3.14+: `sys.remote_exec(pid, file)`, run by the target's own interpreter binary.
 * - Older Pythons on Linux: gdb queues the bootstrap with Py_AddPendingCall, so it runs on the
 *   job's main thread at its next safe point instead of in whatever thread gdb stopped
 *   (running Python there can crash a process stopped mid-allocation or mid-GC).
 * - Older Pythons on macOS: lldb queues it the same way (see lldbExpression).
 *
 * The bootstrap only starts the probe's background thread; success is seen when
 * the probe's socket appears, failure in the status file it leaves instead.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AttachError, HINTS } from './attach-errors';
import { probeSocketPath, probeStatusPath } from './paths';
import { type ProcessFacts, hasTorch, isPython, processExists, pythonVersionFrom, readProcessFacts } from './processes';

export type InjectMethod = 'remote_exec' | 'gdb' | 'lldb';

/** Everything we can check before touching the process. */
export function preflight(pid: number): ProcessFacts {
  const facts = readProcessFacts(pid);
  if (!facts || !processExists(pid)) {
    throw new AttachError('no_such_process', `Process ${pid} does not exist (it may have exited).`);
  }
  const uid = process.getuid?.() ?? 0;
  if (facts.uid !== uid && uid !== 0) {
    throw new AttachError('not_our_user', `Process ${pid} belongs to uid ${facts.uid}, not to you (uid ${uid}).`);
  }
  if (!isPython(facts.exe, facts.images)) {
    throw new AttachError('not_python', `Process ${pid} (${path.basename(facts.exe) || 'unknown'}) is not a Python process.`);
  }
  if (!hasTorch(facts.images)) {
    throw new AttachError(
      'no_torch',
      `Python process ${pid} has not loaded torch, so there is no PyTorch model to watch.`,
      'Attach once the job has imported torch and built its model.',
    );
  }
  return facts;
}

export function chooseMethod(facts: ProcessFacts, platform: NodeJS.Platform = process.platform): InjectMethod {
  const version = pythonVersionFrom(facts.exe, facts.images);
  if (version) {
    const [major, minor] = version.split('.').map(Number);
    if (major > 3 || (major === 3 && minor >= 14)) return 'remote_exec';
  }
  if (platform === 'darwin') return 'lldb';
  if (platform !== 'linux') {
    throw new AttachError('unsupported_platform', `Injecting into Python ${version ?? '?'} is only supported on Linux and macOS so far.`,
      'Start the job with `python -m moe_probe run script.py` instead.');
  }
  return 'gdb';
}

/** Python source that starts the probe; never raises into the job. */
export function bootstrapSource(probeRoot: string, socketDir: string): string {
  const root = JSON.stringify(probeRoot);
  const dir = JSON.stringify(socketDir);
  // No assignments: PyRun_SimpleString runs in the job's __main__ namespace.
  return [
    'try:',
    ` __import__("sys").path.insert(0, ${root})`,
    ` __import__("moe_probe.inject").inject.start(${dir})`,
    'except BaseException:',
    ' pass',
    'finally:',
    ` ${root} in __import__("sys").path and __import__("sys").path.remove(${root})`,
    '',
  ].join('\n');
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

/** Runs a debugger or interpreter to completion; tests replace it (InjectOptions.run) with captured output. */
export type Runner = (file: string, args: string[], timeoutMs: number) => Promise<RunResult>;

function run(file: string, args: string[], timeoutMs: number, closeStdin = false): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ missing: error?.code === 'ENOENT', ok: !error, out: `${stdout}\n${stderr}` });
    });
    if (closeStdin) child.stdin?.end();
  });
}

function ptraceScope(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/kernel/yama/ptrace_scope', 'utf8').trim());
  } catch {
    return 0;
  }
}

export interface InjectOptions {
  probeRoot: string;
  socketDir: string;
  gdbPath?: string;
  lldbPath?: string;
  timeoutMs?: number;
  /** Platform whose constants the lldb expression uses (default: this one); for tests. */
  platform?: NodeJS.Platform;
  /** Runs lldb (default: execFile); for tests. */
  run?: Runner;
}

export async function inject(facts: ProcessFacts, method: InjectMethod, opts: InjectOptions): Promise<void> {
  fs.mkdirSync(opts.socketDir, { recursive: true, mode: 0o700 });
  fs.rmSync(probeStatusPath(facts.pid, opts.socketDir), { force: true });
  const source = bootstrapSource(opts.probeRoot, opts.socketDir);
  if (method === 'remote_exec') await injectRemoteExec(facts, source, opts);
  else if (method === 'lldb') await injectLldb(facts, source, opts);
  else await injectGdb(facts, source, opts);
}

async function injectGdb(facts: ProcessFacts, source: string, opts: InjectOptions): Promise<void> {
  if (ptraceScope() >= 3) {
    throw new AttachError('ptrace_denied', 'ptrace is disabled on this machine (kernel.yama.ptrace_scope = 3).', HINTS.ptrace);
  }
  const call = `call (int)Py_AddPendingCall((int(*)(void*))PyRun_SimpleString, ${cStringLiteral(source)})`;
  const gdb = opts.gdbPath ?? 'gdb';
  // Load only libpython's and libc's symbols: torch's libraries would cost gdb seconds.
  const args = ['-batch', '-nx', '-p', String(facts.pid),
    '-iex', 'set auto-solib-add off', '-ex', 'sharedlibrary libpython', '-ex', 'sharedlibrary libc\\.so', '-ex', call];
  const result = await run(gdb, args, opts.timeoutMs ?? 20000);
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

async function injectLldb(facts: ProcessFacts, source: string, opts: InjectOptions): Promise<void> {
  const exec = opts.run ?? ((file, args, timeoutMs) => run(file, args, timeoutMs, true));
  const result = await exec(opts.lldbPath ?? 'lldb', lldbArgs(facts.pid, source, opts.platform ?? process.platform), opts.timeoutMs ?? 30000);
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

async function injectRemoteExec(facts: ProcessFacts, source: string, opts: InjectOptions): Promise<void> {
  const file = path.join(opts.socketDir, `bootstrap-${facts.pid}.py`);
  fs.writeFileSync(file, source, { mode: 0o600 });
  try {
    const code = `import sys; sys.remote_exec(${facts.pid}, ${JSON.stringify(file)})`;
    const result = await run(facts.exe, ['-I', '-c', code], opts.timeoutMs ?? 20000);
    if (!result.ok) {
      if (/PermissionError|Operation not permitted/.test(result.out)) {
        throw new AttachError('ptrace_denied', `The system refused sys.remote_exec into process ${facts.pid}.`, HINTS.ptrace);
      }
      throw new AttachError('inject_failed', `sys.remote_exec failed: ${result.out.trim().split('\n').slice(-1)[0]}`,
        'Remote debugging may be disabled in the job (PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug).');
    }
  } finally {
    // The target reads the file at its next safe point; give it time before removing it.
    setTimeout(() => fs.rmSync(file, { force: true }), 30000).unref();
  }
}

/** Wait until the injected probe listens, or say why it will not. */
export async function waitForProbe(pid: number, socketDir: string, timeoutMs: number): Promise<string> {
  const socket = probeSocketPath(pid, socketDir);
  const status = probeStatusPath(pid, socketDir);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (fs.existsSync(socket)) return socket;
    if (fs.existsSync(status)) {
      let error: { code?: string; message?: string } = {};
      try {
        error = JSON.parse(fs.readFileSync(status, 'utf8'));
      } catch {
        // half-written; read again next round
        await sleep(50);
        continue;
      }
      fs.rmSync(status, { force: true });
      const code = error.code === 'no_torch' ? 'no_torch' : 'inject_failed';
      throw new AttachError(code, error.message ?? 'The probe could not start in the job.');
    }
    if (!processExists(pid)) throw new AttachError('process_exited', `Process ${pid} exited while attaching.`);
    if (Date.now() > deadline) throw new AttachError('attach_timeout', `The probe did not start in process ${pid} within ${Math.round(timeoutMs / 1000)} s.`, HINTS.blocked);
    await sleep(25);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
