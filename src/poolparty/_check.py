"""poolparty.check: which modules load in a pool's subinterpreters.

Each module is imported in a fresh ``poolparty.Interpreter`` (isolated,
own GIL: a pool worker's settings) inside a worker process
(``poolparty._check_worker``), one module after another.  The worker
process, not this one, takes the blow when a module crashes (segfault,
abort) or hangs: the module being tried is blamed, the worker is
killed if need be, and a new one goes on with the rest.  A worker whose
process dies at exit after all its modules were tried (CPython 3.12.1
aborts at exit after an isolated subinterpreter imported some modules)
is found out too: its modules are tried again one per process, and the
one that still makes the process die at exit is reported as loading,
then aborting the process at exit.
"""

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable

__all__ = ["CheckResult", "check", "default_modules", "stdlib_modules"]

# What each class of refusal leaves the user (README, "Which modules load").
ADVICE = {
    "extension": "an extension module that cannot load in an own-GIL "
    "subinterpreter: keep the calls that need it in the main interpreter "
    "(or route them to threads or processes: Dask annotations, "
    "docs/dask.md), or use a process pool",
    "feature": "the module starts daemon threads, forks or sets signal "
    "handlers at import, which isolated subinterpreters refuse: keep it "
    "in the main interpreter or use a process pool",
}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What importing one module in a fresh pool subinterpreter did.

    ``status`` is one of:

    - ``"loads"``: the import succeeded;
    - ``"refused"``: it failed in the subinterpreter (``kind``
      ``"extension"``: an extension module refused to load, named by
      ``culprit``, perhaps a dependency's; ``"feature"``: the module used
      daemon threads, fork or signals; ``None``: another error, while the
      module imports in the main interpreter);
    - ``"error"``: it fails in the main interpreter too (not installed,
      broken): nothing to do with subinterpreters;
    - ``"crashed"``: the process died (segfault, abort) while importing it;
    - ``"hung"``: no answer within the timeout.

    ``reason`` says why in one line.  ``fallbacks`` lists the extension
    modules that refused to load during the import, with why: for a
    module that loads, what the package went on without (a C
    accelerator, 3.12's ``_datetime``); for a refused one, the likely
    cause.  ``at_exit`` is set when
    the process that imported this module, and no other, died or hung at
    exit afterwards.
    """

    module: str
    status: str
    reason: str = ""
    kind: str | None = None
    culprit: str | None = None
    fallbacks: tuple[str, ...] = ()
    at_exit: str | None = None
    distribution: str | None = None
    version: str | None = None
    seconds: float = 0.0

    @property
    def ok(self):
        """True when the module loads and the process exits cleanly."""
        return self.status == "loads" and self.at_exit is None

    def to_dict(self):
        return dataclasses.asdict(self)


def _importable(names):
    """The names among ``names`` that name a findable top-level module."""
    from importlib import util

    found = set()
    for name in names:
        if not name.isidentifier() or name.startswith("__"):
            continue  # __pycache__, editable-install hooks' helpers
        try:
            if util.find_spec(name) is not None:
                found.add(name)
        except (ImportError, ValueError):
            pass
    return sorted(found)


def default_modules():
    """Every importable top-level module of the installed distributions."""
    from importlib import metadata

    return _importable(metadata.packages_distributions())


# Standard-library modules whose import acts on the world (a browser, a
# poem on stdout): not tried by --stdlib.
_STDLIB_SKIPPED = {"antigravity", "this"}


def stdlib_modules():
    """Every importable top-level module of this CPython's standard library
    (``sys.stdlib_module_names``)."""
    return _importable(sys.stdlib_module_names - _STDLIB_SKIPPED)


def _origins():
    """top-level module -> (distribution, version), from the metadata."""
    from importlib import metadata

    origins = {}
    for top, dists in metadata.packages_distributions().items():
        try:
            origins[top] = (dists[0], metadata.version(dists[0]))
        except Exception:  # broken metadata: the name alone
            origins[top] = (dists[0], None)
    return origins


def _signal_name(returncode):
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _death(returncode, stderr_tail):
    """One line for a worker process that died: how, and what it said."""
    how = (f"killed by {_signal_name(returncode)}" if returncode < 0
           else f"exited with status {returncode}")
    lines = [line.strip() for line in stderr_tail.splitlines()
             if line.strip()]
    said = ""
    for line in reversed(lines):
        if line.startswith("Fatal Python error"):
            said = line
            break
    if not said:
        for line in reversed(lines):
            # glibc's heap checks, e.g. "free(): invalid pointer"
            if "free" in line or "corrupt" in line or "malloc" in line:
                said = line
                break
    if not said and lines:
        said = lines[-1]
    return how + (f" ({said[:200]})" if said else "")


class _WorkerRun:
    """One worker process trying a list of modules, one after another.

    Afterwards: ``outcomes`` (name -> (outcome, seconds)) in the order
    tried; ``blamed`` ((name, status, reason) for the module the process
    crashed or hung in, or None); ``at_exit`` (why the process failed
    after trying them all, or None).
    """

    def __init__(self, modules, timeout, on_start):
        self.modules = list(modules)
        self.timeout = timeout
        self.on_start = on_start
        self.outcomes = {}
        self.blamed = None
        self.at_exit = None

    def run(self):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        # glibc writes its heap-corruption messages to the terminal
        # unless told to use stderr, where the checker reads them.
        env["LIBC_FATAL_STDERR_"] = "1"
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-X", "faulthandler", "-m",
                     "poolparty._check_worker", str(write_fd)],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                    stderr=err, pass_fds=(write_fd,), env=env,
                )
            finally:
                os.close(write_fd)
            try:
                with os.fdopen(read_fd, "rb") as reports:
                    self._talk(proc, reports, err)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdin:
                    proc.stdin.close()

    def _talk(self, proc, reports, err):
        path = [os.fspath(entry) for entry in sys.path
                if isinstance(entry, (str, os.PathLike))]
        request = {"path": path, "modules": self.modules}
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        current, err_offset = None, 0
        buffer = b""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                ready = select.select([reports], [], [], max(left, 0))[0]
                if not ready:
                    proc.kill()
                    proc.wait()
                    self._hung(current)
                    return
                chunk = os.read(reports.fileno(), 65536)
                if not chunk:
                    self._died(proc, current, err, err_offset)
                    return
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            event = json.loads(line)
            deadline = time.monotonic() + self.timeout
            if "start" in event:
                current = event["start"]
                err.flush()
                err_offset = err.seek(0, os.SEEK_END)
                self.on_start(current)
            elif "done" in event:
                self.outcomes[event["done"]] = (event["outcome"],
                                                event["seconds"])
                current = None
            elif "end" in event:
                self._wait_exit(proc, err, err_offset)
                return

    def _hung(self, current):
        if current is None:
            raise RuntimeError(
                "poolparty.check: the worker process "
                "(python -m poolparty._check_worker) gave no sign of life "
                f"within {self.timeout:g} s")
        self.blamed = (current, "hung",
                       f"no answer within {self.timeout:g} s (the import "
                       f"hangs or is very slow); its process was killed")

    def _died(self, proc, current, err, err_offset):
        returncode = proc.wait()
        err.seek(err_offset)
        tail = err.read()[-4000:].decode("utf-8", "replace")
        if current is None:
            if not self.outcomes:
                raise RuntimeError(
                    "poolparty.check: the worker process "
                    f"(python -m poolparty._check_worker) failed to start: "
                    f"{_death(returncode, tail)}")
            # Between two modules, after the subinterpreter had ended:
            # something the import left in the main interpreter (3.12 has
            # it import each module first).  Found out as an exit crash.
            self.at_exit = (f"the process was {_death(returncode, tail)} "
                            f"after the import")
            return
        self.blamed = (current, "crashed",
                       f"the process was {_death(returncode, tail)} while "
                       f"importing it")

    def _wait_exit(self, proc, err, err_offset):
        try:
            returncode = proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.at_exit = (f"the process hung at exit (killed after "
                            f"{self.timeout:g} s)")
            return
        if returncode != 0:
            err.seek(err_offset)
            tail = err.read()[-4000:].decode("utf-8", "replace")
            self.at_exit = f"the process was {_death(returncode, tail)} at exit"


def _origin(name, origins):
    """(distribution, version) of module ``name``: "stdlib" for the
    standard library's, (None, None) when unknown."""
    top = name.partition(".")[0]
    if top in origins:
        return origins[top]
    return ("stdlib" if top in sys.stdlib_module_names else None), None


def _result(name, outcome, seconds, origins):
    """A CheckResult from the worker's report on ``name``."""
    top = name.partition(".")[0]
    distribution, version = _origin(name, origins)
    common = dict(module=name, distribution=distribution, version=version,
                  seconds=round(seconds, 3),
                  fallbacks=tuple(f"{ext}: {why}"
                                  for ext, why in outcome.get("refused", ())))
    if outcome["ok"]:
        return CheckResult(status="loads", **common)
    if "checker_error" in outcome:
        return CheckResult(status="error", reason="the checker could not try "
                           f"it: {outcome['checker_error']}", **common)
    kind, reason, culprit = (outcome["kind"], outcome["reason"],
                             outcome["culprit"])
    if kind == "extension" and culprit and (
            culprit.partition(".")[0] != top):
        reason = f"needs {culprit}: {reason}"
    if kind is None and ("main" not in outcome or outcome["main"]):
        # Not found, or fails in the main interpreter as well.
        return CheckResult(status="error", reason=outcome.get("main") or
                           reason, **common)
    if kind is None:
        reason = f"{reason} (it imports in the main interpreter)"
    return CheckResult(status="refused", reason=reason, kind=kind,
                       culprit=culprit, **common)


def check(
    modules: Iterable[str] | str | None = None,
    *,
    timeout: float = 60.0,
    progress: Callable[[int, int, str], object] | None = None,
) -> list[CheckResult]:
    """Try importing each module in a fresh pool subinterpreter.

    ``modules``: names (dotted names too); None for every importable
    top-level module of the installed distributions
    (:func:`default_modules`).  Each is imported in a new
    ``poolparty.Interpreter`` (isolated, own GIL, as in a pool), in a
    separate process, so that a module that crashes or hangs costs only
    that process: ``timeout`` seconds without an answer counts as a
    hang.  The child process gets this process's ``sys.path``.

    ``progress(index, total, name)`` is called as each module starts.
    Returns a list of :class:`CheckResult`, in the order given.
    """
    if modules is None:
        modules = default_modules()
    elif isinstance(modules, str):
        modules = [modules]
    names = list(dict.fromkeys(modules))
    origins = _origins()
    found = {}  # name -> CheckResult
    seen = set()

    def on_start(name):
        if progress is not None and name not in seen:  # not on a retry
            seen.add(name)
            progress(len(seen), len(names), name)

    pending = names
    while pending:
        run = _WorkerRun(pending, timeout, on_start)
        run.run()
        for name, (outcome, seconds) in run.outcomes.items():
            found[name] = _result(name, outcome, seconds, origins)
        tried = list(run.outcomes)
        if run.blamed is not None:
            name, status, reason = run.blamed
            distribution, version = _origin(name, origins)
            found[name] = CheckResult(module=name, status=status,
                                      reason=reason,
                                      distribution=distribution,
                                      version=version)
            tried.append(name)
        elif run.at_exit is not None:
            _blame_exit(run, found, timeout)
        done = set(tried)
        rest = [name for name in pending if name not in done]
        if run.blamed is not None:
            # The process died before it could exit: whether the modules
            # it tried before would have made it abort at exit is
            # unknown, so they are tried again with the rest.
            rest += list(run.outcomes)
        pending = rest
    return [found[name] for name in names]


def _blame_exit(run, found, timeout):
    """The worker process failed at exit: find which module did it."""
    tried = list(run.outcomes)
    if len(tried) == 1:
        found[tried[0]] = dataclasses.replace(found[tried[0]],
                                              at_exit=run.at_exit)
        return
    blamed = False
    for name in tried:
        alone = _WorkerRun([name], timeout, lambda name: None)
        alone.run()
        if alone.at_exit is not None and alone.blamed is None:
            found[name] = dataclasses.replace(found[name],
                                              at_exit=alone.at_exit)
            blamed = True
    if not blamed:
        warnings.warn(
            f"poolparty.check: {run.at_exit} after trying "
            f"{', '.join(tried)} in one process, but after none of them "
            f"alone", RuntimeWarning, stacklevel=3)


def _table(results):
    """The results as an aligned text table."""
    rows = [("module", "version", "result", "why")]
    for result in results:
        version = result.version or result.distribution or ""
        why = result.reason
        status = result.status
        if result.status == "loads" and result.fallbacks:
            more = len(result.fallbacks) - 1
            why = (f"fell back after {result.fallbacks[0]}"
                   + (f" (and {more} more)" if more else ""))
        if result.at_exit:
            status += ", then crashed at exit"
            why = result.at_exit + (f"; {why}" if why else "")
        rows.append((result.module, version, status, why))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
         + "  " + row[3]).rstrip() + "\n"
        for row in rows)


def main(argv=None):
    """``python -m poolparty check [MODULE ...] [--json] [--timeout S]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m poolparty check",
        description="Import each MODULE in a fresh isolated own-GIL "
        "subinterpreter (as poolparty's pools run tasks), one at a time in "
        "a separate process, and say which load.  Without MODULE: every "
        "top-level module of the installed distributions (--stdlib: of the "
        "standard library).  Exit status 1 "
        "when a named module does not load (or crashes the process at "
        "exit).")
    parser.add_argument("modules", nargs="*", metavar="MODULE")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of results instead of a table")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a module may take to import before it "
                        "counts as hung (default: 60)")
    parser.add_argument("--stdlib", action="store_true",
                        help="check the standard library's top-level "
                        "modules instead of the installed distributions'")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr")
    args = parser.parse_args(argv)

    tty = sys.stderr.isatty()

    def progress(index, total, name):
        if args.quiet:
            return
        line = f"[{index}/{total}] {name}"
        if tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    if args.stdlib and args.modules:
        parser.error("name modules or give --stdlib, not both")
    modules = stdlib_modules() if args.stdlib else (args.modules or None)
    results = check(modules, timeout=args.timeout, progress=progress)
    if tty and not args.quiet:
        sys.stderr.write("\r\033[K")
    if args.json:
        json.dump([result.to_dict() for result in results], sys.stdout,
                  indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_table(results))
        kinds = sorted({r.kind for r in results
                        if r.status == "refused" and r.kind in ADVICE})
        for kind in kinds:
            sys.stdout.write(f"\nrefused, {ADVICE[kind]}.\n")
    if args.modules and not all(result.ok for result in results):
        return 1
    return 0
