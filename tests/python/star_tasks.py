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
