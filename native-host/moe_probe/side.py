"""The probe's own computations on the job's model, told apart from the job's passes.

An explanation re-runs part of the model on the probe's request thread while the job
keeps running its own forward passes on its threads. Forward hooks belong to modules,
not threads, so every hook of the probe runs for both. This thread-local flag is how a
hook tells them apart: it is set only on the probe's request thread, only for the
duration of a side computation, and the recorder's and the layers' hooks return at once
when it is set (the job's routing is never counted twice, and the per-call state the
hooks keep for the job's thread is never touched from another thread).

Thread-local on purpose: grad mode, autocast and inference mode are thread-local in
torch too, so nothing set here or there leaks into the job's thread.
"""

import threading


class _SideState(threading.local):
    # Class attributes are the defaults every thread sees until it sets its own.
    active = False  # inside a side computation on this thread
    capture = None  # what the side computation wants its hooks to capture (attribution.Capture)


state = _SideState()
