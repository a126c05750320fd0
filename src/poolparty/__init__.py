"""poolparty: run CPU-bound Python code in parallel on subinterpreters that
each own their GIL (PEP 684), on the CPython 3.12+ you already have.

>>> from poolparty import SubinterpreterPool
>>> with SubinterpreterPool(2) as pool:
...     pool.map(abs, [-1, -2, 3])
[1, 2, 3]

The public names are imported lazily: worker subinterpreters import
``poolparty._worker`` and must not pay for (or, on 3.12.1, be crashed
at exit by) multiprocessing's imports.
"""

__version__ = "0.1.0"

__all__ = [
    "BrokenInterpreterPool",
    "CheckResult",
    "Interpreter",
    "RemoteError",
    "SubinterpreterPool",
    "SubinterpreterPoolExecutor",
    "TerminatedError",
    "check",
    "get_reusable_executor",
]

_WHERE = {
    "SubinterpreterPool": "pool",
    "SubinterpreterPoolExecutor": "executor",
    "Interpreter": "interpreter",
    "BrokenInterpreterPool": "_errors",
    "RemoteError": "_errors",
    "TerminatedError": "_errors",
    "check": "_check",
    "CheckResult": "_check",
    "get_reusable_executor": "_reusable",
}


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'poolparty' has no attribute {name!r}")
    import sys

    worker = sys.modules.get("poolparty._worker")
    if worker is not None and worker.IN_WORKER and name in worker.REFUSED:
        # A worker running the user's main script meets its
        # `from poolparty import SubinterpreterPool`: the class cannot be
        # used there, so it need not cost multiprocessing's imports.
        value = worker.REFUSED[name]
    else:
        import importlib

        value = getattr(importlib.import_module(f"poolparty.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
