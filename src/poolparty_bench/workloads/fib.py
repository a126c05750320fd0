"""Naive recursive Fibonacci: pure interpreter overhead, no shared state."""

import math

NAME = "fib"
DESCRIPTION = "recursive fibonacci(28) per task, 64 tasks (pure CPU, nothing shared)"

N_TASKS = 64
BASE_N = 28
MIN_N = 10
_PHI = (1.0 + math.sqrt(5.0)) / 2.0


def depth_for_scale(scale: float, base: int = BASE_N) -> int:
    """The recursion depth whose cost is about ``scale`` times that of ``base``.

    The number of calls made by fib(n) grows like phi**n, so shrinking the
    work by ``scale`` means lowering n by log(scale) / log(phi).
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return max(MIN_N, base + round(math.log(scale) / math.log(_PHI)))


def fib(n):
    if n < 2:
        return 1
    return fib(n - 1) + fib(n - 2)


def fib_iterative(n: int) -> int:
    """Same sequence (fib(0) == fib(1) == 1), computed in O(n)."""
    a, b = 1, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def inputs(scale: float) -> list:
    return [depth_for_scale(scale)] * N_TASKS


def task(arg):
    return fib(arg)


def check(inputs: list, results: list) -> bool:
    if len(results) != len(inputs):
        return False
    expected = {n: fib_iterative(n) for n in set(inputs)}
    return all(type(r) is int and r == expected[n] for n, r in zip(inputs, results))
