"""The shared life of a reading put into traced code (moe_probe/retrace.py), without a framework:
the caches are cleared on install, again while no watched pass has gone through the reading (a
trace racing the attach), never again once one has, and once more on the last release only if a
trace took the reading in."""

import time

from job_check import NATIVE_HOST  # noqa: F401  (puts the probe's package on sys.path)
from moe_probe import retrace


class Counting(retrace.Interception):
    def __init__(self):
        self.clears = []
        super().__init__(lambda: self.clears.append(time.monotonic()))
        self.patched = 0

    def patch(self):
        self.patched += 1

    def unpatch(self):
        self.patched -= 1


def test_the_caches_are_cleared_again_while_no_pass_went_through_the_reading(monkeypatch):
    monkeypatch.setattr(retrace, "RECLEAR_AFTER_S", (0.05, 0.15))
    interception = Counting()
    interception.acquire("a")
    assert interception.installed and interception.patched == 1 and len(interception.clears) == 1
    time.sleep(0.4)
    assert len(interception.clears) == 3  # once on install, once per delay: no pass came through
    interception.release("a")
    assert not interception.installed and interception.patched == 0
    assert len(interception.clears) == 3  # no trace took the reading in: nothing to clear on detach


def test_a_pass_through_the_reading_ends_the_clearing_and_detach_clears_once_more(monkeypatch):
    monkeypatch.setattr(retrace, "RECLEAR_AFTER_S", (0.1, 0.2))
    interception = Counting()
    interception.acquire("a")
    interception.acquire("b")  # a second watched model: installed once
    assert interception.patched == 1 and len(interception.clears) == 1
    interception.note_pass()
    interception.read_anything = True
    time.sleep(0.35)
    assert len(interception.clears) == 1  # the reading is in the traces: nothing re-traced
    interception.release("a")
    assert interception.installed and len(interception.clears) == 1  # "b" still watched
    interception.release("b")
    assert not interception.installed and interception.patched == 0
    assert len(interception.clears) == 2  # traced back without the reading


def test_a_detach_before_the_delays_cancels_them(monkeypatch):
    monkeypatch.setattr(retrace, "RECLEAR_AFTER_S", (0.1,))
    interception = Counting()
    interception.acquire("a")
    interception.release("a")
    time.sleep(0.25)
    assert len(interception.clears) == 1 and not interception._timers
    # A fresh attach starts its own generation: an old timer would not clear for it.
    interception.acquire("a")
    assert len(interception.clears) == 2 and interception._generation == 2
    interception.release("a")
