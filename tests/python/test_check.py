"""poolparty.check and `python -m poolparty check`: which modules load in
a pool's subinterpreters, on small modules made here and stdlib ones."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import poolparty
from poolparty import _check

VERSION = sys.version_info[:2]
# CPython 3.12.1's abort at exit (below) comes from its own allocator:
# with PYTHONMALLOC=malloc, as scripts/sanitize.sh runs the suite, it
# exits cleanly (seen under ASan, and with PYTHONMALLOC=malloc alone).
PYMALLOC = not os.environ.get("PYTHONMALLOC", "").startswith("malloc")

# Extension modules of the stdlib that refuse to load in an isolated
# subinterpreter on every supported version (see test_cpython_hazards.py).
REFUSED_STDLIB = "_curses"

IS_MAIN = """\
try:
    import _interpreters as _interp
except ImportError:
    import _xxsubinterpreters as _interp
IN_MAIN = _interp.get_current() == _interp.get_main()
"""

MODULES = {
    "ppcheck_plain": "VALUE = 1\n",
    "ppcheck_daemon": (
        "import threading\n"
        "threading.Thread(target=lambda: None, daemon=True).start()\n"),
    "ppcheck_broken": "raise ValueError('broken on purpose')\n",
    # Fails in subinterpreters only, with no sign of why: the checker
    # finds out that the main interpreter imports it.
    "ppcheck_sub_only": IS_MAIN + (
        "if not IN_MAIN:\n"
        "    raise LookupError('only in the main interpreter')\n"),
    "ppcheck_fallback": (
        f"try:\n    import {REFUSED_STDLIB}\n"
        "except ImportError:\n    FAST = False\n"),
    "ppcheck_needs": f"import {REFUSED_STDLIB}\n",
    # Catches the refusal, then fails otherwise (as PyYAML's _yaml shim).
    "ppcheck_shim": (
        f"try:\n    import {REFUSED_STDLIB}\n"
        "except ImportError:\n    FAST = False\n"
        "if not FAST:\n"
        "    raise ModuleNotFoundError('No module named ppcheck_shim')\n"),
    "ppcheck_abort": "import os\nos.abort()\n",
    # 3.13 refuses faulthandler in subinterpreters, 3.12 refuses _ctypes.
    "ppcheck_segv": (
        "try:\n    import faulthandler\n"
        "except ImportError:\n"
        "    import ctypes\n    ctypes.string_at(0)\n"
        "else:\n    faulthandler._sigsegv()\n"),
    "ppcheck_hang": "import time\ntime.sleep(3600)\n",
    # Loads, then makes its process abort at exit: it leaves a mark that
    # the sitecustomize below (the main interpreter's atexit) acts on, as
    # CPython 3.12.1 does after an isolated subinterpreter imported
    # hashlib.
    "ppcheck_exit_abort": (
        "import os\n"
        "open(os.environ['PPCHECK_MARK'] + str(os.getpid()), 'w').close()\n"),
}

SITECUSTOMIZE = IS_MAIN + textwrap.dedent("""\
    import atexit, os
    def _abort_if_marked():
        if os.path.exists(os.environ["PPCHECK_MARK"] + str(os.getpid())):
            os.abort()
    if IN_MAIN and "PPCHECK_MARK" in os.environ:
        atexit.register(_abort_if_marked)
    """)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("modules")
    for name, source in MODULES.items():
        (path / f"{name}.py").write_text(source)
    sys.path.insert(0, str(path))
    with pytest.MonkeyPatch.context() as patch:
        if "ASAN_OPTIONS" in os.environ:
            # Under scripts/sanitize.sh: the checker's processes must die
            # of the signals these modules raise on purpose, not exit 1
            # through AddressSanitizer's handlers, which report them.
            patch.setenv("ASAN_OPTIONS", os.environ["ASAN_OPTIONS"]
                         + ":handle_abort=0:handle_segv=0")
        yield path
    sys.path.remove(str(path))


@pytest.fixture(scope="module")
def results(module_dir):
    """One check over every kind of module (a crash and a hang among
    them, so the checker must carry on past them)."""
    names = ["json", REFUSED_STDLIB, "ppcheck_no_such_module",
             "ppcheck_plain", "ppcheck_abort", "ppcheck_daemon",
             "ppcheck_broken", "ppcheck_sub_only", "ppcheck_hang",
             "ppcheck_fallback", "ppcheck_needs", "ppcheck_shim",
             "ppcheck_segv",
             "xml.dom.minidom"]
    started = []
    found = poolparty.check(names, timeout=5,
                            progress=lambda i, n, name: started.append(
                                (i, n, name)))
    assert [r.module for r in found] == names
    # Progress: each module once, in order, though some were retried
    # after the crashes.
    assert started == [(i + 1, len(names), name)
                       for i, name in enumerate(names)]
    return {r.module: r for r in found}


def test_stdlib_module_loads(results):
    result = results["json"]
    assert (result.status, result.reason, result.ok) == ("loads", "", True)
    assert result.distribution == "stdlib"
    assert results["xml.dom.minidom"].status == "loads"  # dotted names too
    assert results["ppcheck_plain"].ok


def test_refused_extension_module(results):
    result = results[REFUSED_STDLIB]
    assert (result.status, result.kind) == ("refused", "extension")
    assert result.culprit == REFUSED_STDLIB
    assert result.reason == (f"ImportError: module {REFUSED_STDLIB} does not "
                             "support loading in subinterpreters")
    assert not result.ok


def test_refused_through_a_dependency(results):
    result = results["ppcheck_needs"]
    assert (result.status, result.kind) == ("refused", "extension")
    assert result.culprit == REFUSED_STDLIB
    assert result.reason.startswith(f"needs {REFUSED_STDLIB}: ImportError")


def test_refusal_caught_then_another_error(results):
    result = results["ppcheck_shim"]
    assert (result.status, result.kind) == ("refused", "extension")
    assert result.culprit is None  # a guess: the refusal came first
    assert result.reason == ("ModuleNotFoundError: No module named "
                             f"ppcheck_shim (after {REFUSED_STDLIB} refused "
                             "to load)")


def test_fallback_is_reported(results):
    result = results["ppcheck_fallback"]
    assert result.status == "loads"
    assert result.fallbacks == (
        f"{REFUSED_STDLIB}: module {REFUSED_STDLIB} does not support loading "
        "in subinterpreters",)


def test_refused_feature(results):
    result = results["ppcheck_daemon"]
    assert (result.status, result.kind) == ("refused", "feature")
    assert "daemon threads" in result.reason


def test_errors_that_are_not_about_subinterpreters(results):
    broken = results["ppcheck_broken"]
    assert (broken.status, broken.reason) == (
        "error", "ValueError: broken on purpose")
    missing = results["ppcheck_no_such_module"]
    assert missing.status == "error"
    assert missing.reason == ("ModuleNotFoundError: No module named "
                              "'ppcheck_no_such_module'")


def test_refused_without_a_known_reason(results):
    result = results["ppcheck_sub_only"]
    assert (result.status, result.kind) == ("refused", None)
    assert result.reason == ("LookupError: only in the main interpreter "
                             "(it imports in the main interpreter)")


@pytest.mark.parametrize("name, signal", [("ppcheck_abort", "SIGABRT"),
                                          ("ppcheck_segv", "SIGSEGV")])
def test_crash_is_blamed_on_the_module(results, name, signal):
    result = results[name]
    assert result.status == "crashed"
    assert result.reason.startswith(f"the process was killed by {signal} (")
    assert result.reason.endswith("while importing it")


def test_hang_is_blamed_on_the_module(results):
    result = results["ppcheck_hang"]
    assert result.status == "hung"
    assert result.reason.startswith("no answer within 5 s")


def test_abort_at_exit_is_found_and_blamed_on_its_module(
        module_dir, tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PPCHECK_MARK", str(tmp_path / "mark-"))
    # ppcheck_abort kills the first worker process before it can exit:
    # the modules it had tried are tried again, so that their exit is seen.
    found = poolparty.check(["json", "ppcheck_exit_abort", "ppcheck_abort",
                             "ppcheck_plain"], timeout=30)
    json_result, culprit, crashed, plain = found
    assert crashed.status == "crashed"
    assert culprit.status == "loads"
    assert culprit.at_exit.startswith(
        "the process was killed by SIGABRT (")
    assert culprit.at_exit.endswith(") at exit")
    assert not culprit.ok
    assert json_result.ok and plain.ok  # tried again alone: not them


def test_real_abort_at_exit_on_3_12_1(module_dir, tmp_path):
    # CPython 3.12.1 aborts at exit after an isolated subinterpreter is the
    # first to call binascii.b2a_base64(..., newline=False).  On 3.12 the
    # main interpreter imports each module first (and so would make that
    # call first): the module makes it in subinterpreters only, as a task
    # would.  3.13 does not abort.
    (tmp_path / "ppcheck_b64.py").write_text(
        IS_MAIN + "import base64\n"
        "if not IN_MAIN:\n    base64.b64encode(b'u:p')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        found = poolparty.check(["json", "ppcheck_b64", "ppcheck_plain"],
                                timeout=30)
    finally:
        sys.path.remove(str(tmp_path))
    json_result, b64, plain = found
    assert json_result.ok and plain.ok
    assert b64.status == "loads"
    if sys.version_info[:3] == (3, 12, 1) and PYMALLOC:
        # "munmap_chunk(): invalid pointer" and SIGABRT, or a SIGSEGV,
        # depending on the heap's state.
        assert b64.at_exit.startswith(("the process was killed by SIGABRT",
                                       "the process was killed by SIGSEGV"))
        assert b64.at_exit.endswith("at exit")
        assert not b64.ok
    elif VERSION >= (3, 13) or not PYMALLOC:
        assert b64.ok


def test_cli_table_and_exit_status(module_dir):
    env = dict(os.environ, PYTHONPATH=str(module_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "poolparty", "check", "json", REFUSED_STDLIB,
         "ppcheck_daemon"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["module", "version", "result", "why"]
    assert lines[1].split() == ["json", "stdlib", "loads"]
    assert lines[2].split()[:4] == [REFUSED_STDLIB, "stdlib", "refused",
                                    "ImportError:"]
    assert lines[3].split()[:3] == ["ppcheck_daemon", "refused",
                                    "RuntimeError:"]
    assert any(line.startswith("refused, an extension module")
               for line in lines)
    assert proc.stderr.splitlines() == ["[1/3] json",
                                        f"[2/3] {REFUSED_STDLIB}",
                                        "[3/3] ppcheck_daemon"]

    proc = subprocess.run(
        [sys.executable, "-m", "poolparty", "check", "json", "ppcheck_plain",
         "--json", "--quiet"],
        capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    data = json.loads(proc.stdout)
    assert [(d["module"], d["status"]) for d in data] == [
        ("json", "loads"), ("ppcheck_plain", "loads")]


def test_cli_without_names_checks_the_installed_distributions(
        monkeypatch, capsys):
    # Refusals among modules nobody named do not fail the command.
    monkeypatch.setattr(_check, "default_modules",
                        lambda: ["json", REFUSED_STDLIB])
    assert _check.main(["--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{REFUSED_STDLIB}" in out and "refused" in out


def test_default_modules_are_importable_top_level_names():
    names = _check.default_modules()
    assert {"pytest", "poolparty"} <= set(names)
    assert all(name.isidentifier() and "." not in name for name in names)
    assert names == sorted(names)


def test_table_keeps_an_exit_crash_next_to_a_fallback():
    result = poolparty.CheckResult(
        module="m", status="loads", fallbacks=("m._c: refused",),
        at_exit="the process was killed by SIGABRT at exit")
    row = _check._table([result]).splitlines()[1]
    assert row.split("  ")[0] == "m"
    assert row.endswith("loads, then crashed at exit  the process was "
                        "killed by SIGABRT at exit; fell back after m._c: "
                        "refused")


def test_stdlib_modules():
    names = _check.stdlib_modules()
    assert {"json", "faulthandler", "asyncio"} <= set(names)
    assert not {"antigravity", "this"} & set(names)  # they act on import
    assert all(name in sys.stdlib_module_names for name in names)


def test_cli_stdlib_and_names_are_exclusive():
    proc = subprocess.run(
        [sys.executable, "-m", "poolparty", "check", "--stdlib", "json"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not both" in proc.stderr


def test_cli_usage():
    proc = subprocess.run([sys.executable, "-m", "poolparty"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "python -m poolparty check" in proc.stderr
