"""RSS kept by the process per subinterpreter created and ended.

Usage: .venv/3.13/bin/python tools/many_pools_memory.py [--pools 150] [KIND ...]

Each row runs in a fresh child process: a warm-up round, then
``--pools`` rounds, and the growth of RSS (``/proc/self/statm``) over
them divided by the interpreters they created:

- ``bare``: CPython's own ``_interpreters.create()``/``destroy()``
  (3.12: ``_xxsubinterpreters``), two per round: the floor, since every
  isolated subinterpreter 3.12/3.13 create and end keeps some memory.
- ``bare, threads``: the same, each interpreter made and ended on a
  fresh thread of its own, as a pool's workers do (two per round).
- ``bare, threads, worker's imports``: the same, and each interpreter
  imports what a pool's worker has imported once it ran ``abs``
  (``sys.modules`` read from a real worker): CPython's figure for an
  interpreter that does what a worker does, without poolparty's code.
- ``pool``: a ``SubinterpreterPool(2)`` per round, ``map(abs, ...)``,
  then ``close()``/``join()``.
- ``pool, module task``: the same with a task function defined in a
  module, which each worker imports.
- ``reusable``: ``get_reusable_executor(2)`` per round, ``map(abs, ...)``
  (made once, then reused: growth per round, not per interpreter).

The ``after malloc_trim`` column is RSS once glibc has given back the
free memory of its heaps: what is left is memory still allocated.  The
``malloc'd`` column is the growth of what glibc's malloc has handed out
and not had back (``mallinfo2()``: ``uordblks + hblkhd``): CPython's
raw allocations and ours; obmalloc's arenas are mmap()ed apart from it.
MALLOC_ARENA_MAX=1 in the environment puts every thread's malloc in the
main heap, which separates the per-thread arenas' fragmentation out.
"""

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloced_mb():
    """Bytes glibc's malloc has handed out and not had back, in MB."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def _interpreters():
    try:
        import _interpreters as interpreters
    except ImportError:  # 3.12
        import _xxsubinterpreters as interpreters
    return interpreters


def _on_two_threads(code):
    """Two interpreters, each made, given ``code`` and ended on a fresh
    thread (as a pool's two workers)."""
    interpreters = _interpreters()

    def one():
        interp = interpreters.create()
        if code:
            interpreters.run_string(interp, code)
        interpreters.destroy(interp)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 2


def _worker_imports_code():
    """Code that imports, in a bare interpreter, every module a pool's
    worker has imported once it ran abs() (read from a real worker)."""
    import poolparty

    with poolparty.SubinterpreterPool(1) as pool:
        pool.map(abs, range(4))
        names = pool.apply(eval, ("sorted(__import__('sys').modules)", {}))
    # Not the worker's __main__/__mp_main__ (the parent's script, run
    # there only when a task needs it): a failing import would make
    # run_string() format the exception, which imports traceback & co.
    names = [name for name in names if not name.startswith("__")]
    # __import__, not importlib: that package is no worker's import.
    return (f"import sys\nsys.path[:] = {sys.path!r}\n"
            f"for name in {json.dumps(names)}:\n"
            f"    __import__(name)\n")


def round_of(kind, code=None):
    if kind == "bare":
        interpreters = _interpreters()
        for _ in range(2):
            interpreters.destroy(interpreters.create())
        return 2
    if kind in ("bare-threads", "bare-imports"):
        return _on_two_threads(code)
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
    code = _worker_imports_code() if kind == "bare-imports" else None
    round_of(kind, code)
    gc.collect()
    before, heap_before = rss_mb(), malloced_mb()
    made = sum(round_of(kind, code) for _ in range(rounds))
    gc.collect()
    after, heap_after = rss_mb(), malloced_mb()
    ctypes.CDLL(None).malloc_trim(0)
    trimmed = rss_mb()
    print(f"{(after - before) / made:.3f} {(trimmed - before) / made:.3f} "
          f"{(heap_after - heap_before) / made:.3f} {after - before:.1f} "
          f"{made}")


ROWS = [("bare", "_interpreters create/destroy"),
        ("bare-threads", "the same, each on a fresh thread"),
        ("bare-imports", "... and a worker's imports"),
        ("pool", "SubinterpreterPool(2), map(abs)"),
        ("module", "SubinterpreterPool(2), module task"),
        ("reusable", "get_reusable_executor(2), per use")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=150)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("kinds", nargs="*", help="rows to run (default: "
                        "all): " + ", ".join(kind for kind, _ in ROWS))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pools)
        return
    print(f"CPython {sys.version.split()[0]}, {args.pools} rounds; "
          f"MB of RSS kept per interpreter (per use for reusable)")
    heap = "malloc'd"
    print(f"{'what':40} {'MB each':>8} {'after malloc_trim':>18} "
          f"{heap:>9} {'total MB':>9} {'x bare':>7}")
    base = None
    for kind, label in ROWS:
        if args.kinds and kind not in args.kinds:
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--pools",
             str(args.pools)],
            capture_output=True, text=True, check=True).stdout.split()
        each, trimmed, heap = (float(x) for x in out[:3])
        total = out[3]
        if base is None:
            base = each
        ratio = "" if kind == "reusable" else f"{each / base:7.2f}"
        print(f"{label:40} {each:8.2f} {trimmed:18.2f} {heap:9.3f} "
              f"{total:>9} {ratio:>7}", flush=True)


if __name__ == "__main__":
    main()
