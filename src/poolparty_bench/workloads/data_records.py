"""Each task returns 2,048 records: dicts of an id, a name, a score,
tags and a flag, as rows from a query or a parsed file."""

import random

from ._realdata import WARM_UP, checker, inputs  # noqa: F401 (the interface)

NAME = "data_records"
DESCRIPTION = "128 tasks each returning 2,048 small dicts (id, name, score, tags, flag)"
LENGTH = 2_048


def task(arg):
    rng = random.Random(arg)
    first = arg * LENGTH
    return [{"id": i, "name": f"user-{i}", "score": rng.random(),
             "tags": ["new", "eu"] if i % 3 else ["old"], "flag": i % 2 == 0}
            for i in range(first, first + LENGTH)]


check = checker(task)
