"""Five-body simulation where every task integrates a private deep copy.

Same physics and work as ``nbody``, but the module-level system is only read
(``copy.deepcopy``), never written, so tasks share nothing mutable and the
result of every task is deterministic.
"""

import copy

from . import nbody as _nbody

NAME = "nbody_no_share"
DESCRIPTION = "five-body simulation, 10 x 20000 steps per task, on a private deep copy"

N_TASKS = _nbody.N_TASKS

# This module's own pristine system (never mutated: tasks copy it first).  It
# is deliberately not nbody.BODIES, which nbody's tasks keep changing.
BODIES = _nbody.make_system()


def inputs(scale: float) -> list:
    return [_nbody.steps_for_scale(scale)] * N_TASKS


def task(arg):
    bodies = copy.deepcopy(BODIES)
    return _nbody.simulate(bodies, arg)


def check(inputs: list, results: list) -> bool:
    if len(results) != len(inputs):
        return False
    reference = {}
    for steps in set(inputs):
        # Recompute from a fresh system rather than through task(), so a
        # mutated module-level BODIES would be detected, not reproduced.
        ref = _nbody.simulate(_nbody.make_system(), steps)
        if not _nbody.energies_ok(ref):
            return False
        reference[steps] = ref
    return all(r == reference[steps] for steps, r in zip(inputs, results))
