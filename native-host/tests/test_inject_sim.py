"""The injector's algorithm on a simulated kernel, for x86-64 and for aarch64.

aarch64 has not run on an ARM machine: these tests are what checks its register
handling (x7 hidden at syscall stops, svc #0, x8, x30 as the return address). The same
tests run the x86-64 path, which the live tests (test_injector_live.py) also run for real.
"""

import pytest

from moe_inject import arch as arches
from moe_inject.injector import PAGE_ADDRESS_TOKEN, PAGE_SIZE_TOKEN, STEPS, InjectError, Injector

from simulated_kernel import ADD_PENDING, MMAP_AT, RUN_STRING, SimError, SimKernel, SimThread

ARCHES = [arches.X86_64(), arches.AArch64()]
SOURCE = "print('page', %s, %s)" % (PAGE_ADDRESS_TOKEN, PAGE_SIZE_TOKEN)


def make(arch, script=(("clock_nanosleep", 0),), others=(), **kernel_args):
    main = SimThread(arch, 100, script)
    threads = [main] + [SimThread(arch, 101 + i, s, **kw) for i, (s, kw) in enumerate(others)]
    original = list(main.regs)
    return SimKernel(arch, threads, **kernel_args), main, original


def run(kernel, arch, **args):
    return Injector(100, SOURCE, arch=arch, kernel=kernel, timeout_s=0.01, **args).run()


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_queues_the_call_at_a_completed_syscall_and_restores_the_thread_exactly(arch):
    kernel, main, original = make(arch)
    report = run(kernel, arch)

    assert report["thread"] == "main" and report["syscall"] == "clock_nanosleep"
    # The call Python needs: Py_AddPendingCall(PyRun_SimpleString, page holding the source).
    calls = [c for c in main.calls if c[0] == "Py_AddPendingCall"]
    assert len(calls) == 1
    _, func, page, text = calls[0]
    assert func == RUN_STRING and page == MMAP_AT
    assert text.split(b"\0")[0] == ("print('page', %d, 4096)" % MMAP_AT).encode()
    # One private anonymous read-write page from an injected mmap, never malloc.
    assert ("mmap", 4096, arches.PROT_READ | arches.PROT_WRITE, arches.MAP_PRIVATE | arches.MAP_ANONYMOUS) in main.calls
    # Back exactly as it was at the syscall exit: every register (arm64's hidden x7 too,
    # which the fake function clobbered), the signal mask, the vector state; detached with no signal.
    expected = list(original)
    expected[arch.index[arch.pc_name]] = 0x401000 + len(arch.syscall_insn)
    expected[arch.index[arch.result_name]] = 0
    if arch.name == "x86_64":
        expected[arch.index["orig_rax"]] = arch.syscalls["clock_nanosleep"]
    else:
        expected[arch.index["x8"]] = arch.syscalls["clock_nanosleep"]
        assert main.get("x7") == 0x7777
    assert main.regs == expected
    assert main.sigmask == 0x4000
    assert main.ext == bytes(range(256)) * 4
    assert report["extended_state_changed"] is True and report["registers_restored"] is True
    assert main.detached_with == 0 and not main.traced
    assert ("signal delivered", 11) not in main.calls  # the return trap never reaches the job


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_leaves_the_vector_state_unwritten_when_the_call_did_not_change_it(arch):
    kernel, main, _ = make(arch, clobber_ext=False)
    report = run(kernel, arch)
    assert report["extended_state_changed"] is False
    assert main.ext == bytes(range(256)) * 4


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
@pytest.mark.parametrize("result", [-4, -512, -513, -514, -516], ids=lambda r: "errno%d" % -r)
def test_skips_a_syscall_exit_the_kernel_may_still_restart(arch, result):
    kernel, main, _ = make(arch, script=(("futex", result), ("read", 7)))
    report = run(kernel, arch)
    assert report["syscall"] == "read"
    assert main.get(arch.result_name) == 7  # the read's own result, put back


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_signals_are_blocked_during_the_call_except_synchronous_faults(arch):
    kernel, main, _ = make(arch)
    masks = []
    original_set_regset = kernel.set_regset

    def set_regset(tid, note, raw):  # the mask in force whenever the injector points the thread somewhere
        masks.append(main.sigmask)
        original_set_regset(tid, note, raw)

    kernel.set_regset = set_regset
    run(kernel, arch)
    during = masks[:-1]  # the last write is the restore, made before the mask is put back
    assert during and all(m == during[0] for m in during)
    blocked = during[0]
    for sig in (2, 10, 12, 14, 15, 17):  # SIGINT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGCHLD
        assert blocked & (1 << (sig - 1)), sig
    for sig in (4, 5, 7, 8, 11, 31):  # SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS
        assert not blocked & (1 << (sig - 1)), sig
    assert main.sigmask == 0x4000


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_a_full_pending_call_queue_unmaps_the_page_and_restores(arch):
    kernel, main, original = make(arch, pending_result=-1)
    with pytest.raises(InjectError) as err:
        run(kernel, arch)
    assert err.value.code == "pending_call_refused"
    assert kernel.unmapped == [(MMAP_AT, 4096)]
    assert main.detached_with == 0 and main.sigmask == 0x4000
    if arch.name == "aarch64":
        assert main.get("x7") == 0x7777


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_leaves_the_thread_as_it_was(arch, step):
    kernel, main, original = make(arch)
    clean = SimThread(arch, 100, ())
    with pytest.raises(InjectError) as err:
        run(kernel, arch, fail_at=step)
    assert err.value.code == "test_failure"
    queued = [c for c in main.calls if c[0] == "Py_AddPendingCall"]
    assert len(queued) == (1 if step == "called" else 0)
    if step == "seized":  # before any thread was chosen: nothing written, released where it stopped
        assert kernel.regset_writes == []
        assert main.regs == original and main.detached_with in (0, None)
    elif main.detached_with is not None:  # stopped on it: put back and detached without a signal
        assert main.detached_with == 0
        assert main.sigmask == 0x4000
        assert main.ext == bytes(range(256)) * 4
        assert arch.pc(main.regs) == 0x401000 + len(arch.syscall_insn)
        assert arch.sp(main.regs) == arch.sp(clean.regs)
        if arch.name == "aarch64":
            assert main.get("x7") == 0x7777
    else:
        pytest.fail("the chosen thread was not detached")
    if step in ("written", "called"):
        assert kernel.unmapped == ([(MMAP_AT, 4096)] if step == "written" else [])


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_a_refused_seize_is_ptrace_denied(arch):
    kernel, main, _ = make(arch, deny_seize=True)
    with pytest.raises(InjectError) as err:
        run(kernel, arch)
    assert err.value.code == "ptrace_denied"


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_no_syscall_in_time_is_no_safe_point_and_touches_nothing(arch):
    kernel, main, original = make(arch, script=())  # computes forever, no system call
    with pytest.raises(InjectError) as err:
        run(kernel, arch)
    assert err.value.code == "no_safe_point"
    assert "nothing was changed in the job" in err.value.message
    assert kernel.regset_writes == []


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_threads_in_calls_that_would_see_EINTR_are_never_interrupted(arch):
    epoll = arch.syscalls["epoll_pwait"]
    kernel, main, _ = make(arch, others=[((("epoll_pwait", 0),), {"syscall": epoll}),
                                         ((("futex", 0),), {"syscall": arch.syscalls["futex"]})])
    run(kernel, arch)
    assert not kernel.threads[101].traced and kernel.threads[101].detached_with is None  # never seized
    assert kernel.threads[101].stop is None


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_a_signal_for_another_thread_meanwhile_is_delivered(arch):
    kernel, main, _ = make(arch, script=(("read", 3),), others=[((("futex", 0),), {"syscall": arch.syscalls["futex"]})])
    other = kernel.threads[101]
    original_resume = kernel.resume_syscall

    # When the other thread is resumed for the first time, it stops for the job's SIGUSR1.
    def resume_syscall(tid, signal=0):
        if tid == 101 and not getattr(other, "_signalled", False):
            other._signalled = True
            kernel._leave_stop(other)
            other.stop = "signal"
            kernel.events.append((101, (10 << 8) | 0x7F))
            return
        original_resume(tid, signal)

    kernel.resume_syscall = resume_syscall
    run(kernel, arch)
    delivered = ("signal delivered", 10) in other.calls or other.detached_with == 10
    assert delivered


def test_the_simulated_kernel_refuses_a_blocked_sigsegv():
    """The check the tests above rely on can fail: a trap with SIGSEGV blocked is an error."""
    arch = arches.X86_64()
    kernel, main, _ = make(arch)
    main.traced = True
    main.stop = "interrupt"
    main.sigmask = 1 << 10
    main.set("rip", 0)
    with pytest.raises(SimError):
        kernel.resume(100)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_registers_and_signal_mask_are_back_even_if_the_vector_state_cannot_be_written(arch):
    kernel, main, original = make(arch)
    original_set = kernel.set_regset

    def refuse_vector_state(tid, note, raw):
        if note == arch.extended_regset:
            raise OSError(14, "Bad address")  # what gdb 13 met on Intel AMX machines
        original_set(tid, note, raw)

    kernel.set_regset = refuse_vector_state
    report = run(kernel, arch)
    assert report["extended_state_restored"] is False and "could not be written back" in report["warning"]
    assert report["registers_restored"] is True and len([c for c in main.calls if c[0] == "Py_AddPendingCall"]) == 1
    assert main.sigmask == 0x4000 and main.detached_with == 0
    assert arch.pc(main.regs) == 0x401000 + len(arch.syscall_insn)
    assert arch.sp(main.regs) == arch.sp(SimThread(arch, 100, ()).regs)
