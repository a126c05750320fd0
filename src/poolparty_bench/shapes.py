"""Task shapes beyond the no-op: does a per-task optimisation hold up?

The overhead workload measures 20,000 no-op tasks, the shape where every
microsecond of the pool's own machinery shows.  A change tuned on it can
cost elsewhere: a collector that lingers for more completions delays a
100 us task's result, a message cache sized for ints can thrash on 1 MB
results, sixteen workers on two cores wake differently from two.  This
command times each shape below on SubinterpreterPool and on ThreadPool,
the same call, and, given ``--python`` more than once, runs the whole
table under each interpreter in alternation (each its own venv: a build
of main against a build of an older commit) so builds compare in one
invocation:

    python -m poolparty_bench.shapes --python .venv/3.13/bin/python \\
        --python ../old/.venv/3.13/bin/python --repeat 5

Times are medians of the repeats, each a fresh process with a warm pool.
"""

import sys
import time

# argparse, json, statistics and subprocess are imported in main(): every
# worker imports this module for its task functions, and should pay only
# for what a task needs.

SPIN_LONG = 1e-3
SPIN_SHORT = 1e-4


def noop(x):
    return x


def spin(seconds):
    """Hold the CPU (and the GIL) for about `seconds`: a task's own work."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def megabyte(i):
    """A distinct 1 MB result each task."""
    return bytes([i & 0xFF]) * (1 << 20)


def floats(i):
    """A distinct 4,096-float list each task: many small objects back."""
    return [i + j * 0.5 for j in range(4_096)]


def first(*args):
    """A no-op of any number of arguments (starmap's shapes)."""
    return args[0]


class _Tuples:
    """n argument tuples of `width` ints, made when first iterated (not
    on import in every worker).  held: their ints are also in a list the
    caller keeps, as a starmap over [(x,) for x in items] has them (the
    codec writes such tuples' items inline, T_STARS); else only the
    tuples hold them, as zip(range(n)) makes them (a list of numbered
    tuples, as before).  shared: each tuple's last item is one list."""

    def __init__(self, n, width, held=True, shared=False):
        self._shape, self._tuples = (n, width, held, shared), None

    def __iter__(self):
        if self._tuples is None:
            n, width, held, shared = self._shape
            one = [0] * 8
            ints = list(range(n * width))
            self._tuples = [
                tuple(ints[i * width:(i + 1) * width - shared] if held
                      else range(i * width, (i + 1) * width - shared))
                + ((one,) if shared else ())
                for i in range(n)]
            self._ints = ints if held else None
        return iter(self._tuples)


def _apply_async(pool, fn, args):
    results = [pool.apply_async(fn, (a,)) for a in args]
    return [r.get() for r in results]


def _apply_async_cb(pool, fn, args):
    got = []
    results = [pool.apply_async(fn, (a,), callback=got.append) for a in args]
    for r in results:
        r.wait()
    return got


# name: (fn, args, workers, how to call, chunksize, dispatch)
SHAPES = {
    "map, no-op, 20,000": (noop, range(20_000), 2, "map", 1, "queue"),
    "imap, no-op, 20,000": (noop, range(20_000), 2, "imap", 1, "queue"),
    "map, no-op, chunksize 10": (noop, range(20_000), 2, "map", 10, "queue"),
    "map, no-op, 16 workers": (noop, range(20_000), 16, "map", 1, "queue"),
    "map, no-op, call design": (noop, range(20_000), 2, "map", 1, "call"),
    "map, 100 us tasks, 2,000": (spin, [SPIN_SHORT] * 2_000, 2, "map", 1,
                                 "queue"),
    "imap, 100 us tasks, 2,000": (spin, [SPIN_SHORT] * 2_000, 2, "imap", 1,
                                  "queue"),
    "apply_async+cb, 100 us, 2,000": (spin, [SPIN_SHORT] * 2_000, 2,
                                      "apply_async_cb", 1, "queue"),
    "map, 100 us, 16 workers": (spin, [SPIN_SHORT] * 2_000, 16, "map", 1,
                                "queue"),
    "map, 100 us, call design": (spin, [SPIN_SHORT] * 2_000, 2, "map", 1,
                                 "call"),
    "map, 1 ms tasks, 400": (spin, [SPIN_LONG] * 400, 2, "map", 1, "queue"),
    "apply_async, 1 ms, 400": (spin, [SPIN_LONG] * 400, 2, "apply_async", 1,
                               "queue"),
    "map, 1 MB results, 256": (megabyte, range(256), 2, "map", 1, "queue"),
    "imap, 4,096 floats each, 500": (floats, range(500), 2, "imap", 1,
                                     "queue"),
    "starmap, no-op, 20,000": (first, _Tuples(20_000, 1), 2, "starmap", 1,
                               "queue"),
    "starmap, 3 args, 20,000": (first, _Tuples(20_000, 3), 2, "starmap", 1,
                                "queue"),
    "starmap, 3 args, chunksize 10": (first, _Tuples(20_000, 3), 2,
                                      "starmap", 10, "queue"),
    "starmap, zip(range), chunksize 10": (first,
                                          _Tuples(20_000, 2, held=False),
                                          2, "starmap", 10, "queue"),
    "starmap, a shared list, chunksize 10": (first,
                                             _Tuples(20_000, 2, shared=True),
                                             2, "starmap", 10, "queue"),
}


def _run(pool, how, fn, args, chunksize):
    if how == "map":
        return pool.map(fn, args, chunksize=chunksize)
    if how == "imap":
        return list(pool.imap(fn, args, chunksize=chunksize))
    if how == "starmap":
        return pool.starmap(fn, args, chunksize=chunksize)
    if how == "apply_async":
        return _apply_async(pool, fn, args)
    if how == "apply_async_cb":
        return _apply_async_cb(pool, fn, args)
    raise ValueError(f"unknown call {how!r}")


def measure_once(names):
    """One fresh-process pass: {shape: (poolparty_s, threadpool_s)}."""
    from multiprocessing.pool import ThreadPool

    from poolparty import SubinterpreterPool

    found = {}
    for name in names:
        fn, args, workers, how, chunksize, dispatch = SHAPES[name]
        args = list(args)
        times = []
        for make in (lambda: SubinterpreterPool(workers, dispatch=dispatch),
                     lambda: ThreadPool(workers)):
            with make() as pool:
                # Warm: every worker started and this module imported.
                pool.map(noop, range(4 * workers), chunksize=1)
                _run(pool, how, fn, args[:4 * workers], 1)
                start = time.perf_counter()
                results = _run(pool, how, fn, args, chunksize)
                times.append(time.perf_counter() - start)
                if len(results) != len(args):
                    raise AssertionError(f"{name}: {len(results)} results "
                                         f"for {len(args)} tasks")
                del results
        found[name] = tuple(times)
    return found


def main(argv=None):
    import argparse
    import json
    import statistics
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh-process passes per interpreter")
    parser.add_argument("--python", action="append", default=[],
                        help="an interpreter (venv) to run the table under; "
                             "repeat to compare builds (default: this one)")
    parser.add_argument("--only", help="comma-separated substrings of shape "
                                       "names to run")
    parser.add_argument("--json", help="write the raw times here")
    parser.add_argument("--one-pass", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n for n in SHAPES
             if not args.only or any(s in n for s in args.only.split(","))]
    if args.one_pass:
        json.dump(measure_once(names), sys.stdout)
        return 0
    pythons = args.python or [sys.executable]
    raw = {p: {n: [] for n in names} for p in pythons}
    for _ in range(args.repeat):
        for python in pythons:  # interleaved: drift hits every build alike
            command = [python, "-m", "poolparty_bench.shapes", "--one-pass"]
            if args.only:
                command += ["--only", args.only]
            out = subprocess.run(command, check=True, capture_output=True,
                                 text=True).stdout
            for name, pair in json.loads(out).items():
                raw[python][name].append(pair)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    base = pythons[-1]
    print(f"medians of {args.repeat}; ms; ratio = poolparty / ThreadPool"
          + (f"; 'vs last' = this build's poolparty time / {base}'s"
             if len(pythons) > 1 else ""))
    for i, python in enumerate(pythons):
        print(f"[{i}] {python}")
    header = f"{'shape':32}" + "".join(
        f" | [{i}] ours  threads ratio" + (" vs last" if len(pythons) > 1
                                           else "")
        for i in range(len(pythons)))
    print(header)
    for name in names:
        line = f"{name:32}"
        # A build older than a shape does not run it: its columns are "-".
        base_ours = (statistics.median(p[0] for p in raw[base][name])
                     if raw[base][name] else None)
        for python in pythons:
            if not raw[python][name]:
                line += f" | {'-':>8} {'-':>8} {'-':>5}" + (
                    f" {'-':>8}" if len(pythons) > 1 else "")
                continue
            ours = statistics.median(p[0] for p in raw[python][name])
            theirs = statistics.median(p[1] for p in raw[python][name])
            line += f" | {ours * 1e3:8.1f} {theirs * 1e3:8.1f} " \
                    f"{ours / theirs:5.2f}"
            if len(pythons) > 1:
                line += (f" {ours / base_ours:8.2f}" if base_ours
                         else f" {'-':>8}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
