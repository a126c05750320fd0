"""No-op tasks: measures the per-task cost of the pool machinery itself."""

NAME = "overhead"
DESCRIPTION = "20,000 no-op tasks returning their int argument: per-task overhead"

BASE_TASKS = 20_000
MIN_TASKS = 100


def inputs(scale: float) -> list:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return list(range(max(MIN_TASKS, round(BASE_TASKS * scale))))


def task(arg):
    return arg


def check(inputs: list, results: list) -> bool:
    return len(results) == len(inputs) and all(
        type(r) is int and r == a for a, r in zip(inputs, results)
    )
