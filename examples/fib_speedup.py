"""fib(27) over 32 items: SubinterpreterPool(2) against sequential, in one run.

    .venv/3.13/bin/python examples/fib_speedup.py [--dispatch queue|call] [--repeat N]

`fib` lives in this script's __main__, so the workers find it by running
this script as __mp_main__ (as multiprocessing's spawn does).  Prints the
best of N timings of each and their ratios -- the map on a started pool,
and the map with the pool's start and stop -- and exits 1 if results
differ.
"""

import argparse
import time

from poolparty import SubinterpreterPool


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def best_of(repeat, fn):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatch", default="queue", choices=["queue", "call"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=27)
    parser.add_argument("--items", type=int, default=32)
    args = parser.parse_args()
    items = [args.n] * args.items

    sequential, expected = best_of(args.repeat, lambda: list(map(fib, items)))

    def pooled():
        # Pool start and stop count, as they would in a real program.
        with SubinterpreterPool(2, dispatch=args.dispatch) as pool:
            return pool.map(fib, items)

    parallel, got = best_of(args.repeat, pooled)
    # The map alone, on a pool whose workers are up (and have loaded this
    # script once), as a long-lived program sees it.
    with SubinterpreterPool(2, dispatch=args.dispatch) as pool:
        pool.map(fib, [1, 1], 1)
        mapped, got_mapped = best_of(args.repeat, lambda: pool.map(fib, items))
    correct = got == expected and got_mapped == expected
    print(f"sequential {sequential:.3f} s; SubinterpreterPool(2, "
          f"dispatch={args.dispatch!r}): map {mapped:.3f} s, speedup "
          f"{sequential / mapped:.2f}x; with pool start and stop "
          f"{parallel:.3f} s, speedup {sequential / parallel:.2f}x; "
          f"correct={correct}")
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
