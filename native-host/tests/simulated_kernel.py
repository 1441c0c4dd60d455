"""A simulated traced process for the injector's unit tests, on x86-64 and aarch64 alike.

It stands in for moe_inject.tracer (the seam the Injector reaches the kernel through) and
models what the injector relies on, as the kernel documents it:

* stops: PTRACE_INTERRUPT's event stop, syscall-entry and syscall-exit stops
  (PTRACE_SYSCALL), signal-delivery stops; resuming continues to the next one;
* executing from the program counter: a system call instruction performs mmap/munmap
  (and x86-64 copies rax to orig_rax at entry); a call of the fake Py_AddPendingCall
  clobbers the caller-saved registers and the vector state, returns to the return
  address; fetching from address 0 raises SIGSEGV;
* arm64's syscall-stop rule: x7 reads as 0 (entry) or 1 (exit) at a syscall stop,
  writes to it there are discarded, and the real value comes back on resume.

Every register write and the final state of each thread are kept for the assertions.
"""

import struct

from moe_inject import arch as arches
from moe_inject.elf import PythonApi

SIGTRAP, SIGSEGV = 5, 11
PTRACE_EVENT_STOP = 128
NT_PRSTATUS = 1

SYSCALL_SITE = 0x401000  # where the job's system call instruction sits
JOB_PC = 0x402000  # somewhere in the job's own code
ADD_PENDING = 0x500000  # Py_AddPendingCall
RUN_STRING = 0x500100  # PyRun_SimpleString
MMAP_AT = 0x7F0000000000
STACK_TOP = 0x7FFF00000000


class SimError(Exception):
    """The injector did something the kernel would not allow (or a test did not expect)."""


def status_stopped(sig, event=0):
    return (event << 16) | (sig << 8) | 0x7F


class SimThread:
    def __init__(self, arch, tid, script, state="S", syscall=None):
        self.arch = arch
        self.tid = tid
        # Distinct values in every register, so any one left changed is seen.
        self.regs = [0x1000 + 0x11 * i for i in range(len(arch.register_names))]
        self.set("pc" if arch.name == "aarch64" else "rip", JOB_PC)
        self.set(arch.sp_name, STACK_TOP - 0x1000 + 8)
        if arch.name == "aarch64":
            self.set("x7", 0x7777)  # the value the kernel hides at syscall stops
        self.script = list(script)  # (syscall name, result) the job's code makes, in order
        self.state = state
        self.syscall = syscall  # what /proc says it is blocked in (a number), None: running
        self.sigmask = 0x4000  # SIGCHLD blocked by the job
        self.ext = bytes(range(256)) * 4
        self.traced = False
        self.stop = None  # None (running) | "interrupt" | "entry" | "exit" | "signal"
        self.hidden_x7 = None  # arm64: the real x7 while a syscall stop shows the direction
        self.detached_with = None
        self.calls = []
        self.exited = False

    def get(self, name):
        return self.regs[self.arch.index[name]]

    def set(self, name, value):
        self.regs[self.arch.index[name]] = value & 0xFFFFFFFFFFFFFFFF


class SimKernel:
    def __init__(self, arch, threads, pid=None, deny_seize=False, pending_result=0, clobber_ext=True):
        self.arch = arch
        self.threads = {t.tid: t for t in threads}
        self.pid = pid or threads[0].tid
        self.events = []
        self.memory = {}
        self.deny_seize = deny_seize
        self.pending_result = pending_result
        self.clobber_ext = clobber_ext
        self.regset_writes = []
        self.mapped = {}
        self.unmapped = []
        self._write_code(SYSCALL_SITE, arch.syscall_insn)

    # -- memory ---------------------------------------------------------------------
    def _write_code(self, address, data):
        for i, b in enumerate(data):
            self.memory[address + i] = b

    def read(self, address, size):
        return bytes(self.memory.get(address + i, 0) for i in range(size))

    def Memory(self, pid):  # noqa: N802 (the tracer module's class name)
        kernel = self

        class _Memory:
            def read(self, address, size):
                return kernel.read(address, size)

            def write(self, address, data):
                kernel._write_code(address, data)

            def close(self):
                pass

        return _Memory()

    # -- /proc --------------------------------------------------------------------------
    def process_alive(self, pid):
        return not all(t.exited for t in self.threads.values())

    def status_fields(self, pid, tid=None):
        if tid is None:
            return {"TracerPid": "0"}
        t = self.threads[tid]
        return {"SigBlk": "%016x" % t.sigmask, "SigIgn": "0000000000000000"}

    def thread_ids(self, pid):
        return sorted(self.threads)

    def thread_state(self, pid, tid):
        return self.threads[tid].state

    def thread_syscall(self, pid, tid):
        return self.threads[tid].syscall

    def find_python_api(self, pid, machine=None):
        return PythonApi("/usr/lib/libpython3.11.so.1.0", {"Py_AddPendingCall": ADD_PENDING, "PyRun_SimpleString": RUN_STRING})

    # -- ptrace ---------------------------------------------------------------------------
    def _thread(self, tid, stopped=True):
        t = self.threads.get(tid)
        if t is None or t.exited or not t.traced:
            raise OSError(3, "No such process")
        if stopped and t.stop is None:
            raise OSError(3, "not stopped")
        return t

    def seize(self, tid, options=0):
        if self.deny_seize:
            from moe_inject.tracer import PtraceError
            raise PtraceError(1, "Operation not permitted")
        self.threads[tid].traced = True

    def interrupt(self, tid):
        t = self._thread(tid, stopped=False)
        if t.stop is None:
            t.stop = "interrupt"
            self.events.append((tid, status_stopped(SIGTRAP, PTRACE_EVENT_STOP)))

    def get_regset(self, tid, note):
        t = self._thread(tid)
        if note == NT_PRSTATUS:
            regs = list(t.regs)
            if t.hidden_x7 is not None:  # arm64 syscall stop: x7 shows the direction
                regs[self.arch.index["x7"]] = 0 if t.stop == "entry" else 1
            return self.arch.pack(regs)
        if note == self.arch.extended_regset:
            return t.ext
        raise OSError(22, "Invalid argument")

    def set_regset(self, tid, note, raw):
        t = self._thread(tid)
        if note == NT_PRSTATUS:
            regs = self.arch.unpack(raw)
            self.regset_writes.append((tid, t.stop, list(regs)))
            if t.hidden_x7 is not None:
                regs[self.arch.index["x7"]] = t.regs[self.arch.index["x7"]]  # discarded at a syscall stop
            t.regs = regs
        elif note == self.arch.extended_regset:
            if len(raw) != len(t.ext):
                raise OSError(14, "Bad address")  # the kernel wants exactly its own size
            t.ext = bytes(raw)
        else:
            raise OSError(22, "Invalid argument")

    def get_sigmask(self, tid):
        return self._thread(tid).sigmask

    def set_sigmask(self, tid, mask):
        self._thread(tid).sigmask = mask

    def syscall_stop_kind(self, tid):
        t = self._thread(tid)
        return t.stop if t.stop in ("entry", "exit") else None

    def detach(self, tid, signal=0):
        t = self._thread(tid)
        self._leave_stop(t)
        t.traced = False
        t.stop = None
        t.detached_with = signal

    def listen(self, tid):
        pass

    def resume_syscall(self, tid, signal=0):
        self._run(self._thread(tid), trace_syscalls=True, signal=signal)

    def resume(self, tid, signal=0):
        self._run(self._thread(tid), trace_syscalls=False, signal=signal)

    # -- waiting -----------------------------------------------------------------------------
    def wait_any(self, deadline):
        return self.events.pop(0) if self.events else None

    def poll_any(self):
        return self.events.pop(0) if self.events else None

    # -- execution ---------------------------------------------------------------------------
    def _leave_stop(self, t):
        if t.hidden_x7 is not None:
            t.set("x7", t.hidden_x7)
            t.hidden_x7 = None

    def _stop(self, t, kind, status):
        t.stop = kind
        if kind in ("entry", "exit") and self.arch.name == "aarch64":
            t.hidden_x7 = t.get("x7")
        self.events.append((t.tid, status))

    def _run(self, t, trace_syscalls, signal):
        arch = self.arch
        previous = t.stop
        self._leave_stop(t)
        t.stop = None
        if signal:
            t.calls.append(("signal delivered", signal))
        if previous == "entry":
            self._finish_syscall(t, trace_syscalls)
            return
        self._execute(t, trace_syscalls)

    def _execute(self, t, trace_syscalls):
        arch = self.arch
        pc = arch.pc(t.regs)
        if pc == 0:
            if t.sigmask & (1 << (SIGSEGV - 1)):
                raise SimError("SIGSEGV raised while blocked: the kernel would reset the job's handler")
            self._stop(t, "signal", status_stopped(SIGSEGV))
            return
        if self.read(pc, len(arch.syscall_insn)) == arch.syscall_insn:
            number = arches.to_signed(t.get(arch.syscall_nr_name))
            if arch.name == "x86_64":
                t.set("orig_rax", number)
            t.set(arch.pc_name, pc + len(arch.syscall_insn))
            if trace_syscalls:
                self._stop(t, "entry", status_stopped(SIGTRAP | 0x80))
            else:
                self._finish_syscall(t, trace_syscalls)
            return
        if pc == ADD_PENDING:
            self._call_add_pending(t, trace_syscalls)
            return
        # The job's own code: it makes its next system call.
        if not t.script:
            return  # keeps running, never stopping again
        name, result = t.script.pop(0)
        t.pending_result = result
        t.set(arch.syscall_nr_name, arch.syscalls[name])
        t.set(arch.pc_name, SYSCALL_SITE)
        self._execute(t, trace_syscalls)

    def _finish_syscall(self, t, trace_syscalls):
        arch = self.arch
        number = arches.to_signed(t.get("orig_rax") if arch.name == "x86_64" else t.get("x8"))
        a = [t.get(name) for name in arch.syscall_args]
        if number == arch.syscalls["mmap"]:
            address = MMAP_AT + 0x10000 * len(self.mapped)
            self.mapped[address] = a[1]
            result = address
            t.calls.append(("mmap", a[1], a[2], a[3]))
        elif number == arch.syscalls["munmap"]:
            self.unmapped.append((a[0], a[1]))
            result = 0
        else:
            result = getattr(t, "pending_result", 0)
        t.set(arch.result_name, result)
        if trace_syscalls:
            self._stop(t, "exit", status_stopped(SIGTRAP | 0x80))
        else:
            self._execute(t, trace_syscalls)

    def _call_add_pending(self, t, trace_syscalls):
        arch = self.arch
        args = [t.get(name) for name in arch.call_args[:2]]
        sp = arch.sp(t.regs)
        if arch.name == "x86_64":
            if (sp + 8) % 16:
                raise SimError("misaligned stack at function entry: rsp=%#x" % sp)
            ret = struct.unpack("<Q", self.read(sp, 8))[0]
        else:
            if sp % 16:
                raise SimError("misaligned stack at function entry: sp=%#x" % sp)
            ret = t.get("x30")
        t.calls.append(("Py_AddPendingCall", args[0], args[1], self.read(args[1], 200)))
        # Clobber what the ABI lets a called function clobber.
        clobbered = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11") if arch.name == "x86_64" \
            else tuple("x%d" % i for i in range(19))
        for name in clobbered:
            t.set(name, 0xDEAD0000 + arch.index[name])
        if self.clobber_ext:
            t.ext = bytes(len(t.ext))
        t.set(arch.result_name, self.pending_result)
        if arch.name == "x86_64":
            t.set("rsp", sp + 8)
        t.set(arch.pc_name, ret)
        self._execute(t, trace_syscalls)
