"""python -m moe_probe run script.py [ARGS...]: run a script with the probe listening,
like `python -m cProfile`. The job shows up as attachable in the MoE panel at once."""

import os
import runpy
import sys


USAGE = "usage: python -m moe_probe run SCRIPT.py [ARGS...]\n       python -m moe_probe run -m MODULE [ARGS...]"


def main(argv):
    if len(argv) < 2 or argv[0] != "run":
        print(USAGE, file=sys.stderr)
        return 2
    from . import attach
    attach()
    if argv[1] == "-m":
        if len(argv) < 3:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[2:]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        return 0
    script = argv[1]
    if not os.path.isfile(script):
        print("moe_probe: no such script: %s" % script, file=sys.stderr)
        return 2
    sys.argv = argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
