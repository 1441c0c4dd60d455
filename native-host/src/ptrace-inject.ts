/**
 * The native injector (native-host/moe_inject): ptrace driven from Python's ctypes, run by the
 * job's own interpreter binary, so a user's machine needs no debugger and no compiler.
 *
 * It is started as a process of its own, in its own process group, and is never killed by us:
 * while it has a thread of the job executing an injected call, only it can put that thread back,
 * so a host that gives up waiting (or exits) lets it finish on its own. It bounds its own time:
 * about a second to find a safe point, a few more for the call itself.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';

/** Steps of the injector where a test can make it fail or pause (see moe_inject/injector.py). */
export type InjectorStep = 'seized' | 'chosen' | 'saved' | 'mapped' | 'written' | 'called';

export interface PtraceRequest {
  pid: number;
  /** Python source; __MOE_PAGE_ADDRESS__ and __MOE_PAGE_SIZE__ are replaced by the page it is written to. */
  source: string;
  /** How long to wait for a thread to complete a system call (the safe point). */
  timeoutS?: number;
  failAt?: InjectorStep;
  pauseAt?: InjectorStep;
  pauseS?: number;
}

export interface PtraceSuccess {
  ok: true;
  tid: number;
  thread: 'main' | 'other';
  syscall: string;
  image: string;
  page: number;
  timings_ms: Record<string, number>;
  extended_state_bytes: number;
  extended_state_changed?: boolean;
  /** False when the kernel refused to take the vector state back (see warning). */
  extended_state_restored?: boolean;
  warning?: string;
  registers_restored: boolean;
}

export interface PtraceFailure {
  ok: false;
  /** no_such_process, ptrace_denied, already_traced, no_python_symbols, no_safe_point, job_stopped,
   *  process_exited, pending_call_refused, restore_failed, unsupported_arch, injector_unavailable,
   *  inject_failed, bad_request, test_failure */
  code: string;
  message: string;
}

export type PtraceResult = PtraceSuccess | PtraceFailure;

/** Python that imports the injector from `root` and runs it with the request's options; nothing
 *  from the user's site-packages (-I -S). The source goes on stdin. */
export function injectorArgs(root: string, request: PtraceRequest): string[] {
  const options = ['--pid', String(request.pid), '--timeout-s', String(request.timeoutS ?? 1)];
  if (request.failAt) options.push('--fail-at', request.failAt);
  if (request.pauseAt) options.push('--pause-at', request.pauseAt, '--pause-s', String(request.pauseS ?? 0));
  return ['-I', '-S', '-c', `import sys; sys.path.insert(0, ${JSON.stringify(root)}); from moe_inject.__main__ import run; run()`, ...options];
}

/**
 * Interpreters that can run the injector, best first: the job's own (same build, same ctypes),
 * then the one the host was told to use. The job's binary is used only if it is still the file
 * the job runs (an upgrade may have replaced it).
 */
export function injectorInterpreters(pid: number, exe: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  try {
    const running = fs.statSync(`/proc/${pid}/exe`);
    const onDisk = fs.statSync(exe);
    if (running.ino === onDisk.ino && running.dev === onDisk.dev) out.push(exe);
  } catch {
    // exited, or its binary is gone: fall through to the others
  }
  for (const candidate of [env.MOE_DEVTOOLS_PYTHON, 'python3']) if (candidate && !out.includes(candidate)) out.push(candidate);
  return out;
}

/** Runs the injector once; resolves with its result (never rejects). */
export function runPtraceInjector(interpreter: string, root: string, request: PtraceRequest, waitMs: number): Promise<PtraceResult> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (result: PtraceResult) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        resolve(result);
      }
    };
    const child = spawn(interpreter, injectorArgs(root, request), { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      // The result is one line: take it as soon as it is whole, not when the interpreter has exited.
      if (out.includes('\n')) finish(parseInjectorOutput(out, err, interpreter));
    });
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      finish({ ok: false, code: 'injector_unavailable', message: e.code === 'ENOENT' ? `${interpreter} was not found` : e.message });
    });
    child.on('close', () => finish(parseInjectorOutput(out, err, interpreter)));
    child.stdin.on('error', () => {}); // it exited before reading: 'close' reports why
    child.stdin.end(request.source);
    // Never killed: see the module comment. It is unref'd so the host can exit without it.
    const timer = setTimeout(() => {
      finish({ ok: false, code: 'inject_failed', message: `the injector did not answer within ${Math.round(waitMs / 1000)} s; it finishes on its own` });
      child.unref();
    }, waitMs);
  });
}

export function parseInjectorOutput(stdout: string, stderr: string, interpreter: string): PtraceResult {
  const line = stdout.trim().split('\n').filter(Boolean).at(-1);
  if (line) {
    try {
      const value = JSON.parse(line) as PtraceResult;
      if (typeof value === 'object' && value !== null && typeof value.ok === 'boolean') return value;
    } catch {
      // fall through: not the injector's JSON
    }
  }
  const why = stderr.trim().split('\n').filter(Boolean).at(-1) ?? 'no output';
  return { ok: false, code: 'injector_unavailable', message: `${interpreter} could not run the injector: ${why}` };
}
