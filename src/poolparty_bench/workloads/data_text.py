"""Each task returns 16,384 lines of text, as a formatter or parser would."""

from ._realdata import WARM_UP, checker, inputs  # noqa: F401 (the interface)

NAME = "data_text"
DESCRIPTION = "128 tasks each returning 16,384 distinct lines of text (~40 chars)"
LENGTH = 16_384
WORDS = ("alpha", "beta", "gamma", "delta", "caf\u00e9", "stra\u00dfe")


def task(arg):
    first = arg * LENGTH
    return [f"line {i}: {WORDS[i % 6]} {WORDS[(i * 7) % 6]} value={i * 0.5}"
            for i in range(first, first + LENGTH)]


check = checker(task)
