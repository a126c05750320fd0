"""Task functions for test_pool_data.py (importable in every worker)."""

import threading
import time


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


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value
