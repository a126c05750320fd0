"""``python -m poolparty check [MODULE ...]``: which modules load in a
pool's subinterpreters (see poolparty.check).  The benchmark suite has
its own entry point, ``python -m poolparty_bench``."""

import sys

USAGE = """usage: python -m poolparty check [MODULE ...] [--json] [--timeout S]

commands:
  check   import each MODULE (default: every top-level module of the
          installed distributions) in a fresh isolated own-GIL
          subinterpreter and say which load (--help for more)
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from ._check import main as check_main

        return check_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
