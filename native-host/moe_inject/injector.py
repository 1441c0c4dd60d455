"""Queue Python source on a running interpreter's main thread, with ptrace and nothing else.

The one thing done inside the job is a call of
`Py_AddPendingCall(PyRun_SimpleString, source)`, which asks the interpreter to run
`source` on its main thread at its next safe point (between bytecodes, holding the
GIL), exactly as a signal handler's Python code is run. How that call is made
without harming the job:

1. Threads are seized with PTRACE_SEIZE (no SIGSTOP is sent) and stopped with
   PTRACE_INTERRUPT only when they are running, or blocked in a system call the
   kernel restarts transparently (sleep, futex, read, poll, select, wait). A
   thread blocked in anything else (epoll_wait, sigtimedwait, socket calls with
   timeouts) could see EINTR, so it is left alone.
2. Each interrupted thread is resumed until its next system call completes. The
   first *syscall-exit stop* whose call really finished (no ERESTART* or EINTR
   result, so nothing for the kernel to restart and no saved signal mask to put
   back) is where the call is made: there, by the ABI, no vector register holds a
   live value and no lock is half-taken by the interrupted code.
   If no thread gets there within `timeout_s` (a second), the injector stops and
   says so instead of interrupting at an arbitrary instruction.
3. On that thread: its registers, signal mask and extended (vector) state are
   saved, signals other than synchronous faults are blocked, one page is mapped
   with an injected mmap system call (never malloc: the job may hold its lock),
   the source is written there through /proc/PID/mem, and the function is called
   on the thread's stack below the red zone, returning to address 0. The fault at
   0 is the injector's signal that the call returned; it is never delivered.
4. Every register is put back exactly and checked, the extended state is
   compared and written back (at the size the kernel reported) only if the call
   changed it, the signal mask is restored, and the thread is detached. The other
   threads are detached as they stop, or by the kernel when the injector exits.

Any failure after step 3 began restores the thread in the same way; a failure
before it leaves nothing to restore.
"""

import os
import time

# _signal, not signal: the public module imports enum, which costs milliseconds of every attach.
import _signal

from . import arch as arches
from . import elf
from . import tracer
from .tracer import PtraceError

PAGE = 4096
PAGE_ADDRESS_TOKEN = "__MOE_PAGE_ADDRESS__"
PAGE_SIZE_TOKEN = "__MOE_PAGE_SIZE__"
MAX_THREADS = 128
CALL_TIMEOUT_S = 30.0
SYSCALL_TIMEOUT_S = 5.0
SIGBUS, SIGILL, SIGFPE, SIGSYS = 7, 4, 8, 31
# Signals raised by the instruction that caused them: never blocked while the injected
# code runs (the kernel would reset the job's handler for a blocked synchronous fault).
FAULT_SIGNALS = (tracer.SIGSEGV, SIGBUS, SIGILL, SIGFPE, tracer.SIGTRAP, SIGSYS)
ALL_SIGNALS_MASK = (1 << 64) - 1
# Steps where a test can make the injector fail on purpose (fail_at) or pause (pause_at).
STEPS = ("seized", "chosen", "saved", "mapped", "written", "called")


class InjectError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Event:
    """One waitpid result for a traced thread."""

    __slots__ = ("tid", "kind", "signal")

    def __init__(self, tid, kind, signal=0):
        self.tid = tid
        self.kind = kind  # exited | interrupt | group_stop | syscall | signal
        self.signal = signal

    @staticmethod
    def decode(tid, status):
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return Event(tid, "exited")
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if event == tracer.PTRACE_EVENT_STOP:
            return Event(tid, "group_stop" if sig in tracer.STOP_SIGNALS else "interrupt", sig)
        if sig == tracer.SIGTRAP | 0x80:
            return Event(tid, "syscall")
        return Event(tid, "signal", sig)


class Injector:
    def __init__(self, pid, source, timeout_s=1.0, fail_at=None, pause_at=None, pause_s=0.0, arch=None, kernel=None):
        self.pid = pid
        self.source = source
        self.timeout_s = timeout_s
        self.fail_at = fail_at
        self.pause_at = pause_at
        self.pause_s = pause_s
        self.arch = arch or arches.for_machine(os.uname().machine)
        # Everything that touches the target goes through `kernel`: the tracer module, or a
        # simulated thread in the unit tests (which is how aarch64 is tested on x86 machines).
        self.kernel = kernel or tracer
        self.traced = {}  # tid -> "running" | "stopped"
        self.last_stop = {}  # tid -> kind of the stop it is in (Event.kind)
        self.next_stop = {}  # tid -> "entry" | "exit": counted where PTRACE_GET_SYSCALL_INFO is missing
        self.skipped = {}  # tid -> why it was not interrupted
        self.memory = None
        self.timings = {}
        self.report = {}
        self._t0 = time.perf_counter()

    # -- public -------------------------------------------------------------------
    def run(self):
        if self.arch is None:
            raise InjectError("unsupported_arch", "The native injector supports x86-64 and aarch64; this machine is %s." % os.uname().machine)
        if not self.kernel.process_alive(self.pid):
            raise InjectError("no_such_process", "Process %d does not exist (it may have exited)." % self.pid)
        tracer_pid = self.kernel.status_fields(self.pid).get("TracerPid", "0")
        if tracer_pid != "0":
            raise InjectError("already_traced", "Process %d is already being traced by process %s (a debugger?); "
                              "only one tracer can attach at a time." % (self.pid, tracer_pid))
        try:
            api = self.kernel.find_python_api(self.pid, machine=self.arch.elf_machine)
        except elf.ElfError as exc:
            raise InjectError("no_python_symbols", str(exc))
        self.report["image"] = api.image
        self._mark("symbols")
        # SIGCHLD is waited for (wait_any); the others must not end this process while a thread
        # of the job runs injected code, which only this process can put back.
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGCHLD, _signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP})
        try:
            self.memory = self.kernel.Memory(self.pid)
            tid, regs = self._find_safe_point()
            self._inject(tid, regs, api.addresses)
        finally:
            self._release_all()
            if self.memory:
                self.memory.close()
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        self._mark("done")
        self.report["timings_ms"] = self.timings
        return self.report

    # -- steps --------------------------------------------------------------------
    def _mark(self, name):
        self.timings[name] = round((time.perf_counter() - self._t0) * 1000, 2)

    def _checkpoint(self, step):
        if self.pause_at == step:
            time.sleep(self.pause_s)
        if self.fail_at == step:
            raise InjectError("test_failure", "failed on purpose after step '%s' (test hook)" % step)

    def _candidates(self):
        """Threads that may be interrupted harmlessly, the main thread first."""
        arch = self.arch
        tids = self.kernel.thread_ids(self.pid)
        tids.sort(key=lambda t: t != self.pid)
        chosen = []
        for tid in tids:
            try:
                state = self.kernel.thread_state(self.pid, tid)
                number = self.kernel.thread_syscall(self.pid, tid)
                status = self.kernel.status_fields(self.pid, tid)
            except OSError:
                continue  # gone, or not readable
            segv = tracer.signal_bit(tracer.SIGSEGV)
            if int(status.get("SigBlk", "0"), 16) & segv or int(status.get("SigIgn", "0"), 16) & segv:
                self.skipped[tid] = "blocks or ignores SIGSEGV"
            elif state not in "RS":
                self.skipped[tid] = "in state %s" % state
            elif number is not None and number != -1 and number not in arch.restartable_numbers:
                self.skipped[tid] = "blocked in %s" % arch.syscall_names.get(number, "system call %d" % number)
            else:
                chosen.append(tid)
            if len(chosen) >= MAX_THREADS:
                break
        return chosen

    def _find_safe_point(self):
        candidates = self._candidates()
        if not candidates:
            raise InjectError("no_safe_point", "No thread of process %d can be stopped without disturbing it (%s)." % (
                self.pid, self._describe_skipped()))
        for tid in candidates:
            try:
                self.kernel.seize(tid)
            except PtraceError as exc:
                if exc.errno == 1:  # EPERM
                    raise InjectError("ptrace_denied", "The system refused to let the injector trace process %d "
                                      "(ptrace: operation not permitted)." % self.pid)
                continue  # ESRCH: the thread ended
            self.traced[tid] = "running"
            try:
                self.kernel.interrupt(tid)
            except PtraceError:
                self.traced.pop(tid, None)
        if not self.traced:
            raise InjectError("process_exited", "Process %d exited while attaching." % self.pid)
        self._mark("seized")
        self._checkpoint("seized")
        deadline = time.monotonic() + self.timeout_s
        while True:
            event = self._wait(deadline)
            if event is None:
                raise InjectError("no_safe_point", self._no_safe_point_message())
            tid = event.tid
            if event.kind == "exited":
                self._forget(tid)
                if not self._process_alive():
                    raise InjectError("process_exited", "Process %d exited while attaching." % self.pid)
            elif event.kind == "group_stop":
                raise InjectError("job_stopped", "Process %d is stopped (SIGSTOP or a terminal stop); continue it "
                                  "(kill -CONT %d) and attach again." % (self.pid, self.pid))
            elif event.kind == "interrupt":
                self.next_stop[tid] = "entry"
                self._resume_syscall(tid)
            elif event.kind == "signal":
                self._resume_syscall(tid, event.signal)  # the job's own signal: deliver it
            elif event.kind == "syscall":
                kind = self._syscall_stop_kind(tid)
                if kind == "exit":
                    regs = self._usable_exit(tid)
                    if regs is not None:
                        self._mark("safe_point")
                        return tid, regs
                self._resume_syscall(tid)

    def _usable_exit(self, tid):
        """The thread's registers if this syscall-exit stop is a safe place to call a function."""
        arch = self.arch
        regs = arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS))
        result = arch.result(regs)
        if result < 0 and -result in arches.RESTART_ERRNOS:
            return None  # interrupted, not completed: the kernel may restart it or restore a signal mask
        number = arch.syscall_number(regs)
        if number in arch.unusable_numbers:
            return None
        insn = arch.syscall_insn
        try:
            if self.memory.read(arch.pc(regs) - len(insn), len(insn)) != insn:
                return None  # not entered through the 64-bit syscall instruction (int 0x80, vsyscall)
        except OSError:
            return None
        self.report["syscall"] = arch.syscall_names.get(number, str(number))
        self.report["thread"] = "main" if tid == self.pid else "other"
        self.report["tid"] = tid
        self.report["left_alone"] = {str(t): why for t, why in self.skipped.items()}
        return regs

    def _inject(self, tid, regs, addresses):
        arch = self.arch
        self._checkpoint("chosen")
        saved_mask = self.kernel.get_sigmask(tid)
        try:
            extended = self.kernel.get_regset(tid, arch.extended_regset)
        except PtraceError:
            extended = None  # the kernel has no such register set here: nothing to compare
        self.report["extended_state_bytes"] = len(extended) if extended is not None else 0
        unblocked = 0
        for sig in FAULT_SIGNALS:
            unblocked |= tracer.signal_bit(sig)
        self.kernel.set_sigmask(tid, ALL_SIGNALS_MASK & ~unblocked)
        saved = regs
        try:
            if arch.syscall_stop_clobbers:
                saved = self._true_registers(tid, regs)
            self._checkpoint("saved")
            template = self.source.encode("utf-8")
            size = (len(template) + 64 + PAGE) // PAGE * PAGE
            page = self._remote_syscall(tid, saved, "mmap", [0, size, arches.PROT_READ | arches.PROT_WRITE,
                                                             arches.MAP_PRIVATE | arches.MAP_ANONYMOUS, -1, 0])
            if page < 0 or page % PAGE:
                raise InjectError("inject_failed", "mmap in process %d failed: %s" % (self.pid, os.strerror(-page) if page < 0 else hex(page)))
            self._checkpoint("mapped")
            try:
                source = self.source.replace(PAGE_ADDRESS_TOKEN, str(page)).replace(PAGE_SIZE_TOKEN, str(size))
                self.memory.write(page, source.encode("utf-8") + b"\0")
                self._checkpoint("written")
                result = self._remote_call(tid, saved, addresses["Py_AddPendingCall"],
                                           [addresses["PyRun_SimpleString"], page])
            except BaseException:
                self._unmap_quietly(tid, saved, page, size)
                raise
            self.report["page"] = page
            self.report["pending_call"] = result
            if result != 0:
                self._unmap_quietly(tid, saved, page, size)
                raise InjectError("pending_call_refused", "Python refused the pending call (Py_AddPendingCall returned %d: "
                                  "its queue is full)." % result)
            self._mark("called")
            self._checkpoint("called")
        finally:
            self._restore(tid, saved, saved_mask, extended)

    def _true_registers(self, tid, regs):
        """arm64: the registers as the thread really has them (see Arch.syscall_stop_clobbers)."""
        arch = self.arch
        self.kernel.set_regset(tid, tracer.NT_PRSTATUS, arch.pack(arch.with_values(regs, **{arch.pc_name: arches.RETURN_TRAP})))
        self._resume(tid)
        event = self._wait_for(tid, time.monotonic() + SYSCALL_TIMEOUT_S)
        if event.kind != "signal" or event.signal != tracer.SIGSEGV:
            raise InjectError("inject_failed", "thread %d did not stop at the expected fault (got %s %d)" % (tid, event.kind, event.signal))
        true = arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS))
        clobbered = {name: arch.get(true, name) for name in arch.syscall_stop_clobbers}
        return arch.with_values(regs, **clobbered)

    def _remote_syscall(self, tid, saved, name, args):
        arch = self.arch
        number = arch.syscalls[name]
        self.kernel.set_regset(tid, tracer.NT_PRSTATUS, arch.pack(arch.syscall_regs(saved, number, args)))
        deadline = time.monotonic() + SYSCALL_TIMEOUT_S
        for expected in ("entry", "exit"):
            self._resume_syscall(tid)
            event = self._wait_for(tid, deadline)
            if event.kind != "syscall":
                raise InjectError("inject_failed", "thread %d stopped with %s %d during the injected %s" % (tid, event.kind, event.signal, name))
            self.next_stop[tid] = "exit" if expected == "entry" else "entry"
            if expected == "entry":
                seen = arch.syscall_number(arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS)))
                if seen != number:
                    raise InjectError("inject_failed", "thread %d entered system call %d instead of %s" % (tid, seen, name))
        return arch.result(arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS)))

    def _unmap_quietly(self, tid, saved, page, size):
        try:
            self._remote_syscall(tid, saved, "munmap", [page, size])
        except (InjectError, PtraceError, OSError):
            pass  # one page left mapped: harmless; restoring the thread matters more

    def _remote_call(self, tid, saved, function, args):
        arch = self.arch
        regs, writes = arch.call_regs(saved, function, args)
        for address, data in writes:
            self.memory.write(address, data)
        self.kernel.set_regset(tid, tracer.NT_PRSTATUS, arch.pack(regs))
        self._resume(tid)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            event = self._wait_for(tid, deadline, inside_call=True)
            if event.kind == "signal":
                now = arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS))
                if event.signal == tracer.SIGSEGV and arch.stopped_in_call_return(now):
                    return arch.result(now)
                raise InjectError("inject_failed", "the injected call stopped with signal %d at %#x" % (event.signal, arch.pc(now)))
            if event.kind == "group_stop":
                self.kernel.listen(tid)  # stay stopped with the job; wake with it on SIGCONT
                deadline = float("inf")
            elif event.kind in ("interrupt", "syscall"):
                self._resume(tid)  # woken by SIGCONT after a group-stop; carry on with the call

    def _restore(self, tid, saved, saved_mask, extended):
        """Put the thread back exactly as it was, and detach it."""
        arch = self.arch
        if tid not in self.traced:
            return  # gone with the process
        try:
            if self.traced[tid] == "running":
                # Only after a step failed while the thread ran injected code (a call that
                # never returned): stop it there, since registers are written only at a stop.
                self.kernel.interrupt(tid)
                self._wait_for(tid, time.monotonic() + SYSCALL_TIMEOUT_S)
            # Registers and signal mask first: whatever happens with the vector state after,
            # the thread must never run on with our registers or with its signals blocked.
            self.kernel.set_regset(tid, tracer.NT_PRSTATUS, arch.pack(saved))
            self.kernel.set_sigmask(tid, saved_mask)
            if extended is not None:
                now = self.kernel.get_regset(tid, arch.extended_regset)
                changed = now != extended
                self.report["extended_state_changed"] = changed
                if changed:
                    # At a syscall exit no vector register holds a live value (ABI), so a kernel
                    # that refuses the write costs nothing the job relies on: say so, go on.
                    try:
                        self.kernel.set_regset(tid, arch.extended_regset, extended)
                        written = self.kernel.get_regset(tid, arch.extended_regset) == extended
                    except OSError as exc:
                        if exc.errno == 3:  # ESRCH: the thread is gone, which is not this
                            raise
                        written = False
                    self.report["extended_state_restored"] = written
                    if not written:
                        self.report["warning"] = ("the %s of thread %d could not be written back; at a system call "
                                                  "exit it holds no value the job relies on" % (arch.extended_label, tid))
            check = arch.unpack(self.kernel.get_regset(tid, tracer.NT_PRSTATUS))
            # At a syscall stop arm64 shows x7 as the stop's direction and puts back, on resume,
            # the value it had when that system call was entered: the one written before it.
            hidden = arch.syscall_stop_clobbers if self.last_stop.get(tid) == "syscall" else ()
            names = [name for name, a, b in zip(arch.register_names, check, saved) if a != b and name not in hidden]
            if names:
                raise InjectError("restore_failed", "registers %s of thread %d read back differently after restoring" % (", ".join(names), tid))
            self.report["registers_restored"] = True
        except PtraceError as exc:
            if exc.errno == 3 or not self._process_alive():  # ESRCH
                self._forget(tid)
                raise InjectError("process_exited", "Process %d exited while attaching." % self.pid)
            raise
        finally:
            if tid in self.traced:
                try:
                    self.kernel.detach(tid)
                except PtraceError:
                    pass
                self._forget(tid)

    # -- waiting and releasing ------------------------------------------------------
    def _wait(self, deadline):
        """The next event of any traced thread, or None at the deadline."""
        found = self.kernel.wait_any(deadline)
        if found is None:
            return None
        event = Event.decode(*found)
        if event.kind != "exited":
            self.traced[event.tid] = "stopped"
            self.last_stop[event.tid] = event.kind
        return event

    def _wait_for(self, tid, deadline, inside_call=False):
        """The next event of tid; other threads that stop meanwhile are detached at once."""
        while True:
            event = self._wait(deadline)
            if event is None:
                if inside_call:
                    raise InjectError("inject_failed", "the injected call in thread %d did not return within %d s" % (tid, CALL_TIMEOUT_S))
                raise InjectError("inject_failed", "thread %d did not stop within %d s" % (tid, SYSCALL_TIMEOUT_S))
            if event.tid == tid:
                if event.kind == "exited":
                    self._forget(tid)
                    raise InjectError("process_exited", "Process %d exited while attaching." % self.pid)
                return event
            self._release(event)

    def _release(self, event):
        """Detach another thread that stopped, delivering the signal it stopped for, if any."""
        if event.kind == "exited":
            self._forget(event.tid)
            return
        try:
            self.kernel.detach(event.tid, event.signal if event.kind == "signal" else 0)
        except PtraceError:
            pass
        self._forget(event.tid)

    def _release_all(self):
        """Detach every thread still traced. Running ones cannot be detached without stopping
        them again; the kernel detaches those when this process exits, without stopping them."""
        while True:
            found = self.kernel.poll_any()
            if found is None:
                break
            self._release(Event.decode(*found))
        for tid, state in list(self.traced.items()):
            if state == "stopped":
                try:
                    self.kernel.detach(tid)
                except PtraceError:
                    pass
                self._forget(tid)

    def _resume_syscall(self, tid, sig=0):
        self.kernel.resume_syscall(tid, sig)
        self.traced[tid] = "running"

    def _resume(self, tid, sig=0):
        self.kernel.resume(tid, sig)
        self.traced[tid] = "running"

    def _syscall_stop_kind(self, tid):
        kind = self.kernel.syscall_stop_kind(tid) or self.next_stop.get(tid, "entry")
        self.next_stop[tid] = "exit" if kind == "entry" else "entry"
        return kind

    def _forget(self, tid):
        self.traced.pop(tid, None)
        self.next_stop.pop(tid, None)
        self.last_stop.pop(tid, None)

    def _process_alive(self):
        return self.kernel.process_alive(self.pid)

    # -- messages -----------------------------------------------------------------
    def _describe_skipped(self):
        if not self.skipped:
            return "no threads"
        parts = []
        for tid, why in sorted(self.skipped.items()):
            parts.append("%s %s" % ("main thread" if tid == self.pid else "thread %d" % tid, why))
            if len(parts) == 4:
                parts.append("...")
                break
        return ", ".join(parts)

    def _no_safe_point_message(self):
        states = []
        for tid in [self.pid] + [t for t in self.traced if t != self.pid][:3]:
            try:
                number = self.kernel.thread_syscall(self.pid, tid)
            except OSError:
                continue
            where = "running" if number is None else (
                "blocked in " + self.arch.syscall_names.get(number, "system call %d" % number) if number >= 0 else "busy")
            states.append("%s %s" % ("main thread" if tid == self.pid else "thread %d" % tid, where))
        return ("No thread of process %d completed a system call within %.1f s (%s), so there was no safe point to "
                "queue the probe; nothing was changed in the job." % (self.pid, self.timeout_s, ", ".join(states) or "no threads"))
