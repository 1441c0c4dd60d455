"""moe_inject: puts the probe's bootstrap into a running Python process with ptrace alone.

Run by the host as a separate, short-lived process (the target's own interpreter
binary, so no compiler or debugger is needed on the user's machine):

    python -I -S -c "import sys; sys.path.insert(0, ROOT); from moe_inject.__main__ import run; run()" --pid PID

with the bootstrap source on stdin and one JSON result on stdout (see __main__.py).
It is never imported into the job. Standard library only; Linux on x86-64 and aarch64.
"""
