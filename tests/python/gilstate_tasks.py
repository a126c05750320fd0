"""Tasks for test_gilstate_callbacks.py: C code calling back into Python.

Each returns the interpreter ids the callback saw next to the task's own,
so the test can tell whether PyGILState_Ensure attached the worker's
interpreter.
"""


def through_gilstate(x):
    """ppgilstate.call: PyGILState_Ensure with the GIL released, and held."""
    import ppgilstate

    return ppgilstate.call(lambda: x * 2)


def from_c_thread(_=None):
    import ppgilstate

    return ppgilstate.from_c_thread()


def ctypes_qsort(x):
    """libc's qsort calling a ctypes callback (ctypes' closures use
    PyGILState_Ensure); the ids of the interpreters the callback ran in."""
    import ctypes

    try:
        import _interpreters
    except ImportError:  # 3.12
        import _xxsubinterpreters as _interpreters

    def current():
        found = _interpreters.get_current()
        return found[0] if isinstance(found, tuple) else found

    seen = set()
    item = ctypes.POINTER(ctypes.c_int)
    compare_type = ctypes.CFUNCTYPE(ctypes.c_int, item, item)

    def compare(a, b):
        seen.add(int(current()))
        return a[0] - b[0]

    values = (ctypes.c_int * 4)(4, 1, x, 2)
    libc = ctypes.CDLL(None)
    libc.qsort(values, 4, ctypes.sizeof(ctypes.c_int), compare_type(compare))
    return int(current()), sorted(seen), list(values)
