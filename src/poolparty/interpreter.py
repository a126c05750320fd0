"""poolparty.Interpreter: one own-GIL subinterpreter you call into directly."""


from . import _engine
from . import _poolparty as _core
from ._errors import decode_error

__all__ = ["Interpreter"]


class Interpreter:
    """An isolated subinterpreter with its own GIL, for CPython 3.12+.

    Create it from any thread; then ``call()`` a function in it or
    ``exec()`` source in its ``__main__``, from any thread of this
    interpreter (one call runs at a time; while it runs, the calling
    thread releases this interpreter's GIL, so calls into several
    Interpreters from several threads run in parallel).

    Functions, arguments and results travel pickled.  An exception in the
    subinterpreter is raised here as the same type with the remote
    traceback as ``__cause__`` (or as :class:`poolparty.RemoteError` if
    it cannot be pickled).  It starts with this interpreter's
    ``sys.path``.  Close it with :meth:`close` or a ``with`` block.

    This is the building block of ``dispatch="call"``.
    """

    def __init__(self):
        _engine.refuse_in_worker()
        _engine.after_start()  # nothing to overlap: the creation waits
        try:
            self._core = _core.Interpreter(
                _engine.sys_path_blob(), _engine.boot_payload(None, ())
            )
            _engine.live_interpreters.add(self)
            return
        except _core.CoreError as exc:
            error = _remote(exc)
        raise error  # outside the except: no CoreError as __context__

    @property
    def id(self):
        """CPython's id for this interpreter, or None once closed."""
        return self._core.id

    @property
    def closed(self):
        return self._core.closed

    def call(self, func, /, *args, **kwargs):
        """Run ``func(*args, **kwargs)`` in the subinterpreter; return its result."""
        func_pickle, flag = _engine.function_pickle(func)
        args_pickle = _engine.dumps((args, kwargs or None))
        kind, result = self._core.call(_engine.TASK_CALL | flag, func_pickle,
                                       args_pickle)
        ok, value = _engine.decode(kind, result)
        if not ok:
            raise value
        return value

    def exec(self, source):
        """Run ``source`` (a str of statements) in the subinterpreter's __main__."""
        try:
            self._core.exec(source)
            return
        except _core.CoreError as exc:
            error = _remote(exc)
        raise error  # keeps the remote traceback as __cause__

    def close(self):
        """End the subinterpreter (waits for a running call).  Idempotent."""
        self._core.close()
        _engine.live_interpreters.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"id={self.id}"
        return f"<poolparty.Interpreter {state}>"


def _remote(core_error):
    """The exception a CoreError carrying a worker's encoded error stands for."""
    if core_error.args and isinstance(core_error.args[0], bytes):
        return decode_error(core_error.args[0])
    return core_error
