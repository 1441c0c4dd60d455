"""The life of a reading put into traced code (the JAX and TensorFlow backends), shared by both.

Compiled functions (jax.jit, tf.function) run without Python once traced, so a backend reads
routing by patching what runs while a model is traced (Flax's interceptors, Keras's `call`,
the top-k op) and then clearing the framework's trace caches, so that every compiled function
traces again with the reading in it. One interception serves the whole process, held while any
model of that framework is watched (`acquire`/`release`); the last release removes every patch
and, if any trace took the reading in, clears the caches once more so that the functions are
compiled again as they were.

A trace already running when the caches are cleared finishes and is cached after the clear,
without the reading (the job traced at the moment of attach). So while no pass of a watched
model has gone through the reading yet (traced with it, or run eagerly), the caches are cleared
again 1, 3 and 10 s after install: cheap when the job is idle (a cleared cache of a function
nobody calls costs nothing), and it ends such a race.
"""

import threading
from typing import Callable, List

RECLEAR_AFTER_S = (1.0, 3.0, 10.0)


class Interception:
    def __init__(self, clear: Callable[[], None]):
        self.clear = clear  # the framework's way of making compiled functions trace again
        self.lock = threading.Lock()
        self.holders = set()
        self.installed = False
        self.read_anything = False  # a trace took the reading in: detaching must clear the caches again
        self.passed = False  # a pass of a watched model went through the reading since install
        self._generation = 0
        self._timers: List[threading.Timer] = []

    # -- the framework's own (subclasses) --

    def patch(self):  # pragma: no cover - each backend's own
        raise NotImplementedError

    def unpatch(self):  # pragma: no cover - each backend's own
        raise NotImplementedError

    # -- lifecycle (probe thread) --

    def acquire(self, holder):
        with self.lock:
            self.holders.add(holder)
            if not self.installed:
                self._install()

    def release(self, holder):
        with self.lock:
            self.holders.discard(holder)
            if self.installed and not self.holders:
                self._uninstall()

    def _install(self):
        self.patch()
        self.installed = True
        self.passed = False
        self._generation += 1
        self.clear()
        for delay in RECLEAR_AFTER_S:
            timer = threading.Timer(delay, self._clear_again, args=(self._generation,))
            timer.daemon = True
            timer.name = "moe_probe_retrace"
            timer.start()
            self._timers.append(timer)

    def _clear_again(self, generation):
        with self.lock:
            if self.installed and self._generation == generation and not self.passed:
                self.clear()

    def _uninstall(self):
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self.unpatch()
        self.installed = False
        if self.read_anything:
            self.read_anything = False
            self.clear()

    def note_pass(self):
        """A pass of a watched model went through the reading (traced with it, or run eagerly)."""
        self.passed = True
