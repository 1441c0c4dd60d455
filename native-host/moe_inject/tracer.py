"""Linux ptrace through ctypes: the few requests the injector uses, and reading /proc.

Only the PTRACE_SEIZE family is used: seizing a thread does not stop it or send it
a signal (PTRACE_ATTACH would send SIGSTOP, which the job could observe), and
PTRACE_INTERRUPT stops it without a signal either.
"""

import ctypes
import errno
import os
import struct
import time

import _signal  # not signal, which imports enum: see injector.py

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
PTRACE_SYSCALL_INFO_ENTRY, PTRACE_SYSCALL_INFO_EXIT = 1, 2
NT_PRSTATUS = 1
WALL = 0x40000000  # __WALL: wait for threads too, not only processes
SIGTRAP = 5
SIGSEGV = 11
STOP_SIGNALS = (19, 20, 21, 22)  # SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: group-stop
# Largest register set asked for: an x86 XSAVE area is about 11 KiB with AMX; the kernel
# returns the size it used, and exactly that size is written back.
REGSET_BUFFER = 64 * 1024


from .elf import find_python_api  # noqa: F401  (part of the interface the Injector uses)

PTRACE_LISTEN = 0x4208


class PtraceError(OSError):
    """A ptrace request failed; errno says why (EPERM: not allowed, ESRCH: thread gone or not stopped)."""


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


def ptrace(request, tid, addr=0, data=0):
    ctypes.set_errno(0)
    result = _ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, "ptrace(%#x, %d): %s" % (request, tid, os.strerror(err)))
    return result


def seize(tid, options=PTRACE_O_TRACESYSGOOD):
    ptrace(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid):
    ptrace(PTRACE_INTERRUPT, tid)


def resume_syscall(tid, signal=0):
    """Run until the next system call entry or exit (or signal)."""
    ptrace(PTRACE_SYSCALL, tid, 0, signal)


def resume(tid, signal=0):
    ptrace(PTRACE_CONT, tid, 0, signal)


def detach(tid, signal=0):
    ptrace(PTRACE_DETACH, tid, 0, signal)


def listen(tid):
    """Leave a thread in its group-stop (SIGSTOP) but let it wake on SIGCONT."""
    ptrace(PTRACE_LISTEN, tid)


def get_regset(tid, note):
    """The register set `note` as the kernel gives it (its length is the kernel's, never assumed)."""
    buf = ctypes.create_string_buffer(REGSET_BUFFER)
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), REGSET_BUFFER)
    ptrace(PTRACE_GETREGSET, tid, note, ctypes.addressof(iov))
    return buf.raw[:iov.len]


def set_regset(tid, note, raw):
    buf = ctypes.create_string_buffer(raw, len(raw))
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(raw))
    ptrace(PTRACE_SETREGSET, tid, note, ctypes.addressof(iov))


def get_sigmask(tid):
    mask = ctypes.c_uint64(0)
    ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(mask))
    return mask.value


def set_sigmask(tid, mask):
    value = ctypes.c_uint64(mask)
    ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value))


def syscall_stop_kind(tid):
    """'entry' or 'exit' for a thread in a syscall stop, from PTRACE_GET_SYSCALL_INFO (Linux 5.3+);
    None where the kernel does not say (the caller then counts entries and exits)."""
    buf = ctypes.create_string_buffer(128)
    try:
        size = ptrace(PTRACE_GET_SYSCALL_INFO, tid, 128, ctypes.addressof(buf))
    except PtraceError as exc:
        if exc.errno in (errno.EIO, errno.EINVAL):
            return None
        raise
    if size <= 0:
        return None
    op = buf.raw[0]
    return {PTRACE_SYSCALL_INFO_ENTRY: "entry", PTRACE_SYSCALL_INFO_EXIT: "exit"}.get(op)


class Memory:
    """The target's memory through /proc/PID/mem (allowed to its tracer)."""

    def __init__(self, pid):
        self.fd = os.open("/proc/%d/mem" % pid, os.O_RDWR)

    def read(self, address, size):
        return os.pread(self.fd, size, address)

    def write(self, address, data):
        done = 0
        while done < len(data):
            written = os.pwrite(self.fd, data[done:], address + done)
            if written <= 0:  # the process's memory is gone (it exited)
                raise OSError(errno.ESRCH, "could not write the memory of the target at %#x" % (address + done))
            done += written

    def close(self):
        os.close(self.fd)


# -- /proc ------------------------------------------------------------------------------

def thread_ids(pid):
    return sorted(int(name) for name in os.listdir("/proc/%d/task" % pid) if name.isdigit())


def _read(path):
    with open(path) as f:
        return f.read()


def thread_state(pid, tid):
    """One letter of /proc/PID/task/TID/stat: R running, S sleeping, D disk wait, T/t stopped, Z zombie."""
    stat = _read("/proc/%d/task/%d/stat" % (pid, tid))
    return stat[stat.rindex(")") + 2]


def thread_syscall(pid, tid):
    """The system call a blocked thread is in (its number), -1 when it is blocked outside one,
    or None when it is running (/proc/PID/task/TID/syscall)."""
    text = _read("/proc/%d/task/%d/syscall" % (pid, tid)).split()
    if not text or text[0] == "running":
        return None
    return int(text[0])


def status_fields(pid, tid=None):
    path = "/proc/%d/status" % pid if tid is None else "/proc/%d/task/%d/status" % (pid, tid)
    fields = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def process_alive(pid):
    try:
        stat = _read("/proc/%d/stat" % pid)
        return stat[stat.rindex(")") + 2] not in "ZX"
    except OSError:
        return False


def wait_any(deadline):
    """(tid, status) of the next traced thread that stopped or exited, or None at the deadline
    (time.monotonic()). The caller blocks SIGCHLD, which every ptrace stop sends the tracer."""
    while True:
        try:
            tid, status = os.waitpid(-1, WALL | os.WNOHANG)
        except ChildProcessError:
            tid, status = 0, 0
        if tid:
            return tid, status
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        _signal.sigtimedwait([_signal.SIGCHLD], min(left, 0.005))


def poll_any():
    """(tid, status) of a traced thread already stopped or exited, or None."""
    try:
        tid, status = os.waitpid(-1, WALL | os.WNOHANG)
    except ChildProcessError:
        return None
    return (tid, status) if tid else None


def signal_bit(number):
    return 1 << (number - 1)


def unpack_u64(raw, offset=0):
    return struct.unpack_from("<Q", raw, offset)[0]
