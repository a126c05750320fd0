"""The plain-data codec against pickle protocol 5, side by side.

``python -m poolparty_bench.codec`` encodes and decodes each kind of
value with poolparty's codec (``poolparty._poolparty.encode/decode``, what
every task's arguments and result go through) and with
``pickle.dumps(value, 5)`` / ``pickle.loads``, in the same process, and
prints each one's best time of ``--repeat`` runs and the ratio codec /
pickle (below 1: the codec is faster).  The garbage collector is off
while timing, for both: its passes would land on one or the other by
chance; the pool's own share of that is measured by the suite.

``--share``, ``--arguments`` and ``--buffers MB`` measure the data paths
through warm pools instead (see docs/bench.md, "The codec against
pickle").
"""

import argparse
import gc
import pickle
import random
import sys
import time

N = 65_536


def kinds(n=N):
    """{name: value} for every kind of value measured (fixed seed)."""
    rng = random.Random(13)
    records = [
        {"id": i, "name": f"user{i}", "score": rng.random(),
         "tags": ["a", "b"] if i % 2 else ["c"], "flag": bool(i % 3)}
        for i in range(n // 8)
    ]
    return {
        "ints": list(range(n)),
        "big ints": [rng.getrandbits(62) for _ in range(n)],
        "floats": [rng.random() for _ in range(n)],
        "short strs": [f"item-{i}" for i in range(n)],
        "text (non-ASCII)": [f"caf\u00e9 {i} \u20ac" for i in range(n // 4)],
        "small dicts": records,
        "tuples": [(i, float(i), str(i)) for i in range(n // 4)],
        "one float x n": [1000.0] * n,
        "bytes 8 MB": rng.randbytes(8 << 20),
    }


def best_pair(fn_a, arg_a, fn_b, arg_b, repeat):
    """Best wall times of fn_a(arg_a) and fn_b(arg_b), in seconds, over
    `repeat` runs each, alternated so that a slow spell of a busy machine
    does not fall on one side only."""
    times_a, times_b = [], []
    for _ in range(repeat):
        for fn, arg, times in ((fn_a, arg_a, times_a), (fn_b, arg_b, times_b)):
            start = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - start)
    return min(times_a), min(times_b)


def measure(repeat=20, n=N):
    """[(kind, codec_enc, pickle_enc, codec_dec, pickle_dec, sizes)]."""
    from poolparty import _poolparty as core

    rows = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for name, value in kinds(n).items():
            data = core.encode(value)
            if data is None:
                raise SystemExit(f"the codec refused {name!r}")
            pickled = pickle.dumps(value, 5)
            if core.decode(data) != value:
                raise SystemExit(f"the codec got {name!r} wrong")
            encode = best_pair(core.encode, value,
                               lambda v: pickle.dumps(v, 5), value, repeat)
            decode = best_pair(core.decode, data, pickle.loads, pickled, repeat)
            rows.append((name, *encode, *decode, (len(data), len(pickled))))
    finally:
        if gc_was:
            gc.enable()
    return rows


def buffers(size_mb=64, repeat=5):
    """Seconds to move a `size_mb` MB bytes result through a warm pool of
    each kind, and to memcpy it once in this process: {name: seconds}."""
    import ctypes
    import multiprocessing
    from multiprocessing.pool import ThreadPool

    from poolparty import SubinterpreterPool

    from .workloads._realdata import Frame, blob, blob_size, frame, frame_size

    size = size_mb << 20
    source = bytes(size)
    target = bytearray(size)
    address = ctypes.addressof(ctypes.c_char.from_buffer(target))
    times = {"memcpy (to warm memory)": [], "bytes copy (to fresh memory)": []}
    for _ in range(repeat):
        start = time.perf_counter()
        ctypes.memmove(address, source, size)
        times["memcpy (to warm memory)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        copy = bytes(memoryview(source))   # a new object: fresh memory
        times["bytes copy (to fresh memory)"].append(time.perf_counter() - start)
        del copy
    pools = {"poolparty": lambda: SubinterpreterPool(1),
             "ThreadPool": lambda: ThreadPool(1),
             "spawn Pool": lambda: multiprocessing.get_context("spawn").Pool(1)}
    held = Frame(source)
    for name, make in pools.items():
        with make() as pool:
            pool.apply(blob, (size,))               # warm: made and kept
            assert pool.apply(blob_size, (source,)) == size
            pool.apply(frame, (size,))
            assert pool.apply(frame_size, (held,)) == size
            for what, call in (("result", lambda: pool.apply(blob, (size,))),
                               ("argument",
                                lambda: pool.apply(blob_size, (source,))),
                               ("PickleBuffer result",
                                lambda: pool.apply(frame, (size,))),
                               ("PickleBuffer argument",
                                lambda: pool.apply(frame_size, (held,)))):
                key = f"{name}: {size_mb} MB {what}"
                times[key] = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
    return {key: min(values) for key, values in times.items()}


def _main_interpreter_cpu():
    """CPU seconds of every thread of this interpreter (the caller, the
    pool's collector, multiprocessing's handler threads); a poolparty
    worker's native thread runs in its own interpreter and is not one."""
    import threading

    return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident))
               for t in threading.enumerate() if t.ident)


def _floor(results):
    """(build, parts): the cheapest way this interpreter has to build
    objects equal to `results` (one task's each) from flat parts, in C --
    build(part) for each part makes one result: the floor of what
    rebuilding them costs here, whoever sends them."""
    import array
    import marshal

    first = results[0]
    if isinstance(first, bytes):                    # one copy
        return bytes, [memoryview(r) for r in results]
    if all(item is first[0] for item in first):     # [x] * n
        return (lambda part: [part[0]] * part[1],
                [(r[0], len(r)) for r in results])
    if isinstance(first[0], float):
        return (lambda part: array.array("d", part).tolist(),
                [array.array("d", r).tobytes() for r in results])
    if isinstance(first[0], int):
        return (lambda part: array.array("q", part).tolist(),
                [array.array("q", r).tobytes() for r in results])
    # Records, text: marshal, C's own loop over the same types.
    return marshal.loads, [marshal.dumps(r) for r in results]


def main_share(tasks=32, repeat=5):
    """The main interpreter's CPU per task of a warm 2-worker pool's map
    over each data_* workload, the CPU per task of running the tasks
    sequentially here, and the floor: building objects equal to the
    results here from flat parts (_floor), as many kept alive at once as
    the map keeps: [(name, pool_s, sequential_s, floor_s)]."""
    from poolparty import SubinterpreterPool

    from .workloads import REAL_DATA, data_pass

    rows = []
    with SubinterpreterPool(2) as pool:
        for workload in (data_pass, *REAL_DATA):
            inputs = workload.inputs(1.0)[:tasks]
            pool.map(workload.task, inputs[:4], chunksize=1)
            build, parts = _floor(list(map(workload.task, inputs)))
            pooled, alone, floor = [], [], []
            for _ in range(repeat):
                start = time.thread_time()
                results = list(map(workload.task, inputs))
                alone.append(time.thread_time() - start)
                del results
                start = time.thread_time()
                results = [build(part) for part in parts]
                floor.append(time.thread_time() - start)
                del results
                start = _main_interpreter_cpu()
                results = pool.map(workload.task, inputs, chunksize=1)
                pooled.append(_main_interpreter_cpu() - start)
                del results
            rows.append((workload.NAME, min(pooled) / len(inputs),
                         min(alone) / len(inputs), min(floor) / len(inputs)))
    return rows


def arguments(repeat=3):
    """The main interpreter's CPU for a map over large items, poolparty
    against a spawn multiprocessing.Pool (whose pickling runs in its
    handler threads, counted too): [(kind, poolparty_s, multiprocessing_s)]."""
    import multiprocessing

    from poolparty import SubinterpreterPool

    from .workloads._realdata import blob_size

    kinds = {
        "16 blobs of 8 MB": [bytes([i]) * (8 << 20) for i in range(16)],
        "64 lists of 65,536 floats": [[i + j * 0.5 for j in range(65_536)]
                                      for i in range(64)],
        "64 lists of 2,048 records": [[{"id": j, "name": f"u{j}",
                                        "score": j * 0.1}
                                       for j in range(2_048)]
                                      for i in range(64)],
    }
    rows = []
    with SubinterpreterPool(2) as ours, \
            multiprocessing.get_context("spawn").Pool(2) as theirs:
        for pool in (ours, theirs):
            pool.map(blob_size, [b"x"] * 4)
        for kind, items in kinds.items():
            spent = []
            for pool in (ours, theirs):
                best = None
                for _ in range(repeat):
                    start = _main_interpreter_cpu()
                    pool.map(blob_size, items, chunksize=1)
                    cpu = _main_interpreter_cpu() - start
                    best = cpu if best is None else min(best, cpu)
                spent.append(best)
            rows.append((kind, *spent))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("-n", type=int, default=N, help="items per value")
    parser.add_argument("--buffers", type=int, metavar="MB",
                        help="instead: time a MB-sized bytes result and "
                             "argument through warm pools, against memcpy")
    parser.add_argument("--share", action="store_true",
                        help="instead: the main interpreter's CPU per task "
                             "of the data_* workloads on a warm pool")
    parser.add_argument("--arguments", action="store_true",
                        help="instead: the main interpreter's CPU for a map "
                             "over large items, against multiprocessing")
    args = parser.parse_args(argv)
    if args.share:
        print("main interpreter's CPU per task, warm 2-worker pool, against "
              "running the task here and the floor (building equal objects "
              "here from flat parts)")
        for name, pooled, alone, floor in main_share():
            print(f"{name:13} {pooled * 1e3:6.2f} ms  sequential "
                  f"{alone * 1e3:6.2f} ms  ({pooled / alone:.2f})  floor "
                  f"{floor * 1e3:6.2f} ms  ({pooled / floor:.2f})")
        return 0
    if args.arguments:
        print("main interpreter's CPU for map(len-like task, items), 2 workers")
        for kind, ours, theirs in arguments():
            print(f"{kind:27} poolparty {ours * 1e3:7.1f} ms  "
                  f"multiprocessing {theirs * 1e3:7.1f} ms  ({ours / theirs:.2f})")
        return 0
    if args.buffers:
        found = buffers(args.buffers, min(args.repeat, 5))
        base = found["memcpy (to warm memory)"]
        print(f"Python {sys.version.split()[0]}, best of {min(args.repeat, 5)}")
        for key, seconds in found.items():
            print(f"{key:45} {seconds * 1e3:8.1f} ms {args.buffers / 1024 / seconds:6.2f} GB/s"
                  f"  {seconds / base:5.1f}x memcpy")
        return 0
    rows = measure(args.repeat, args.n)
    print(f"Python {sys.version.split()[0]}, n={args.n}, best of {args.repeat}; "
          "times in ms, ratio = codec / pickle")
    print(f"{'kind':<18} {'enc':>7} {'pickle':>7} {'ratio':>6}   "
          f"{'dec':>7} {'pickle':>7} {'ratio':>6}   {'bytes':>9} {'pickle':>9}")
    for name, ce, pe, cd, pd, (cs, ps) in rows:
        print(f"{name:<18} {ce * 1e3:7.2f} {pe * 1e3:7.2f} {ce / pe:6.2f}   "
              f"{cd * 1e3:7.2f} {pd * 1e3:7.2f} {cd / pd:6.2f}   {cs:9d} {ps:9d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
