"""The README's examples run and give the right answers (speed is the suite's job)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_fib_speedup_script_from_another_directory(tmp_path, dispatch):
    script = os.path.join(ROOT, "examples", "fib_speedup.py")
    proc = subprocess.run(
        [sys.executable, script, "--dispatch", dispatch, "--repeat", "1",
         "--n", "18", "--items", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "correct=True" in proc.stdout
    assert "speedup" in proc.stdout
