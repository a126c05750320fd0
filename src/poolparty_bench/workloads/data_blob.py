"""Each task returns one 1 MB bytes object, as a compressor or encoder
would."""

import random

from ._realdata import WARM_UP, checker, inputs  # noqa: F401 (the interface)

NAME = "data_blob"
DESCRIPTION = "128 tasks each returning a distinct 1 MB bytes object"
SIZE = 1 << 20


def task(arg):
    return random.Random(arg).randbytes(SIZE)


check = checker(task)
