"""A workload for leak checkers (scripts/sanitize.sh's LeakSanitizer
pass, scripts/valgrind.sh): every path through the C core, then a clean
exit.

    python tools/leak_workload.py [--tasks N]

Runs N tasks through each design (Pool: map, imap_unordered, apply_async
with errors and unpicklable results; Executor: submit, cancel) and
creates and destroys pools along the way (close/join, terminate with work
queued, maxtasksperchild, garbage collection, a failing initializer),
plus poolparty.Interpreter calls.  Prints one line per phase; exits 1 if
any result is wrong.
"""

import argparse
import concurrent.futures
import fractions
import gc
import os
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

import poolparty  # noqa: E402
import reliability_tasks as rt  # noqa: E402
import tasks  # noqa: E402


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        check.failed = True


check.failed = False


def check_raises(what, exc_type, call, *args):
    """check() that call(*args) raises exc_type (others propagate)."""
    try:
        call(*args)
    except exc_type:
        check(what, True)
    else:
        check(what, False)


def pool_phase(dispatch, n):
    with poolparty.SubinterpreterPool(2, dispatch=dispatch) as pool:
        check(f"{dispatch}: map {n}", pool.map(rt.increment, range(n), 1) ==
              list(range(1, n + 1)))
        got = sorted(pool.imap_unordered(rt.increment, range(n // 4), 7))
        check(f"{dispatch}: imap_unordered", got == list(range(1, n // 4 + 1)))
        asyncs = [pool.apply_async(rt.maybe_fail, (i,)) for i in range(200)]
        errors = 0
        for i, r in enumerate(asyncs):
            try:
                check_value = r.get(60) == i * 2
            except ValueError:
                errors += 1
                check_value = i % 7 == 3
            if not check_value:
                check(f"{dispatch}: apply_async {i}", False)
        check(f"{dispatch}: apply_async errors", errors == sum(
            1 for i in range(200) if i % 7 == 3))
        try:
            pool.apply(tasks.return_unpicklable)
            check(f"{dispatch}: unpicklable result", False)
        except Exception as exc:
            check(f"{dispatch}: unpicklable result",
                  type(exc).__name__ == "MaybeEncodingError")
        check_raises(f"{dispatch}: RecursionError", RecursionError,
                     pool.apply, rt.recurse_forever)
        try:
            pool.apply(rt.call_sys_exit, (5,))
        except SystemExit as exc:
            check(f"{dispatch}: sys.exit in a task", exc.code == 5)
        check(f"{dispatch}: huge result", pool.apply(rt.length, (
            pool.apply(rt.huge_bytes, (16,)),)) == 16 << 20)


def lifecycle_phase(dispatch):
    # close + join
    pool = poolparty.SubinterpreterPool(2, dispatch=dispatch)
    check(f"{dispatch}: close/join", pool.map(rt.increment, range(50)) ==
          list(range(1, 51)))
    pool.close()
    pool.join()
    # terminate with work queued (dropped tasks free their messages)
    pool = poolparty.SubinterpreterPool(1, dispatch=dispatch)
    pending = pool.map_async(rt.sleep_then, [(0.001, i) for i in range(300)], 1)
    pool.terminate()
    pool.join()
    check_raises(f"{dispatch}: terminate drops queued",
                 poolparty.TerminatedError, pending.get, 30)
    # maxtasksperchild: interpreters replaced
    pool = poolparty.SubinterpreterPool(2, maxtasksperchild=3, dispatch=dispatch)
    check(f"{dispatch}: maxtasksperchild", pool.map(rt.increment, range(40), 1) ==
          list(range(1, 41)))
    pool.close()
    pool.join()
    # garbage collection of an unclosed pool
    pool = poolparty.SubinterpreterPool(2, dispatch=dispatch)
    pool.map(rt.increment, range(10))
    del pool
    gc.collect()
    # a failing initializer breaks the pool
    pool = poolparty.SubinterpreterPool(2, initializer=tasks.failing_initializer,
                                        initargs=("no",), dispatch=dispatch)
    check_raises(f"{dispatch}: broken pool", poolparty.BrokenInterpreterPool,
                 pool.apply, rt.increment, (1,))
    pool.terminate()
    pool.join()
    # terminate() abandons workers blocked in C; they end once released
    read_end, write_end = os.pipe()
    started = [os.path.join(tempfile.mkdtemp(), str(i)) for i in range(2)]
    pool = poolparty.SubinterpreterPool(2, dispatch=dispatch)
    blocked = pool.starmap_async(rt.block_in_c,
                                 [(path, "pipe", read_end) for path in started], 1)
    for path in started:
        rt.wait_for(path)
    pool.terminate()
    pool.join()
    check_raises(f"{dispatch}: terminate abandons blocked workers",
                 poolparty.TerminatedError, blocked.get, 30)
    os.write(write_end, b"xx")
    check(f"{dispatch}: abandoned workers end",
          poolparty._poolparty.abandoned_workers(60) == 0)
    os.close(read_end)
    os.close(write_end)


def executor_phase(dispatch, n):
    with poolparty.SubinterpreterPoolExecutor(2, dispatch=dispatch) as ex:
        futures = [ex.submit(rt.increment, i) for i in range(n)]
        cancelled = sum(f.cancel() for f in futures[n // 2:])
        done = [f.result(60) for f in futures if not f.cancelled()]
        check(f"{dispatch}: executor ({cancelled} cancelled)",
              len(done) + cancelled == n)
        check(f"{dispatch}: executor map", list(ex.map(rt.increment, range(100),
                                                        chunksize=9)) ==
              list(range(1, 101)))
        # The C Future's slow paths: waiters and callbacks arriving while
        # results do, errors, arguments that need pickle.
        futures = [ex.submit(rt.increment, i) for i in range(n)]
        called = []
        for f in futures[::3]:
            f.add_done_callback(called.append)
        waiter = threading.Thread(target=concurrent.futures.wait, args=(futures, 60))
        waiter.start()
        finished = list(concurrent.futures.as_completed(futures, timeout=60))
        waiter.join(60)
        check(f"{dispatch}: executor waiters", len(finished) == n and
              len(called) == len(futures[::3]))
        failing = ex.submit(divmod, 1, 0)
        pickled = ex.submit(rt.increment, fractions.Fraction(1, 3))
        check(f"{dispatch}: executor error and pickled argument",
              isinstance(failing.exception(60), ZeroDivisionError) and
              pickled.result(60) == fractions.Fraction(4, 3))
    # shutdown(cancel_futures=True) of a fresh executor: starting workers
    # take a task each first (the hand-off and the boot wait)
    ex = poolparty.SubinterpreterPoolExecutor(2, dispatch=dispatch)
    futures = [ex.submit(rt.sleep_then, 0.01, i) for i in range(20)]
    ex.shutdown(cancel_futures=True)
    ran = [f for f in futures if not f.cancelled()]
    check(f"{dispatch}: cancel_futures ({len(ran)} ran)",
          ran and all(f.result(60) == futures.index(f) for f in ran))


def interpreter_phase():
    for _ in range(3):
        with poolparty.Interpreter() as interp:
            check("Interpreter.call", interp.call(divmod, 7, 2) == (3, 1))
            interp.exec("x = [i for i in range(100)]")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    n = parser.parse_args().tasks
    for dispatch in ("queue", "call"):
        pool_phase(dispatch, n)
        lifecycle_phase(dispatch)
        executor_phase(dispatch, n)
    interpreter_phase()
    gc.collect()
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
