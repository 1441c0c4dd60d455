"""python -m moe_probe run script.py [ARGS...]: run a script with the probe listening,
like `python -m cProfile`. The job shows up as attachable in the MoE panel (and in
`moe-devtools list`) at once, and attaching needs no debugger."""

import os
import runpy
import sys
from typing import List, Optional

USAGE = ("usage: python -m moe_probe run SCRIPT.py [ARGS...]\n"
         "       python -m moe_probe run -m MODULE [ARGS...]\n"
         "       python -m moe_probe --version")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error)."""
    argv = sys.argv[1:] if argv is None else argv
    from . import __version__, attach

    if argv[:1] == ["--version"]:
        print("moe_probe %s" % __version__)
        return 0
    if len(argv) < 2 or argv[0] != "run":
        print(USAGE, file=sys.stderr)
        return 2
    if argv[1] == "-m":
        if len(argv) < 3:
            print(USAGE, file=sys.stderr)
            return 2
        attach()
        sys.argv = argv[2:]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        return 0
    script = argv[1]
    if not os.path.isfile(script):
        print("moe_probe: no such script: %s" % script, file=sys.stderr)
        return 2
    attach()
    sys.argv = argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
