"""RSS kept by the process per subinterpreter created and ended.

Usage: .venv/3.13/bin/python tools/many_pools_memory.py [--pools 150]

Each row runs in a fresh child process: a warm-up round, then
``--pools`` rounds, and the growth of RSS (``/proc/self/statm``) over
them divided by the interpreters they created:

- ``bare``: CPython's own ``_interpreters.create()``/``destroy()``
  (3.12: ``_xxsubinterpreters``), two per round: the floor, since every
  isolated subinterpreter 3.12/3.13 create and end keeps some memory.
- ``pool``: a ``SubinterpreterPool(2)`` per round, ``map(abs, ...)``,
  then ``close()``/``join()``.
- ``pool, module task``: the same with a task function defined in a
  module, which each worker imports.
- ``reusable``: ``get_reusable_executor(2)`` per round, ``map(abs, ...)``
  (made once, then reused: growth per round, not per interpreter).

The ``after malloc_trim`` column is RSS once glibc has given back the
free memory of its heaps: what is left is memory still allocated.
MALLOC_ARENA_MAX=1 in the environment puts every thread's malloc in the
main heap, which separates the per-thread arenas' fragmentation out.
"""

import argparse
import ctypes
import gc
import os
import subprocess
import sys


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def round_of(kind):
    if kind == "bare":
        try:
            import _interpreters as interpreters
        except ImportError:  # 3.12
            import _xxsubinterpreters as interpreters
        for _ in range(2):
            interpreters.destroy(interpreters.create())
        return 2
    import poolparty

    if kind == "reusable":
        list(poolparty.get_reusable_executor(2).map(abs, range(4)))
        return 1
    func = abs if kind == "pool" else _module_task()
    pool = poolparty.SubinterpreterPool(2)
    pool.map(func, range(4))
    pool.close()
    pool.join()
    return 2


def _module_task():
    import json  # a pure-Python module function: workers import json

    return json.dumps


def child(kind, rounds):
    round_of(kind)
    gc.collect()
    before = rss_mb()
    made = sum(round_of(kind) for _ in range(rounds))
    gc.collect()
    after = rss_mb()
    ctypes.CDLL(None).malloc_trim(0)
    trimmed = rss_mb()
    print(f"{(after - before) / made:.3f} {(trimmed - before) / made:.3f} "
          f"{after - before:.1f} {made}")


ROWS = [("bare", "_interpreters create/destroy"),
        ("pool", "SubinterpreterPool(2), map(abs)"),
        ("module", "SubinterpreterPool(2), module task"),
        ("reusable", "get_reusable_executor(2), per use")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=150)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pools)
        return
    print(f"CPython {sys.version.split()[0]}, {args.pools} rounds; "
          f"MB of RSS kept per interpreter (per use for reusable)")
    print(f"{'what':40} {'MB each':>8} {'after malloc_trim':>18} "
          f"{'total MB':>9} {'x bare':>7}")
    base = None
    for kind, label in ROWS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--pools",
             str(args.pools)],
            capture_output=True, text=True, check=True).stdout.split()
        each, trimmed, total, made = float(out[0]), float(out[1]), out[2], out[3]
        if base is None:
            base = each
        ratio = "" if kind == "reusable" else f"{each / base:7.2f}"
        print(f"{label:40} {each:8.2f} {trimmed:18.2f} {total:>9} {ratio:>7}")


if __name__ == "__main__":
    main()
