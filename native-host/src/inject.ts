/**
 * Getting the probe into a running Python process that was not prepared for it.
 *
 * Every method ends the same way: Python's own Py_AddPendingCall queues a short bootstrap
 * (bootstrapSource) that the job's main thread runs at its next safe point, between bytecodes;
 * the bootstrap starts the probe's background thread and returns. Success is seen when the
 * probe's socket appears, failure in the status file it leaves instead (waitForProbe).
 *
 * Methods, tried in this order (attachMethods):
 * - `remote_exec`: Python 3.14+'s sys.remote_exec, run by the target's own interpreter binary.
 * - `ptrace` (Linux, x86-64 and aarch64): our own injector, ptrace from Python's ctypes
 *   (ptrace-inject.ts, native-host/moe_inject); it calls only at a completed system call.
 * - `lldb`, then `gdb`: debuggers, each used on the job only after it passed a canary run on a
 *   throwaway process of the same interpreter (debugger-canary.ts).
 * A method that fails in a way the next one cannot help with (permission refused, the job
 * exited, no safe point) ends the search; otherwise the next is tried, and when all fail the
 * error says what each one said.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AttachAttempt, ErrorCode } from '../../src/protocol/panel';
import { AttachError, HINTS } from './attach-errors';
import { canaryVerdict } from './debugger-canary';
import { type DebuggerOptions, findDebugger, injectGdb, injectLldb, run as runProgram } from './debugger-inject';
import { probeSocketPath, probeStatusPath } from './paths';
import { type InjectorStep, type PtraceResult, injectorInterpreters, runPtraceInjector } from './ptrace-inject';
import { type ProcessFacts, frameworksLoaded, isPython, processExists, pythonVersionFrom, readProcessFacts } from './processes';

export type InjectMethod = 'remote_exec' | 'ptrace' | 'lldb' | 'gdb';

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
  if (!frameworksLoaded(facts.images).length) {
    throw new AttachError(
      'no_torch',
      `Python process ${pid} has not loaded torch, JAX, TensorFlow or ONNX Runtime, so there is no model to watch.`,
      'Attach once the job has imported its framework and built its model.',
    );
  }
  return facts;
}

/** The methods to try on this process, in order. */
export function attachMethods(facts: ProcessFacts, platform: NodeJS.Platform = process.platform, cpu: string = process.arch): InjectMethod[] {
  const methods: InjectMethod[] = [];
  const version = pythonVersionFrom(facts.exe, facts.images);
  if (version) {
    const [major, minor] = version.split('.').map(Number);
    if (major > 3 || (major === 3 && minor >= 14)) methods.push('remote_exec');
  }
  if (platform === 'linux') {
    if (cpu === 'x64' || cpu === 'arm64') methods.push('ptrace');
    methods.push('lldb', 'gdb');
  } else if (platform === 'darwin') {
    methods.push('lldb');
  }
  if (!methods.length) {
    throw new AttachError('unsupported_platform', `Injecting into Python ${version ?? '?'} is only supported on Linux and macOS so far.`,
      'Start the job with `python -m moe_probe run script.py` instead.');
  }
  return methods;
}

const ALL_METHODS: InjectMethod[] = ['remote_exec', 'ptrace', 'lldb', 'gdb'];

/** MOE_DEVTOOLS_ATTACH_METHODS ("ptrace,gdb"): the methods to try, in that order; undefined when unset. */
export function parseAttachMethods(value: string | undefined): InjectMethod[] | undefined {
  if (!value?.trim()) return undefined;
  const methods = value.split(',').map((m) => m.trim()).filter(Boolean);
  const unknown = methods.filter((m) => !ALL_METHODS.includes(m as InjectMethod));
  if (unknown.length) throw new Error(`MOE_DEVTOOLS_ATTACH_METHODS: unknown method ${unknown.join(', ')} (known: ${ALL_METHODS.join(', ')})`);
  return methods as InjectMethod[];
}

export interface BootstrapOptions {
  /** Seconds since the epoch after which the bootstrap does nothing (the host stopped waiting). */
  deadline?: number;
  /** The bootstrap sits in a page the ptrace injector mapped for it: unmap it once it has run. */
  ownPage?: boolean;
}

/** Python source that starts the probe; never raises into the job. */
export function bootstrapSource(probeRoot: string, socketDir: string, opts: BootstrapOptions = {}): string {
  const root = JSON.stringify(probeRoot);
  const args = [JSON.stringify(socketDir)];
  if (opts.deadline !== undefined) args.push(`deadline=${opts.deadline.toFixed(3)}`);
  // The ptrace injector replaces these two words with the page's address and size.
  if (opts.ownPage) args.push('page=(__MOE_PAGE_ADDRESS__, __MOE_PAGE_SIZE__)');
  // No assignments: PyRun_SimpleString runs in the job's __main__ namespace.
  return [
    'try:',
    ` __import__("sys").path.insert(0, ${root})`,
    ` __import__("moe_probe.inject").inject.start(${args.join(', ')})`,
    'except BaseException:',
    ' pass',
    'finally:',
    ` ${root} in __import__("sys").path and __import__("sys").path.remove(${root})`,
    '',
  ].join('\n');
}

export interface InjectOptions extends DebuggerOptions {
  probeRoot: string;
  socketDir: string;
  /** How long the host will wait for the probe after the bootstrap is queued (its deadline). */
  attachTimeoutMs?: number;
  /** The methods to try (default: attachMethods). */
  methods?: InjectMethod[];
  /** Seconds the ptrace injector waits for a thread to complete a system call. */
  ptraceTimeoutS?: number;
  /** Interpreters to run the ptrace injector with (default: injectorInterpreters); for tests. */
  injectorInterpreters?: string[];
  /** Test hooks of the ptrace injector. */
  ptraceFailAt?: InjectorStep;
  ptracePauseAt?: InjectorStep;
  ptracePauseS?: number;
}

export interface Injected {
  method: InjectMethod;
  /** What each method tried said, the successful one last. */
  attempts: AttachAttempt[];
}

/** Queue the bootstrap with the first method that works. */
export async function injectProbe(facts: ProcessFacts, opts: InjectOptions): Promise<Injected> {
  fs.mkdirSync(opts.socketDir, { recursive: true, mode: 0o700 });
  fs.rmSync(probeStatusPath(facts.pid, opts.socketDir), { force: true });
  const attempts: AttachAttempt[] = [];
  for (const method of opts.methods ?? attachMethods(facts)) {
    try {
      const detail = await injectWith(facts, method, opts);
      attempts.push({ method, ok: true, message: detail });
      return { method, attempts };
    } catch (err) {
      const e = err instanceof AttachError ? err : new AttachError('internal', (err as Error).message ?? String(err));
      attempts.push({ method, ok: false, message: e.message });
      if (e.final) throw new AttachError(e.code, e.message, e.hint, { final: true, attempts });
    }
  }
  throw allFailed(facts.pid, attempts);
}

/** One method; resolves with a line saying how it went, or throws an AttachError. */
export async function injectWith(facts: ProcessFacts, method: InjectMethod, opts: InjectOptions): Promise<string> {
  const deadline = Date.now() / 1000 + (opts.attachTimeoutMs ?? 15000) / 1000;
  if (method === 'ptrace') return injectPtrace(facts, bootstrapSource(opts.probeRoot, opts.socketDir, { deadline, ownPage: true }), opts);
  const source = bootstrapSource(opts.probeRoot, opts.socketDir, { deadline });
  if (method === 'remote_exec') return injectRemoteExec(facts, source, opts);
  const debuggerName = method;
  const program = debuggerName === 'gdb' ? opts.gdbPath : opts.lldbPath;
  const found = program ?? (opts.run ? debuggerName : findDebugger(debuggerName));
  if (!found) {
    throw debuggerName === 'gdb'
      ? new AttachError('gdb_missing', 'gdb is not installed.', HINTS.gdb)
      : new AttachError('lldb_missing', 'lldb is not installed.', HINTS.lldb);
  }
  const withProgram = { ...opts, [debuggerName === 'gdb' ? 'gdbPath' : 'lldbPath']: found };
  if (process.platform === 'linux' && !opts.run) {
    const verdict = await canaryVerdict(debuggerName, facts.exe, withProgram);
    if (!verdict.ok) throw new AttachError('inject_failed', `not used: ${verdict.detail}`);
  }
  await (debuggerName === 'gdb' ? injectGdb : injectLldb)(facts, source, withProgram);
  return `${path.basename(found)} queued the probe`;
}

async function injectPtrace(facts: ProcessFacts, source: string, opts: InjectOptions): Promise<string> {
  let result: PtraceResult | null = null;
  for (const interpreter of opts.injectorInterpreters ?? injectorInterpreters(facts.pid, facts.exe)) {
    result = await runPtraceInjector(interpreter, opts.probeRoot, {
      pid: facts.pid, source, timeoutS: opts.ptraceTimeoutS ?? 1,
      failAt: opts.ptraceFailAt, pauseAt: opts.ptracePauseAt, pauseS: opts.ptracePauseS,
    }, (opts.ptraceTimeoutS ?? 1) * 1000 + 40000);
    if (result.ok || result.code !== 'injector_unavailable') break;
  }
  if (!result) throw new AttachError('inject_failed', 'No Python interpreter was found to run the injector.');
  if (result.ok) {
    const where = result.thread === 'main' ? 'the main thread' : `thread ${result.tid}`;
    const done = `queued at ${where}'s ${result.syscall} exit in ${Math.round(result.timings_ms.done ?? 0)} ms`;
    return result.warning ? `${done} (${result.warning})` : done;
  }
  throw ptraceError(facts.pid, result.code, result.message);
}

/** The injector's failure as the panel's error: codes the next method cannot help with end the search. */
export function ptraceError(pid: number, code: string, message: string): AttachError {
  switch (code) {
    case 'no_such_process':
      return new AttachError('no_such_process', message, undefined, { final: true });
    case 'process_exited':
      return new AttachError('process_exited', message, undefined, { final: true });
    case 'ptrace_denied':
      return new AttachError('ptrace_denied', `The system refused to let the injector trace process ${pid} (ptrace not permitted).`, HINTS.ptrace, { final: true });
    case 'already_traced':
      return new AttachError('ptrace_denied', message, HINTS.traced, { final: true });
    case 'no_safe_point':
      return new AttachError('attach_timeout', message, HINTS.no_safe_point, { final: true });
    case 'job_stopped':
      return new AttachError('attach_timeout', message, undefined, { final: true });
    case 'pending_call_refused':
    case 'restore_failed':
    case 'test_failure':
      return new AttachError('inject_failed', message, undefined, { final: true });
    default: // unsupported_arch, no_python_symbols, injector_unavailable, inject_failed: a debugger may still do it
      return new AttachError('inject_failed', message);
  }
}

/** Every method failed: the most telling failure's code, and what each said. */
function allFailed(pid: number, attempts: AttachAttempt[]): AttachError {
  const said = attempts.map((a) => `${a.method}: ${a.message}`).join('; ');
  const missing = attempts.every((a) => /is not installed/.test(a.message));
  const code: ErrorCode = missing ? 'gdb_missing' : 'inject_failed';
  return new AttachError(code, `No way into process ${pid} worked. ${said}`,
    'Start the job with `python -m moe_probe run script.py` (or call `moe_probe.attach(model)` in it), which needs no injection.',
    { attempts });
}

async function injectRemoteExec(facts: ProcessFacts, source: string, opts: InjectOptions): Promise<string> {
  const file = path.join(opts.socketDir, `bootstrap-${facts.pid}.py`);
  fs.writeFileSync(file, source, { mode: 0o600 });
  try {
    const code = `import sys; sys.remote_exec(${facts.pid}, ${JSON.stringify(file)})`;
    const result = await runProgram(facts.exe, ['-I', '-c', code], opts.timeoutMs ?? 20000);
    if (!result.ok) {
      if (/PermissionError|Operation not permitted/.test(result.out)) {
        throw new AttachError('ptrace_denied', `The system refused sys.remote_exec into process ${facts.pid}.`, HINTS.ptrace);
      }
      throw new AttachError('inject_failed', `sys.remote_exec failed: ${result.out.trim().split('\n').slice(-1)[0]}`,
        'Remote debugging may be disabled in the job (PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug).');
    }
    return 'queued by sys.remote_exec';
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
  const folder = watchFolder(socketDir);
  try {
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
      await folder.change(25);
    }
  } finally {
    folder.close();
  }
}

/** Wakes as soon as something in the folder changes (inotify), or after a poll interval where watching is not possible. */
function watchFolder(dir: string): { change(ms: number): Promise<void>; close(): void } {
  let wake: (() => void) | null = null;
  let watcher: fs.FSWatcher | null = null;
  try {
    watcher = fs.watch(dir, () => wake?.());
    watcher.on('error', () => watcher?.close());
  } catch {
    watcher = null; // polling alone
  }
  return {
    change(ms: number) {
      return new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          wake = null;
          resolve();
        }
        wake = done;
      });
    },
    close() {
      watcher?.close();
    },
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
