"""What the data_* workloads share: tasks that compute distinct values.

data_pass returns one float object repeated 65,536 times, which the codec
sends as one float and a repeat.  A computation's results are distinct
values: each data_* workload's task builds its value from its argument
(so a result delivered to the wrong task is caught), and its check
rebuilds the expected value in the main interpreter.
"""

BASE_TASKS = 128
MIN_TASKS = 4
# The cell maps two tasks per worker first and times the map after them
# (map_s): the warm-pool figure, next to the usual cold one (wall_s).
WARM_UP = True


def inputs(scale: float) -> list:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return list(range(max(MIN_TASKS, round(BASE_TASKS * scale))))


def checker(task):
    """check(inputs, results) comparing each result with task(arg)."""

    def check(inputs: list, results: list) -> bool:
        return len(results) == len(inputs) and all(
            type(r) is type(e) and r == e
            for r, e in zip(results, map(task, inputs)))

    return check


_blobs = {}


def blob(size):
    """A bytes of `size` made once per interpreter and kept: what a task
    returns when only moving it is to be timed."""
    if size not in _blobs:
        _blobs.clear()
        _blobs[size] = bytes(range(256)) * (size // 256)
    return _blobs[size]


def blob_size(data):
    """len(data): a task whose argument is the large part."""
    return len(data)


class Frame:
    """A buffer holder that pickles its data out of band (pickle protocol
    5's PickleBuffer), as the libraries that support it do.  Unpickled by
    `rebuild` (a module-level function or class) called with the data."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            # Imported here, not at the top: every workload module is
            # imported with this one (the package imports them all), and
            # `pickle` (re, enum, functools, collections: 9 ms in a fresh
            # interpreter) would land on each worker's first task of any
            # workload, a cost the seed's workloads do not have.
            import pickle

            return self.rebuild, (pickle.PickleBuffer(self.data),)
        return self.rebuild, (bytes(self.data),)


Frame.rebuild = Frame


def frame(size):
    """A Frame over blob(size)."""
    return Frame(blob(size))


def frame_size(value):
    """len(value.data): a task whose argument is a Frame."""
    return len(value.data)
