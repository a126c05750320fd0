"""Task functions for test_pool_data.py (importable in every worker)."""

import array
import gc
import os
import pickle
import sys
import threading
import time
import weakref

from poolparty_bench.workloads._realdata import Frame


def echo(value):
    return value


def kind_and_length(value):
    return type(value).__name__, len(value)


def bytearray_still_written(size, seconds):
    """Return a bytearray of zeros that a thread keeps overwriting with
    0xff for `seconds` after the task returned it."""
    buffer = bytearray(size)
    started = threading.Event()

    def scribble():
        started.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            buffer[:] = b"\xff" * size

    threading.Thread(target=scribble).start()
    started.wait()
    buffer[:] = bytes(size)
    return buffer


class _Mark:
    """An object a weak reference can watch (an object() cannot be)."""


def array_reached_later(how, size, fd):
    """Return an array.array of `size` zeros that the task keeps no
    reference to, but that a thread of the task reaches again once the
    task has returned it -- by a weak reference (how="weakref") or by
    searching gc.get_objects() (how="gc") -- and fills with 0xff if it is
    still alive; the thread then writes a byte to `fd`.

    The thread looks only once the task's frame is gone (a weak
    reference to an object of that frame says so): the worker encodes
    the result right after, holding the interpreter's GIL, so the
    thread's search finds the array encoded.  Searching while the task
    ran, its gc.get_objects() list could hold the array when the worker
    took the GIL (it waits 5 ms at most) and encoded it: shared, so
    copied, not pinned (seen under ASan, 2 runs in 10)."""
    buffer = array.array("B", bytes(size))
    ref = weakref.ref(buffer) if how == "weakref" else None
    frame_mark = _Mark()
    task_runs = weakref.ref(frame_mark)

    def reach():
        if ref is not None:
            return ref()
        return next((o for o in gc.get_objects()
                     if type(o) is array.array and len(o) == size), None)

    def scribble():
        while task_runs() is not None:
            time.sleep(0.005)
        held = reach()
        # `held` and getrefcount's argument; a third (a pin) if the
        # worker kept the array reachable.
        if held is not None and sys.getrefcount(held) <= 3:
            held[:] = array.array("B", b"\xff" * size)
        held = None
        os.write(fd, b"x")

    threading.Thread(target=scribble).start()
    return buffer


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


# -- large buffers and pickle protocol 5's out-of-band buffers
# (test_pool_buffers.py)

POISON = 0xEE   # a Blob whose data starts with it fails to unpickle
KEPT = []       # buffers a task keeps a reference to after returning them


def rebuild_blob(data):
    if len(data) and data[0] == POISON:
        raise ValueError("poisoned blob")
    return Blob(data)


class Blob(Frame):
    """The suite's Frame (data pickled out of band with protocol 5), which
    a test can poison: rebuilt by rebuild_blob."""

    rebuild = staticmethod(rebuild_blob)

    def __eq__(self, other):
        return (type(other) is Blob and type(other.data) is type(self.data)
                and other.data == self.data)


def make_blob(size, writable=False, fill=0):
    data = bytes([fill]) * size
    return Blob(bytearray(data) if writable else data)


def blob_info(blob):
    return type(blob.data).__name__, len(blob.data), bytes(blob.data[:1])


def make_buffer(kind, size, fill=1):
    """A fresh buffer of `size` bytes of `fill`, nobody else holding it."""
    data = bytes([fill]) * size
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "array":
        return array.array("B", data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "kept bytearray":
        KEPT[:] = [bytearray(data)]
        return KEPT[0]
    raise ValueError(kind)


def picklebuffers(size):
    """PickleBuffers themselves, in a container."""
    return [pickle.PickleBuffer(bytes([2]) * size),
            pickle.PickleBuffer(bytearray([3]) * size)]


def blob_still_written(size, seconds):
    """A Blob over a bytearray of zeros that a thread keeps overwriting
    with 0xff for `seconds` after the task returned it."""
    return Blob(bytearray_still_written(size, seconds))
