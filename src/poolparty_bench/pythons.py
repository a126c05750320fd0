"""The interpreters a run uses, and how a cell is started on each.

The interpreter running the driver is the reference default build.  Others
come from --python and --nogil-python, or from scripts/nogil-python.sh when
the repository is at hand.  Each is described by running
`python -m poolparty_bench.cell --describe` with it, which also proves that
it can import the suite.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from .cell import MARKER

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
NOGIL_SCRIPT = os.path.join("scripts", "nogil-python.sh")

# A build from source by scripts/nogil-python.sh takes 10-20 minutes on two
# cores; give up well after that.
NOGIL_SCRIPT_TIMEOUT_S = 40 * 60


class Interpreter:
    """One Python the suite runs cells on."""

    def __init__(self, path, info, env, primary):
        self.path = path
        self.version = info["version"]
        self.free_threaded = bool(info["free_threaded"])
        self.gil_enabled = info.get("gil_enabled")
        self.config_args = info.get("config_args")
        self.env = env
        self.primary = primary
        self.label = self.version + ("t" if self.free_threaded else "")

    @property
    def build(self):
        return "free-threaded" if self.free_threaded else "default"

    def describe(self):
        return {
            "label": self.label,
            "path": self.path,
            "version": self.version,
            "build": self.build,
            "primary": self.primary,
            "configure": self.config_args,
        }


class ImportRoot:
    """A directory whose only entry is a link to this poolparty_bench.

    Interpreters other than the driver's get it as their whole PYTHONPATH:
    the workloads and the cell are plain stdlib code, and a link (rather
    than the package's parent directory) keeps them from seeing the
    driver's site-packages or an uncompiled src/poolparty.
    """

    def __init__(self):
        self.path = None

    def get(self):
        if self.path is None:
            self.path = tempfile.mkdtemp(prefix="poolparty-bench-path-")
            os.symlink(PACKAGE_DIR, os.path.join(self.path, "poolparty_bench"))
        return self.path

    def cleanup(self):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def cell_command(python, *args):
    return [python, "-m", "poolparty_bench.cell", *args]


def read_cell_output(stdout):
    """Return the JSON object a cell printed, or None if it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError:
                return None
    return None


def foreign_env(import_root):
    env = dict(os.environ)
    env["PYTHONPATH"] = import_root.get()
    env.pop("PYTHONHOME", None)
    return env


def describe(path, env, timeout=60):
    """Run the cell's --describe with PATH; return (info, error)."""
    try:
        done = subprocess.run(cell_command(path, "--describe"), env=env,
                              capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{path}: cannot run: {exc}"
    info = read_cell_output(done.stdout)
    if info is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{path}: cannot run the suite: {tail}"
    return info, None


def same_interpreter(info):
    """True when INFO describes the interpreter running the driver."""
    return (os.path.realpath(info["prefix"]) == os.path.realpath(sys.prefix)
            and info["version"] == _own_version())


def _own_version():
    import platform

    return platform.python_version()


def resolve(path, import_root):
    """Describe the interpreter at PATH; return (Interpreter, error)."""
    found = shutil.which(path) or path
    info, error = describe(found, dict(os.environ))
    if info is not None and same_interpreter(info):
        return Interpreter(found, info, None, primary=False), None
    env = foreign_env(import_root)
    info, error = describe(found, env)
    if info is None:
        return None, error
    return Interpreter(found, info, env, primary=False), None


def primary_interpreter():
    """The interpreter running the driver, described like the others."""
    from .cell import describe_interpreter

    info = describe_interpreter()
    return Interpreter(sys.executable, info, None, primary=True)


def find_repo_root():
    """The poolparty checkout this suite runs from, or None."""
    candidates = [os.path.dirname(os.path.dirname(path))
                  for path in (PACKAGE_DIR, os.path.realpath(PACKAGE_DIR))]
    here = os.getcwd()
    while True:
        candidates.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for root in candidates:
        if os.path.isfile(os.path.join(root, NOGIL_SCRIPT)):
            return root
    return None


def nogil_from_script(log):
    """Run scripts/nogil-python.sh; return (path, why-not)."""
    root = find_repo_root()
    if root is None:
        return None, (f"no {NOGIL_SCRIPT} found (not running from a "
                      "poolparty checkout)")
    script = os.path.join(root, NOGIL_SCRIPT)
    log(f"finding a free-threaded Python with {script} "
        "(the first time, it builds one: 10-20 minutes)")
    try:
        # The script's progress goes to our stderr; the path is on the
        # last line of its stdout.
        done = subprocess.run(["bash", script], stdout=subprocess.PIPE,
                              text=True, timeout=NOGIL_SCRIPT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"{script} did not finish in {NOGIL_SCRIPT_TIMEOUT_S} s"
    except OSError as exc:
        return None, f"cannot run {script}: {exc}"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"{script} failed (exit {done.returncode})"
    return lines[-1].strip(), None
