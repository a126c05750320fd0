"""Thread states have one owner: src/core/tstate.c.

Every creation, attach, detach and deletion of a thread state goes
through its pp__ts_* functions, whose rules (the gilstate binding
included) are written at its top; a call made elsewhere would dodge
them.  Py_BEGIN/END_ALLOW_THREADS (a release and re-take of the same
thread state around a blocking call) stay where they are.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "src" / "core" / "tstate.c"
CALLS = re.compile(
    r"\b(PyEval_SaveThread|PyEval_RestoreThread|PyEval_AcquireThread"
    r"|PyEval_ReleaseThread|PyThreadState_New|PyThreadState_Clear"
    r"|PyThreadState_Delete|PyThreadState_DeleteCurrent|PyThreadState_Swap"
    r"|_PyThreadState_UncheckedGet|PyThreadState_GetUnchecked)\s*\("
)


def _code(text):
    """C source without its comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def test_only_tstate_c_makes_attaches_detaches_or_deletes_thread_states():
    found = []
    for path in sorted((ROOT / "src").rglob("*.[ch]")):
        if path == OWNER:
            continue
        for line in _code(path.read_text()).splitlines():
            if CALLS.search(line):
                found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not found, "thread-state calls outside src/core/tstate.c:\n" + "\n".join(found)


def test_tstate_c_states_its_rules_first():
    head = OWNER.read_text().split("#include", 1)[0]
    assert "THE RULES" in head and "gilstate" in head
