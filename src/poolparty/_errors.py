"""poolparty's exceptions, and turning a worker's encoded error back into one."""

import pickle
from concurrent.futures import BrokenExecutor

# multiprocessing.pool's MaybeEncodingError and RemoteTraceback are
# imported where a worker's error is rebuilt, not here: this module is
# imported by every pool and executor, and multiprocessing.pool's import
# (with multiprocessing's) is the largest part of a first pool's start,
# which an executor would otherwise pay for nothing (docs/design.md,
# "Starting a worker").

__all__ = [
    "BrokenInterpreterPool",
    "RemoteError",
    "TerminatedError",
    "decode_error",
]


class BrokenInterpreterPool(BrokenExecutor):
    """A worker could not start (its initializer raised, or its
    subinterpreter could not be created), so the pool stopped.

    The worker's own exception is attached as ``__cause__``.  Create a
    new pool after fixing the initializer.
    """


class TerminatedError(RuntimeError):
    """The task was dropped because the pool was terminated before it ran."""


class RemoteError(Exception):
    """A task raised an exception that could not be sent back as itself
    (it could not be pickled or unpickled).

    ``type_name``, ``message`` and ``traceback`` describe the original;
    ``str()`` reads like the original's ``TypeName: message``.
    """

    def __init__(self, type_name, message, traceback=""):
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self):
        return f"{self.type_name}: {self.message}"


def _attach(exc, traceback_text):
    """Attach the worker's traceback the way multiprocessing does."""
    if traceback_text:
        from multiprocessing.pool import RemoteTraceback

        exc.__cause__ = RemoteTraceback(
            f'\n"""\n{traceback_text}"""'
        )
    return exc


def decode_error(payload):
    """The exception a worker encoded (see poolparty._worker.encode_error).

    Never raises: whatever cannot be rebuilt becomes a RemoteError.
    """
    payload = bytes(payload)
    if not payload.startswith(b"\x80"):
        # The C core's last-resort plain text ("TypeName: message").
        text = payload.decode("utf-8", "replace")
        name, _, message = text.partition(": ")
        return RemoteError(name, message)
    try:
        record = pickle.loads(payload)
    except Exception as exc:  # pragma: no cover - our own pickle
        return RemoteError("poolparty.DecodeError", repr(exc))
    if record[0] == "unpicklable":
        from multiprocessing.pool import MaybeEncodingError

        _, value_repr, exc_repr = record
        # MaybeEncodingError repr()s what it is given; the worker already
        # sent reprs, so set them as multiprocessing would have.
        error = MaybeEncodingError(None, None)
        error.exc, error.value = exc_repr, value_repr
        error.args = (exc_repr, value_repr)
        return error
    _, type_name, message, traceback_text, exc_pickle = record
    if exc_pickle is not None:
        try:
            exc = pickle.loads(exc_pickle)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            return _attach(exc, traceback_text)
    return _attach(RemoteError(type_name, message, traceback_text), traceback_text)
