/** Attach failures, each with a code the panel understands and a hint the user can act on. */
import type { AttachAttempt, ErrorCode } from '../../src/protocol/panel';

export interface AttachErrorOptions {
  /** No other attach method can help (permission refused, the job exited, no safe point). */
  final?: boolean;
  /** What each attach method tried said, in order. */
  attempts?: AttachAttempt[];
}

export class AttachError extends Error {
  readonly final: boolean;
  readonly attempts?: AttachAttempt[];

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
    opts: AttachErrorOptions = {},
  ) {
    super(message);
    this.name = 'AttachError';
    this.final = opts.final ?? false;
    this.attempts = opts.attempts;
  }
}

export const HINTS = {
  ptrace:
    'Attaching needs ptrace rights. Allow it for this session with `sudo sysctl kernel.yama.ptrace_scope=0`, ' +
    'or start the job under the probe (`python -m moe_probe run script.py`, or `moe_probe.attach(model)` in it) so no ptrace is needed. ' +
    'In a container, run it with `--cap-add=SYS_PTRACE`.',
  gdb: 'Install gdb (Debian/Ubuntu: `sudo apt-get install gdb`), or start the job with `python -m moe_probe run script.py` so no injection is needed.',
  lldb: "lldb comes with Apple's Command Line Tools: install them with `xcode-select --install`, " +
    'or start the job with `python -m moe_probe run script.py` so no injection is needed.',
  macos_attach:
    'macOS lets a debugger attach only to a process that may be debugged. A Python signed with the hardened runtime ' +
    "(for example the python.org installer's, or Apple's /usr/bin/python3) refuses while System Integrity Protection is on; " +
    'a conda, Homebrew or pyenv Python does not. If macOS asks to allow debugging and nobody can answer, allow it for your user once ' +
    'with `sudo DevToolsSecurity -enable`. Or start the job with `python -m moe_probe run script.py` ' +
    '(or call `moe_probe.attach(model)` in it), which needs no debugger.',
  no_safe_point:
    'The injector queues the probe only where a thread of the job has just completed a system call, so that nothing it was ' +
    'doing is interrupted. Attach again once the job is running passes (or in a moment when it is between steps), or start it ' +
    'with `python -m moe_probe run script.py`, which needs no injection.',
  traced:
    'Detach the debugger (or profiler) that is tracing the job, then attach again.',
  blocked:
    "The job's main thread has not run any Python since the probe was queued: it may be blocked in a long C call, " +
    'waiting on input, or paused. Nothing is left behind in the job (the queued bootstrap does nothing once this attach ' +
    'has given up); attach again when the job is back in Python, or start it with `python -m moe_probe run script.py`.',
  no_moe:
    'The probe recognises transformers MoE architectures (Mixtral, Qwen-MoE, OLMoE, ...) and routers with a weight shaped ' +
    '[num_experts, hidden] that return top-k ids. If your model is MoE, please report its router class.',
} as const;
