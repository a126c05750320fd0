"""Almost no computation, large results: measures the cost of moving data.

Each task returns a list of 65,536 floats (about 0.5 MB once pickled: 9 bytes
per float), so the pool's result path (pickling, copying between
interpreters/processes, unpickling) dominates the run time.
"""

NAME = "data_pass"
DESCRIPTION = "1024 tasks each returning 65,536 floats (~0.5 MB): result-transfer cost"

BASE_TASKS = 1024
MIN_TASKS = 8
LENGTH = 65_536


def inputs(scale: float) -> list:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return list(range(max(MIN_TASKS, round(BASE_TASKS * scale))))


def value_for(arg) -> float:
    # A per-task constant, so results delivered to the wrong task are caught.
    return arg + 0.5


def task(arg):
    return [value_for(arg)] * LENGTH


def check(inputs: list, results: list) -> bool:
    if len(results) != len(inputs):
        return False
    for arg, r in zip(inputs, results):
        if type(r) is not list or len(r) != LENGTH:
            return False
        v = value_for(arg)
        # count() compares every element, at C speed.
        if r.count(v) != LENGTH:
            return False
    return True
