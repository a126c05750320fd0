"""Sending by value what pickle can only send by name (main interpreter).

pickle sends a function or class by name: the worker imports its module
and looks the name up.  That fails for lambdas, closures, functions and
classes defined inside functions, and for anything defined in a
``__main__`` that workers cannot run again (a notebook, the REPL,
``python -c``).  Those travel by value with cloudpickle, as loky, joblib
and Dask send them; everything pickle can send by name keeps doing so.

A function or class sent by value is pickled once, at its first
submission (``poolparty._engine.function_pickle`` keeps the bytes); a
pool's engine keeps one copy of them while its tasks need them
(src/core/fnstore.c), the tasks carrying only the header of
function_data's reference, and each worker unpickles it once and keeps
it (``poolparty._worker.resolve_function``).  What the worker gets is a
snapshot: globals and closure variables as they were when it was
pickled.
"""

import itertools
import pickle
import types

from . import _poolparty as _core

# What pickle raises for an object it can only send by name and cannot
# find by name (PicklingError; AttributeError for local objects) or for a
# type it has no reducer for that cloudpickle may have (TypeError).
REFUSED = (pickle.PicklingError, AttributeError, TypeError)

# A task's function bytes that start with this are a by-value reference
# (see function_data); a by-name reference starts with a module name.
BY_VALUE_PREFIX = b"\0v"

_tokens = itertools.count(1)
_main_runs_in_workers = None


def _main_is_rerunnable():
    """Whether workers can run the parent's ``__main__`` (a script, ``-m``)."""
    global _main_runs_in_workers
    if _main_runs_in_workers is None:
        from ._engine import _main_info

        _main_runs_in_workers = _main_info() != (None, None)
    return _main_runs_in_workers


def needs_value(data):
    """Whether a pickle names something in a ``__main__`` no worker has.

    In a notebook, the REPL or ``python -c``, pickle sends a function or
    class defined there as ``__main__.name``, which the main interpreter
    finds and a worker never will.  (A false alarm, the bytes
    ``__main__`` inside some string, only costs cloudpickle's slower
    path.)
    """
    return b"__main__" in data and not _main_is_rerunnable()


def dumps(obj, buffers=None):
    """Pickle ``obj`` (protocol 5), by value where pickle cannot send it.

    With a list ``buffers``, the out-of-band buffers (protocol 5's
    PickleBuffers) are left in it instead of copied into the pickle.
    """
    try:
        data = _dumps_with(pickle.dumps, obj, buffers)
    except REFUSED:
        return cloud_dumps(obj, buffers)
    return cloud_dumps(obj, buffers) if needs_value(data) else data


def _dumps_with(dumps, obj, buffers):
    """dumps(obj, 5), its PickleBuffers out of band in ``buffers`` when
    that is a list (pickle refuses non-contiguous ones either way)."""
    if buffers is None:
        return dumps(obj, 5)
    del buffers[:]
    return dumps(obj, 5, buffer_callback=buffers.append)


def cloud_dumps(obj, buffers=None):
    """cloudpickle's bytes for ``obj``; its error, explained, if it cannot."""
    import cloudpickle

    try:
        return _dumps_with(cloudpickle.dumps, obj, buffers)
    except Exception as exc:
        where = _unsendable_part(obj, cloudpickle)
        what = f"{_describe(obj)} cannot be sent to the workers"
        if where is not None:
            what += f": its {where} cannot be pickled"
        exc.add_note(
            f"poolparty: {what}.  Make such objects inside the task, or "
            "pass what they are made from as arguments."
        )
        raise


def function_data(func):
    """``(data, flags)`` for a callable that travels by value.

    A function or class becomes a reference the worker unpickles once and
    keeps: ``b"\\0v<token>\\0<module>\\0<qualname>\\0"`` and cloudpickle's
    bytes, with the flags of a by-name reference (the worker's cache of
    its last function then works as for one).  Other callables (a partial
    of a lambda, an instance) are cloudpickle's bytes, unpickled afresh by
    every task as multiprocessing does with callables that have state.
    """
    data = cloud_dumps(func)
    if not isinstance(func, (types.FunctionType, type)):
        return data, 0
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    header = b"\0".join([
        BY_VALUE_PREFIX + str(next(_tokens)).encode(),
        module.encode("utf-8", "surrogatepass"),
        qualname.encode("utf-8", "surrogatepass"),
    ])
    flags = _core.PP_TASK_REUSE_FUNC | _core.PP_TASK_FUNC_BY_NAME
    return header + b"\0" + data, flags


def _type_name(value):
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _describe(obj):
    if isinstance(obj, (types.FunctionType, type)):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__qualname__} object"


def _global_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _parts(obj):
    """``(description, value)`` for what pickling ``obj`` pickles."""
    if isinstance(obj, types.FunctionType):
        name = obj.__qualname__
        code = obj.__code__
        for var, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                yield f"closure variable {var!r} of {name}", cell.cell_contents
            except ValueError:  # an empty cell
                pass
        for var in sorted(_global_names(code)):
            if var in obj.__globals__:
                yield f"global {var!r} used by {name}", obj.__globals__[var]
        for i, value in enumerate(obj.__defaults__ or ()):
            yield f"default argument {i} of {name}", value
        for var, value in (obj.__kwdefaults__ or {}).items():
            yield f"default of {var!r} of {name}", value
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            yield f"item {i}", value
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield f"value for {key!r}", value
    elif hasattr(obj, "func") and hasattr(obj, "args"):  # a partial
        yield "function", obj.func
        for i, value in enumerate(obj.args):
            yield f"argument {i}", value
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for key, value in state.items():
                yield f"attribute {key!r}", value


def _unsendable_part(obj, cloudpickle, depth=0):
    """Which part of ``obj`` cloudpickle refuses, as words, or None."""
    if depth > 4:
        return None
    try:
        for where, value in _parts(obj):
            try:
                cloudpickle.dumps(value, 5)
            except Exception:
                deeper = _unsendable_part(value, cloudpickle, depth + 1)
                found = f"{where} ({_type_name(value)})"
                return found if deeper is None else f"{found}, whose {deeper}"
    except Exception:  # a broken __dict__, a cell that raises: give up
        return None
    return None
