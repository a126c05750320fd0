"""Task functions for test_pool_starmap.py (importable in every worker)."""

import gc


def args_of(*args):
    """The arguments as they arrived, as a tuple."""
    return args


def same_objects(a, b):
    return a is b


def append_then_len(target, value):
    target.append(value)
    return len(target)


def nested_is_arg(holder):
    """holder holds a tuple whose only item is holder again."""
    return type(holder[0]) is tuple and holder[0][0] is holder


def fail_on(x, bad):
    if x == bad:
        raise ValueError("bad item", x)
    return x


def collect(*_):
    gc.collect()
    return 0


def tracked_since_collect(*_):
    """Container objects made since the last collection (gen 0's count):
    what the worker built for this chunk before calling this."""
    return gc.get_count()[0]


def kwonly(a, *, b):
    return a + b


KEPT = []


class KeepsItsChunk:
    """Pickled (not plain data): its __reduce__ keeps every list that
    holds it -- the chunk submit_map is pickling -- as Python code run by
    pickle may."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        KEPT.extend(r for r in gc.get_referrers(self)
                    if type(r) is list and r is not KEPT)
        return KeepsItsChunk, (self.value,)

    def __eq__(self, other):
        return type(other) is KeepsItsChunk and other.value == self.value

    def __hash__(self):
        return hash(self.value)


def value_of(x):
    return x.value if isinstance(x, KeepsItsChunk) else x
