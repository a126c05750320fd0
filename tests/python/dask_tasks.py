"""Tasks for tests/python/test_dask.py: importable by Dask workers and by
poolparty's subinterpreters (standard library only)."""

import sys


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def add(*args, **kwargs):
    return sum(args) + sum(kwargs.values())


def where():
    """Where this ran: "subinterpreter" or "main", and which of dask and
    distributed were loaded in that interpreter."""
    from poolparty import _worker

    loaded = sorted({m.partition(".")[0] for m in sys.modules} & {"dask", "distributed"})
    return ("subinterpreter" if _worker.IN_WORKER else "main"), loaded


def fib_where(n):
    return fib(n), where()[0]


class TaskFailed(ValueError):
    pass


def fail(message):
    raise TaskFailed(message)


def describe(*args, **kwargs):
    """The types and values it was called with, for checking arguments."""
    return [(type(a).__name__, a) for a in args], dict(kwargs), where()[0]


def call(func, *args):
    return func(*args)


def make_array(n):
    import numpy  # loads in the main interpreter only

    return numpy.arange(n)


def length_where(x):
    return len(x), where()[0]
