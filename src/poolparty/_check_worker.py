"""The checker's worker process, and the trial it runs in subinterpreters.

``poolparty.check`` starts ``python -m poolparty._check_worker FD`` and
sends it one JSON line on stdin: ``{"path": sys.path, "modules": [...]}``.
For each module the worker makes a fresh ``poolparty.Interpreter`` (the
pool's own settings: isolated, own GIL), imports the module there with
:func:`trial`, closes it, and reports on file descriptor FD, one JSON line
per event: ``{"start": name}``, ``{"done": name, "outcome": {...},
"seconds": s}``, and ``{"end": true}`` when all are done.  Only the
checker reads FD: a module that prints to stdout cannot garble it.

A module that crashes or hangs takes this process down, not the checker:
the checker blames the module that was started and not done, and starts
a new worker for the rest.

:func:`trial` runs inside the subinterpreter, so this module imports
nothing but ``sys`` at its top.
"""

import sys

# What an isolated subinterpreter's refusals say, lowercased (CPython
# 3.12/3.13, PyO3, Cython, numpy), and the class each belongs to.
_EXTENSION_REFUSALS = (
    "does not support loading in subinterpreters",  # CPython: single-phase
    # init, or no per-interpreter GIL support
    "subinterpreter",  # PyO3: "PyO3 modules do not yet support subinterpreters"
    "interpreter change detected",  # Cython: one interpreter per process
    "more than once per process",  # numpy and others keeping process state
    "once per interpreter process",
)
_FEATURE_REFUSALS = (
    "daemon thread",  # threading.Thread(daemon=True).start()
    "fork",  # os.fork(), os.register_at_fork() effects, subprocess preexec
    "main interpreter",  # signal.signal()
    "subinterpreter",
)


def _first_line(text, wanted=()):
    """The line of ``text`` that says most: one with a wanted phrase, else
    the first non-blank one (numpy, for one, wraps the real error in a
    page of advice)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if any(phrase in line.lower() for phrase in wanted):
            return line
    return lines[0] if lines else ""


def _chain(exc):
    """``exc`` and the exceptions it was raised from or while handling,
    outermost first (suppressed contexts too: they hold the root cause)."""
    seen = []
    while exc is not None and not any(exc is e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _classify(exc):
    """(kind, the exception that says why) for an import's failure.

    kind is "extension" (an extension module refused to load here),
    "feature" (the module used something an isolated subinterpreter
    refuses: daemon threads, fork, signal handlers) or None (no sign of a
    subinterpreter limit: the checker then tries the main interpreter).
    """
    # Innermost first: a package that wraps the refusal in advice of its
    # own (numpy) still has the original as its cause.
    chain = _chain(exc)[::-1]
    for culprit in chain:
        text = str(culprit).lower()
        if isinstance(culprit, ImportError) and any(
                phrase in text for phrase in _EXTENSION_REFUSALS):
            return "extension", culprit
    for culprit in chain:
        text = str(culprit).lower()
        if isinstance(culprit, (RuntimeError, ValueError, OSError)) and any(
                phrase in text for phrase in _FEATURE_REFUSALS):
            return "feature", culprit
    return None, exc


def _refusing_module(exc, refused):
    """The extension module whose refusal ``exc`` reports, if known."""
    name = getattr(exc, "name", None)
    if not name:
        # CPython says "module X does not support loading in
        # subinterpreters", X being the name the extension gave itself.
        words = str(exc).split()
        for before, word in zip(words, words[1:]):
            if before == "module" and word.replace(".", "").replace(
                    "_", "").isalnum():
                name = word
                break
    for full, _ in refused:  # the name it was imported under
        if name is None or full == name or full.endswith("." + name):
            name = full
    return name


def describe(exc, refused=()):
    """Plain data about an import's failure (see :func:`trial`)."""
    kind, culprit = _classify(exc)
    wanted = _EXTENSION_REFUSALS + _FEATURE_REFUSALS if kind else ()
    try:
        line = _first_line(str(culprit), wanted)
    except BaseException:  # a broken __str__
        line = "(str() of the exception failed)"
    reason = type(culprit).__name__ + (f": {line}" if line else "")
    culprit_name = (_refusing_module(culprit, refused)
                    if kind == "extension" else None)
    if culprit_name and "." in culprit_name:
        # 3.13 names the module by its last part: say which it is.
        short = culprit_name.rpartition(".")[2]
        reason = reason.replace(f"module {short} ", f"module {culprit_name} ",
                                1)
    if kind is None and refused:
        # Extension modules refused, the package caught that and then
        # failed otherwise (PyYAML's _yaml shim; zoneinfo without the
        # datetime C API on 3.12): the refusals are the likely cause.
        kind = "extension"
        reason += (" (after " + ", ".join(name for name, _ in refused)
                   + " refused to load)")
    return {
        "kind": kind,
        "reason": reason[:300],
        "culprit": culprit_name,
        "not_found": isinstance(exc, ModuleNotFoundError),
        "missing_name": getattr(exc, "name", None),
    }


def trial(name):
    """Import module ``name`` in this (fresh) interpreter and describe it.

    Returns ``{"ok": bool, "refused": [(extension, reason), ...], ...}``
    plus, on failure, what :func:`describe` says.  ``refused`` lists the
    extension modules that refused to load on the way, even when the
    package caught that and fell back (PyYAML without its C loader, for
    one), so a module can "load" yet run slower or with less.
    """
    from importlib import machinery

    refused = []
    loader = machinery.ExtensionFileLoader
    create_module = loader.create_module

    def recording_create_module(self, spec):
        try:
            return create_module(self, spec)
        except ImportError as exc:
            if all(spec.name != name for name, _ in refused):
                refused.append((spec.name, _first_line(str(exc))[:300]))
            raise

    loader.create_module = recording_create_module
    try:
        __import__(name)
    except BaseException as exc:  # SystemExit at import is a failure too
        return {"ok": False, "refused": refused, **describe(exc, refused)}
    finally:
        loader.create_module = create_module
    return {"ok": True, "refused": refused}


def _in_main(name):
    """None if module ``name`` imports in this (main) interpreter, else
    one line saying why not."""
    import importlib

    try:
        importlib.import_module(name)
    except BaseException as exc:
        return describe(exc)["reason"]
    return None


def serve():
    """The worker process's main loop (see the module docstring)."""
    import json
    import os
    import time

    report = os.fdopen(int(sys.argv[1]), "w", buffering=1)

    def send(**event):
        sys.stdout.flush()
        sys.stderr.flush()  # so the checker's stderr offsets line up
        report.write(json.dumps(event) + "\n")

    request = json.loads(sys.stdin.readline())
    sys.path[:] = request["path"]
    from poolparty.interpreter import Interpreter

    for name in request["modules"]:
        send(start=name)
        started = time.perf_counter()
        try:
            with Interpreter() as interp:
                outcome = interp.call(trial, name)
        except BaseException as exc:
            # The trial itself could not run (no interpreter could be
            # made): not the module's doing.
            outcome = {"ok": False, "checker_error": describe(exc)["reason"]}
        seconds = time.perf_counter() - started
        if not outcome["ok"] and "checker_error" not in outcome and (
                outcome["kind"] is None
                and not (outcome["not_found"]
                         and outcome["missing_name"] == name)):
            # No sign of a subinterpreter limit: does it fail everywhere?
            outcome["main"] = _in_main(name)
        send(done=name, outcome=outcome, seconds=seconds)
    send(end=True)


if __name__ == "__main__":
    # Through the package, so that trial() pickles as
    # poolparty._check_worker.trial rather than __main__.trial.
    from poolparty._check_worker import serve as _serve

    _serve()
