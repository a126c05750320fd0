"""Code that runs inside every worker subinterpreter.

The C core imports this module right after creating a worker's
interpreter, calls :func:`bootstrap` once, :func:`resolve_function`
for a function that travels by name, and :func:`encode_error` whenever
a task raises.  The hot path (decode, call, encode) is in C; this module
only holds the rare paths.

Keep the imports minimal: on CPython 3.12.1 an isolated subinterpreter
that imported hashlib, ssl or asyncio makes the process abort at exit,
and everything imported here is paid for by every worker's start-up.
Even the pickler is imported only when something needs it (the C core
does the same): tasks with a module-level function and plain data never
do, and _pickle brings functools, collections and more.
"""

import sys

# Set while a worker runs inside a poolparty subinterpreter: creating a
# pool from inside a worker is refused (see poolparty._engine).
IN_WORKER = False

_REFUSAL = (
    "a poolparty pool cannot be created inside a poolparty worker. If this "
    "happens while the worker runs your main script, put the code that "
    "creates the pool under `if __name__ == '__main__':`."
)


def _refused(name):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(_REFUSAL)

    return type(name, (), {"__init__": __init__, "__module__": "poolparty",
                           "__doc__": "Unavailable inside a worker."})


# What `from poolparty import ...` gives inside a worker (see
# poolparty.__getattr__): stand-ins that refuse, instead of the real
# classes and the imports they would cost every worker's start-up.
REFUSED = {name: _refused(name) for name in
           ("SubinterpreterPool", "SubinterpreterPoolExecutor", "Interpreter")}


class _LazyMain(type(sys)):
    """The worker's ``__main__``: the parent's main script, run on first use.

    Like multiprocessing's spawn start method, functions defined in the
    user's ``__main__`` are found by running the main script under the
    name ``__mp_main__`` (so ``if __name__ == "__main__":`` blocks do
    not run).  Unlike spawn, the script only runs when a task or the
    initializer actually needs something from it, so workers of programs
    whose tasks live in importable modules start without it.
    """

    def __getattr__(self, name):
        # Attribute lookups that only probe the module must not run the
        # user's script.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        _run_main(self)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(
                f"module '__main__' (the parent's main script, run in the "
                f"worker as __mp_main__) has no attribute {name!r}"
            ) from None


def _run_main(module):
    """Run the parent's main script or module into ``module``, once."""
    info = module.__dict__.pop("_poolparty_main", None)
    module.__class__ = type(sys)  # from now on, an ordinary module
    if info is None:
        return
    path, modname = info
    if modname is not None:
        import runpy

        namespace = runpy.run_module(
            modname, run_name="__mp_main__", alter_sys=False
        )
        module.__dict__.update(namespace)
        return
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec")
    module.__dict__["__file__"] = path
    exec(code, module.__dict__)


def _install_main(path, modname):
    module = _LazyMain("__mp_main__")
    module.__dict__["__builtins__"] = __builtins__
    module.__dict__["_poolparty_main"] = (path, modname)
    sys.modules["__mp_main__"] = module
    sys.modules["__main__"] = module


class _MainImportsFirst:
    """CPython 3.12 only: the main interpreter imports every module first.

    Two 3.12.1 bugs crash the process at exit after an isolated
    subinterpreter is the first to import certain modules: a refused
    single-phase-init extension module (_decimal, ...) is freed twice, and
    modules such as hashlib, ssl and asyncio leave memory from the
    subinterpreter's allocator to be freed by the main interpreter
    ("free(): invalid pointer").  Both are avoided when the main
    interpreter has imported the module before the worker does.  This
    meta-path finder asks for that (in a pool, a round trip to the
    collector thread; in a poolparty.Interpreter call, a switch back to the
    main interpreter on the calling thread; once per module per worker)
    and never loads anything itself.
    """

    def __init__(self):
        self.seen = set()

    def find_spec(self, name, path=None, target=None):
        if name not in self.seen:
            self.seen.add(name)
            from . import _poolparty

            _poolparty.main_import(name)
        return None


def _pickle():
    # The C pickler itself: the pure-Python `pickle` module would also
    # import re, struct and more.
    import _pickle

    return _pickle


def bootstrap(payload):
    """Prepare a fresh worker interpreter; called once by the C core.

    ``payload`` is ``(main_path, main_modname, init_pickle)`` (the path
    file-system-encoded), made by ``poolparty._engine.boot_payload`` and
    decoded by the core.  Raising
    here fails the worker's start, and the pool reports the error to the
    caller.
    """
    global IN_WORKER
    IN_WORKER = True
    if sys.version_info < (3, 13):
        sys.meta_path.insert(0, _MainImportsFirst())
    main_path, main_modname, init_pickle = payload
    if main_path is not None:
        import os  # already imported by site, in practice

        main_path = os.fsdecode(main_path)
    if main_path is not None or main_modname is not None:
        _install_main(main_path, main_modname)
    if init_pickle is not None:
        initializer, initargs = _pickle().loads(init_pickle)
        initializer(*initargs)


def resolve_function(reference, data=None):
    """The object a by-name function reference (``b"module\\0qualname"``) names.

    What unpickling a by-reference pickle of it does: import the module,
    then follow the dotted qualified name (in ``__main__``, the parent's
    script, run as ``__mp_main__`` on first use).  A by-value reference
    (see poolparty._byvalue.function_data) is unpickled once per worker;
    a pool's task carries only its header, and None asks the C core for
    the bytes (``data``), which it reads from the engine's store.
    """
    if reference[:2] == b"\0v":
        return _by_value_function(reference, data)
    module_name, _, qualname = reference.decode(
        "utf-8", "surrogatepass").partition("\0")
    __import__(module_name)
    found = sys.modules[module_name]
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


# This worker's copies of functions and classes sent by value, by token.
_by_value = {}
_BY_VALUE_MAX = 256


def _by_value_function(reference, data=None):
    """Unpickle a by-value reference's function, or the copy kept from before.

    The bytes are cloudpickle's, after the header or in ``data``; None
    when neither has them.  The C pickler loads them, importing
    cloudpickle for its reconstructors.
    """
    token, module, qualname, inline = reference[1:].split(b"\0", 3)
    found = _by_value.get(token)
    if found is not None:
        return found
    data = inline or data
    if not data:
        return None
    try:
        found = _pickle().loads(data)
    except ImportError as exc:
        name = module.decode("utf-8", "surrogatepass")
        qualname = qualname.decode("utf-8", "surrogatepass")
        missing = _module_named(exc)
        error = ImportError(
            f"{name}.{qualname} was sent by value and needs "
            f"{'module ' + repr(missing) if missing else 'a module'}, which "
            f"cannot be imported in this worker: {exc} "
            f"(a worker imports from the sys.path the pool started with)",
            name=missing,
        )
        raise error from exc
    if len(_by_value) >= _BY_VALUE_MAX:
        _by_value.clear()
    _by_value[token] = found
    _name_in_main(found)
    for value in getattr(found, "__globals__", {}).values():
        _name_in_main(value)
    return found


def _name_in_main(obj):
    """Make a class or function of the parent's ``__main__`` findable here.

    pickle sends a class by name, so a result that is an instance of a
    class defined in a notebook must find it as ``__main__.Name`` in the
    worker to be pickled (the caller then gets its own class, the one of
    that name).  cloudpickle's copy is put under that name in this
    worker's ``__main__`` -- unless the name is already there (a script
    run as ``__mp_main__``), read without running the script.
    """
    if not isinstance(obj, type) or obj.__module__ != "__main__":
        return
    name = obj.__qualname__
    main = sys.modules.get("__main__")
    if main is not None and name.isidentifier() and name not in main.__dict__:
        setattr(main, name, obj)


def dumps_by_value(value):
    """cloudpickle's bytes for a result pickle refused, or None.

    The C core calls this only when pickling a result failed: a lambda,
    or an instance of a class that this worker got by value and whose
    name pickle cannot find.  None keeps pickle's error.

    On CPython 3.12 only a worker that already has cloudpickle (it got a
    function or class by value) tries it: a 3.12.1 worker whose first
    import of cloudpickle comes here, for a result that pickle refused,
    brings the whole process down at exit ("munmap_chunk(): invalid
    pointer", or a segfault; 3.13 does not).
    """
    if sys.version_info < (3, 13) and "cloudpickle" not in sys.modules:
        return None
    try:
        import cloudpickle

        return cloudpickle.dumps(value, 5)
    except Exception:
        return None


def call_in_frame(func, args, kwargs):
    """Call a builtin from a Python frame (the C core uses this for builtins).

    eval(), exec(), globals(), locals() and vars() look at the frame that
    called them; called straight from C there is none, and CPython raises
    SystemError.  In a multiprocessing worker there is one, so there is
    one here too.
    """
    return func(*args, **(kwargs or {}))


def map_in_frame(func, items, star):
    """``[func(x) for x in items]`` (``func(*x)`` if star), for builtins."""
    if star:
        return [func(*item) for item in items]
    return [func(item) for item in items]


def _module_named(exc):
    """The module an ImportError is about, or None."""
    # CPython says "module X does not support loading in subinterpreters"
    # without setting exc.name.
    words = str(exc).split()
    return getattr(exc, "name", None) or (
        words[1] if len(words) > 1 and words[0] == "module" else None)


def _with_hint(exc):
    """Add what a pool user needs to know to errors peculiar to workers."""
    if isinstance(exc, ImportError) and "subinterpreter" in str(exc):
        name = _module_named(exc) or "this extension module"
        exc.add_note(
            f"poolparty: {name} cannot be imported in an isolated "
            "subinterpreter (it does not support per-interpreter state). "
            "Import it in the main interpreter, or use "
            "multiprocessing/concurrent.futures.ProcessPoolExecutor for "
            "tasks that need it."
        )
    return exc


_MISSING = object()


def encode_error(exc, unpicklable_value=_MISSING):
    """Encode a task's exception for the trip to the caller.

    Returns the pickle of ``("error", type_name, message, traceback_text,
    exception_pickle_or_None)``; the exception itself travels pickled
    when it can, and otherwise the caller rebuilds a RemoteError from the
    other fields.  With ``unpicklable_value``, the task succeeded but its
    result could not be pickled: returns ``("unpicklable", repr(value),
    repr(exc))`` as multiprocessing's MaybeEncodingError wants.
    """
    pickle = _pickle()
    if unpicklable_value is not _MISSING:
        return pickle.dumps(
            ("unpicklable", _safe_repr(unpicklable_value), _safe_repr(exc)), 5
        )
    _with_hint(exc)
    import traceback

    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # a broken __str__, a RecursionError while formatting
        text = f"{type(exc).__qualname__}: (traceback unavailable)\n"
    try:
        exc_pickle = pickle.dumps(exc, 5)
    except BaseException:
        exc_pickle = None
    try:
        message = str(exc)
    except BaseException:
        message = "(str() of the exception failed)"
    kind = type(exc)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return pickle.dumps(("error", name, message, text, exc_pickle), 5)


def joined_repr(sent, rest_repr, limit=500):
    """_safe_repr(sent + rest), from the list `sent` and _safe_repr(rest)
    of a list `rest`: the repr of a chunk in parts whose last results
    could not be sent (the parts went; their values are decoded in the
    main interpreter, and plain data's repr is the same there).  Exact:
    when the rest's repr was cut, so is the whole's, within what is kept
    of the rest's."""
    if not sent or not rest_repr.startswith("["):
        return rest_repr
    text = "["
    for value in sent:
        text += _safe_repr(value, limit) + ", "
        if len(text) > limit:
            break
    text += rest_repr[1:]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_repr(value, limit=500):
    try:
        text = repr(value)
    except BaseException:
        text = f"<{type(value).__qualname__} object (repr failed)>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
