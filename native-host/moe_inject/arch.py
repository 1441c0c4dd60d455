"""What the injector needs to know about each CPU architecture, as pure functions.

Registers are handled as the kernel's NT_PRSTATUS register set (`struct
user_regs_struct` on x86-64, `struct user_pt_regs` on aarch64): a list of
unsigned 64-bit words, read and written whole with PTRACE_GETREGSET /
PTRACE_SETREGSET. Nothing here touches a process, so all of it is unit-tested
on any machine, aarch64 included (see native-host/tests/test_inject_arch.py).

Two ways the injector makes the stopped thread do something, both starting
from a *syscall-exit stop* (the thread has just executed a system call
instruction, which completed):

* `syscall_regs`: point the program counter back at that same system call
  instruction with a new number and arguments; the thread executes exactly
  one system call (mmap, munmap) and stops again at its exit.
* `call_regs`: call a C function with up to six integer arguments, on the
  thread's own stack below the red zone, returning to an address that faults
  (`RETURN_TRAP`), so the injector regains control at the SIGSEGV stop and
  reads the return value. The signal is never delivered to the job.
"""

import struct

# The function called by `call_regs` returns here; nothing is ever mapped at page 0
# (vm.mmap_min_addr), so the return faults and the tracer sees the stop.
RETURN_TRAP = 0

# Kernel-internal "restart me" error codes, and EINTR: a syscall-exit stop that
# carries one of these is not a completed call (the kernel may still restart it,
# or restore a saved signal mask on the way out), so the injector never uses it.
EINTR = 4
RESTART_ERRNOS = frozenset((EINTR, 512, 513, 514, 516))  # ERESTARTSYS, NOINTR, NOHAND, RESTART_RESTARTBLOCK

PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20


def to_signed(value):
    """A 64-bit register word as a signed integer (syscall results are negative errnos)."""
    return value - (1 << 64) if value & (1 << 63) else value


def to_word(value):
    return value & 0xFFFFFFFFFFFFFFFF


class Arch:
    """Register layout, system call numbers and calling convention of one architecture."""

    name = ""
    machine = ""  # os.uname().machine
    elf_machine = 0  # e_machine in ELF headers
    register_names = ()
    pc_name = sp_name = result_name = ""
    syscall_insn = b""
    extended_regset = 0  # NT_* of the vector/FP register set saved and compared around a call
    extended_label = ""
    syscalls = {}  # name -> number
    # System calls a thread may be interrupted in (PTRACE_INTERRUPT) without it ever
    # noticing: the kernel restarts them transparently (ERESTART*), or they are not
    # blocking at all. Calls that return EINTR to user space after a ptrace stop
    # (epoll_wait, sigtimedwait, semop, io_getevents, socket calls with timeouts, ...)
    # are deliberately absent: threads blocked in them are left alone.
    restartable_blocking = ()
    # System calls whose exit is no place to call a function: the registers no
    # longer describe the caller (rt_sigreturn, execve) or the thread is leaving.
    unusable_exits = ()
    # The argument registers of the C calling convention and of the system call convention.
    call_args = ()
    syscall_args = ()
    syscall_nr_name = ""
    # Bytes below the stack pointer that leaf code may use without moving it (x86-64: 128).
    red_zone = 0

    def __init__(self):
        self.index = {name: i for i, name in enumerate(self.register_names)}
        self.regset_size = 8 * len(self.register_names)
        self.syscall_names = {nr: name for name, nr in self.syscalls.items()}
        self.restartable_numbers = frozenset(self.syscalls[n] for n in self.restartable_blocking if n in self.syscalls)
        self.unusable_numbers = frozenset(self.syscalls[n] for n in self.unusable_exits if n in self.syscalls)

    # -- registers as lists of words ------------------------------------------------
    def unpack(self, raw):
        if len(raw) < self.regset_size:
            raise ValueError("%s register set is %d bytes, expected %d" % (self.name, len(raw), self.regset_size))
        return list(struct.unpack("<%dQ" % len(self.register_names), raw[:self.regset_size]))

    def pack(self, regs):
        return struct.pack("<%dQ" % len(self.register_names), *[to_word(v) for v in regs])

    def get(self, regs, name):
        return regs[self.index[name]]

    def with_values(self, regs, **values):
        out = list(regs)
        for name, value in values.items():
            out[self.index[name]] = to_word(value)
        return out

    def pc(self, regs):
        return self.get(regs, self.pc_name)

    def sp(self, regs):
        return self.get(regs, self.sp_name)

    def result(self, regs):
        """Return value of a system call or C function, as a signed integer."""
        return to_signed(self.get(regs, self.result_name))

    # -- what the injector makes the thread do -----------------------------------
    def syscall_regs(self, saved, number, args):
        """Registers that re-execute the system call instruction just before the stop's pc."""
        if len(args) > len(self.syscall_args):
            raise ValueError("too many system call arguments")
        values = {self.pc_name: self.pc(saved) - len(self.syscall_insn), self.syscall_nr_name: number}
        for name, value in zip(self.syscall_args, args):
            values[name] = value
        return self.with_values(saved, **values)

    def call_stack_pointer(self, saved):
        """Stack pointer for an injected call: below the red zone and 256 bytes of margin, 16-byte aligned."""
        return (self.sp(saved) - self.red_zone - 256) & ~0xF

    def call_regs(self, saved, function, args):
        """(registers, [(address, bytes) to write first]) that call function(*args) and return to RETURN_TRAP."""
        raise NotImplementedError

    def stopped_in_call_return(self, regs):
        """Whether a SIGSEGV stop is the injected call returning to RETURN_TRAP."""
        return self.pc(regs) == RETURN_TRAP


class X86_64(Arch):
    name = "x86_64"
    machine = "x86_64"
    elf_machine = 62  # EM_X86_64
    # struct user_regs_struct, <sys/user.h>
    register_names = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
                      "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
                      "gs_base", "ds", "es", "fs", "gs")
    pc_name, sp_name, result_name = "rip", "rsp", "rax"
    syscall_insn = b"\x0f\x05"  # syscall
    extended_regset = 0x202  # NT_X86_XSTATE: its size depends on the CPU (AMX tiles add 8 KiB); the kernel says
    extended_label = "XSAVE state"
    syscalls = {
        "read": 0, "write": 1, "poll": 7, "mmap": 9, "munmap": 11, "rt_sigreturn": 15, "pread64": 17,
        "readv": 19, "select": 23, "sched_yield": 24, "nanosleep": 35, "pause": 34, "getpid": 39,
        "execve": 59, "exit": 60, "wait4": 61, "flock": 73, "gettid": 186, "futex": 202,
        "restart_syscall": 219, "clock_gettime": 228, "clock_nanosleep": 230, "exit_group": 231,
        "epoll_wait": 232, "waitid": 247, "pselect6": 270, "ppoll": 271, "epoll_pwait": 281,
        "execveat": 322, "epoll_pwait2": 441,
    }
    restartable_blocking = ("read", "pread64", "readv", "poll", "ppoll", "select", "pselect6", "nanosleep",
                            "clock_nanosleep", "futex", "wait4", "waitid", "pause", "flock", "restart_syscall",
                            "sched_yield")
    unusable_exits = ("rt_sigreturn", "execve", "execveat", "exit", "exit_group")
    call_args = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
    syscall_args = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
    syscall_nr_name = "rax"
    red_zone = 128

    def syscall_number(self, regs):
        """The system call a syscall stop belongs to (orig_rax keeps it while rax holds the result)."""
        return to_signed(self.get(regs, "orig_rax"))

    def call_regs(self, saved, function, args):
        if len(args) > len(self.call_args):
            raise ValueError("too many call arguments")
        # At a function's first instruction the ABI wants rsp + 8 to be 16-byte aligned:
        # the return address sits at rsp, as if pushed by `call`.
        rsp = self.call_stack_pointer(saved) - 8
        values = {"rip": function, "rsp": rsp, "rax": 0}
        for name, value in zip(self.call_args, args):
            values[name] = value
        # orig_rax = -1: the kernel must not treat the call's return value as a syscall to restart.
        values["orig_rax"] = -1
        return self.with_values(saved, **values), [(rsp, struct.pack("<Q", RETURN_TRAP))]


class AArch64(Arch):
    """AAPCS64 and the Linux arm64 syscall ABI. Unit-tested only: never run on an ARM machine yet."""

    name = "aarch64"
    machine = "aarch64"
    elf_machine = 183  # EM_AARCH64
    # struct user_pt_regs, <asm/ptrace.h>
    register_names = tuple("x%d" % i for i in range(31)) + ("sp", "pc", "pstate")
    pc_name, sp_name, result_name = "pc", "sp", "x0"
    syscall_insn = b"\x01\x00\x00\xd4"  # svc #0
    extended_regset = 2  # NT_PRFPREG: the FP/SIMD registers (v0-v31, fpsr, fpcr)
    extended_label = "FP/SIMD state"
    syscalls = {  # the generic table, <asm-generic/unistd.h>
        "epoll_pwait": 22, "flock": 32, "read": 63, "write": 64, "readv": 65, "pread64": 67,
        "pselect6": 72, "ppoll": 73, "exit": 93, "exit_group": 94, "waitid": 95, "futex": 98,
        "nanosleep": 101, "clock_gettime": 113, "clock_nanosleep": 115, "sched_yield": 124,
        "restart_syscall": 128, "rt_sigreturn": 139, "getpid": 172, "gettid": 178, "munmap": 215,
        "execve": 221, "mmap": 222, "wait4": 260, "execveat": 281, "epoll_pwait2": 441,
    }
    restartable_blocking = ("read", "pread64", "readv", "ppoll", "pselect6", "nanosleep", "clock_nanosleep",
                            "futex", "wait4", "waitid", "flock", "restart_syscall", "sched_yield")
    unusable_exits = ("rt_sigreturn", "execve", "execveat", "exit", "exit_group")
    call_args = tuple("x%d" % i for i in range(6))
    syscall_args = tuple("x%d" % i for i in range(6))
    syscall_nr_name = "x8"
    red_zone = 0

    # At every syscall stop the arm64 kernel shows x7 as the stop's direction (0 entry,
    # 1 exit) and puts the thread's real x7 back when it resumes; the real value is
    # visible only at a stop that is not a syscall stop. The injector therefore first
    # resumes the thread with pc = RETURN_TRAP and every other register unchanged: the
    # fault stop shows the true x7, and the thread's state to restore is taken from there.
    syscall_stop_clobbers = ("x7",)

    def syscall_number(self, regs):
        """x8 holds the number during the call and is not changed by it."""
        return to_signed(self.get(regs, "x8"))

    def call_regs(self, saved, function, args):
        if len(args) > len(self.call_args):
            raise ValueError("too many call arguments")
        values = {"pc": function, "sp": self.call_stack_pointer(saved), "x30": RETURN_TRAP}
        for name, value in zip(self.call_args, args):
            values[name] = value
        return self.with_values(saved, **values), []


X86_64.syscall_stop_clobbers = ()

ARCHES = {a.machine: a for a in (X86_64(), AArch64())}


def for_machine(machine):
    """The Arch for os.uname().machine, or None where the injector has none."""
    return ARCHES.get(machine)
