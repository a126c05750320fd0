"""Each task returns 65,536 distinct ints (no small-int singletons)."""

from ._realdata import WARM_UP, checker, inputs  # noqa: F401 (the interface)

NAME = "data_ints"
DESCRIPTION = "128 tasks each returning 65,536 distinct ints (a range past 2**20)"
LENGTH = 65_536


def task(arg):
    start = (1 << 20) + arg * LENGTH
    return list(range(start, start + LENGTH))


check = checker(task)
