/**
 * Getting the probe into a running Python process that was not prepared for it.
 *
 * - Python 3.14+: `sys.remote_exec(pid, file)`, run by the target's own interpreter binary.
 * - Older Pythons on Linux: gdb queues the bootstrap with Py_AddPendingCall, so it runs on the
 *   job's main thread at its next safe point instead of in whatever thread gdb stopped
 *   (running Python there can crash a process stopped mid-allocation or mid-GC).
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

export type InjectMethod = 'remote_exec' | 'gdb';

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

export function chooseMethod(facts: ProcessFacts): InjectMethod {
  const version = pythonVersionFrom(facts.exe, facts.images);
  if (version) {
    const [major, minor] = version.split('.').map(Number);
    if (major > 3 || (major === 3 && minor >= 14)) return 'remote_exec';
  }
  if (process.platform !== 'linux') {
    throw new AttachError('unsupported_platform', `Injecting into Python ${version ?? '?'} is only supported on Linux so far.`,
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

interface RunResult {
  /** The program is not installed. */
  missing: boolean;
  ok: boolean;
  out: string;
}

function run(file: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ missing: error?.code === 'ENOENT', ok: !error, out: `${stdout}\n${stderr}` });
    });
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
  timeoutMs?: number;
}

export async function inject(facts: ProcessFacts, method: InjectMethod, opts: InjectOptions): Promise<void> {
  fs.mkdirSync(opts.socketDir, { recursive: true, mode: 0o700 });
  fs.rmSync(probeStatusPath(facts.pid, opts.socketDir), { force: true });
  const source = bootstrapSource(opts.probeRoot, opts.socketDir);
  if (method === 'remote_exec') await injectRemoteExec(facts, source, opts);
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
