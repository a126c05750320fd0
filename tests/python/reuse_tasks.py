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


def loaded(names):
    """Which of these modules this worker has imported."""
    import sys

    return [name for name in names if name in sys.modules]


class Holder:
    @staticmethod
    def double(x):
        return 2 * x

    class Inner:
        @staticmethod
        def triple(x):
            return 3 * x


def _renamed(x):
    return x + 1


# A function whose name leads elsewhere: it pickles (and travels) by value
# of its reference only if that reference finds it again.
renamed_alias = _renamed
