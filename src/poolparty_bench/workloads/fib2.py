"""Recursive Fibonacci through a method that writes an instance attribute.

Every call increments ``self.x`` on an instance that belongs to one task
only, so nothing is shared between tasks; the workload measures how a mode
copes with heavy attribute writes.  (In the original study this was the case
where the nogil fork's threads were ~10x slower than sequential.)
"""

from . import fib as _fib

NAME = "fib2"
DESCRIPTION = "recursive fibonacci(28) as a method doing self.x += 1 per call, 64 tasks"

N_TASKS = _fib.N_TASKS


class Counter:
    def __init__(self):
        self.x = 0

    def fib(self, n):
        self.x += 1
        if n < 2:
            return 1
        return self.fib(n - 1) + self.fib(n - 2)


def inputs(scale: float) -> list:
    return [_fib.depth_for_scale(scale)] * N_TASKS


def task(arg):
    # A fresh instance per task: the attribute writes never touch shared data.
    return Counter().fib(arg)


def check(inputs: list, results: list) -> bool:
    return _fib.check(inputs, results)
