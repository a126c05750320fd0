"""Workers get what `site` gives, however they were created.

Pools of PP_SITE_TEMPLATE_MIN_WORKERS or more create their workers from
a template interpreter without `site`, and each worker runs site.main()
itself (see src/core/interp.c, "the site template"); smaller pools let
CPython import `site` while it creates the interpreter.  Every worker,
either way, must end up with the same builtins, .pth effects,
sitecustomize and sys.path.  An initializer checks it in every worker:
a worker that differs fails to start, which breaks the pool.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import tasks
from conftest import REFERENCE, SUBPROCESS_TIMEOUT
from poolparty import SubinterpreterPool, _poolparty

pytestmark = pytest.mark.skipif(REFERENCE, reason="about poolparty's workers")

BIG = _poolparty.PP_SITE_TEMPLATE_MIN_WORKERS


@pytest.mark.parametrize("dispatch", ["queue", "call"])
@pytest.mark.parametrize("workers", [2, BIG])
def test_every_worker_has_what_site_gives_here(dispatch, workers):
    here = tasks.site_summary()
    assert here["site imported"] and "exit" in here["builtins"]
    with SubinterpreterPool(workers, tasks.check_site_summary, (here,),
                            dispatch=dispatch) as pool:
        assert pool.map(tasks.square, range(4 * workers), chunksize=1) == [
            x * x for x in range(4 * workers)]
        pool.close()
        pool.join()


SCRIPT = """\
import sys
import poolparty
import tasks

if __name__ == "__main__":
    here = tasks.site_summary()
    print("main", sorted(key for key, value in here.items() if value is True),
          "no_site", here["no_site flag"])
    for workers in (2, {big}):
        with poolparty.SubinterpreterPool(workers, tasks.check_site_summary,
                                          (here,)) as pool:
            assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        print("pool of", workers, "ok")
"""


def _run(tmp_path, python, *flags, pythonpath):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(big=BIG))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    proc = subprocess.run([python, *flags, str(script)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pool of 2 ok" in proc.stdout and f"pool of {BIG} ok" in proc.stdout
    return proc


def _installed_here():
    """Where poolparty and the test helpers are imported from."""
    import poolparty

    return [os.path.dirname(os.path.dirname(poolparty.__file__)),
            os.path.dirname(tasks.__file__)]


def test_pth_import_lines_and_sitecustomize_run_in_every_worker(tmp_path):
    # A throwaway venv, whose site-packages holds a .pth file with an
    # import line, and a sitecustomize module on PYTHONPATH.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=SUBPROCESS_TIMEOUT)
    python = str(venv / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
        timeout=SUBPROCESS_TIMEOUT).stdout.strip()
    with open(os.path.join(site_packages, "pp_test.pth"), "w") as pth:
        pth.write("import sys; sys.pp_test_pth_ran = True\n")
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        "import sys\nsys.pp_test_sitecustomize_ran = True\n")
    proc = _run(tmp_path, python, pythonpath=[custom, *_installed_here()])
    assert ("main ['pth ran', 'site imported', 'sitecustomize ran'] no_site 0"
            in proc.stdout)


def test_without_site_in_the_parent_workers_have_none_either(tmp_path):
    proc = _run(tmp_path, sys.executable, "-S", pythonpath=_installed_here())
    assert "main [] no_site 1" in proc.stdout
