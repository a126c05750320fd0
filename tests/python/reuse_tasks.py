"""Callables for test_function_reuse.py."""

_calls = 0


def count_calls(_=None):
    """A module-level function: pickled by reference, may be reused."""
    global _calls
    _calls += 1
    return _calls


class CallCounter:
    """A callable pickled by value: every task must get a fresh copy."""

    def __init__(self):
        self.calls = 0

    def __call__(self, _=None):
        self.calls += 1
        return self.calls


def append_and_count(bucket, item):
    bucket.append(item)
    return len(bucket)
