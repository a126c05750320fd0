"""Each task returns 65,536 distinct floats, as a simulation would."""

import random

from ._realdata import WARM_UP, checker, inputs  # noqa: F401 (the interface)

NAME = "data_floats"
DESCRIPTION = "128 tasks each returning 65,536 distinct floats (random())"
LENGTH = 65_536


def task(arg):
    rng = random.Random(arg)
    return [rng.random() for _ in range(LENGTH)]


check = checker(task)
