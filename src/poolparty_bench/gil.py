"""GIL contention sampling for a cell.

gil_sampler() is the one place where the suite chooses how GIL contention
is measured.  Today it uses gilknocker, which sees only the main
interpreter's GIL: a subinterpreter worker with its own GIL is invisible to
it.  When poolparty's own sampler exists, it goes in gil_sampler(), which
gets the pool so that it can reach the workers' GILs too.

Every sampler has start() and stop(); stop() returns
    {"main": pct or None, "workers": [pct, ...] or None,
     "source": str, "note": str or None}
with percentages from 0 to 100.  None means "not measured"; in particular a
free-threaded build has no GIL to contend for, which is not the same as 0.
"""

# gilknocker tries to take the GIL every KNOCK_INTERVAL_US, for windows of
# KNOCK_WINDOW_US separated by KNOCK_PAUSE_US; the metric is updated after
# each window.  Its defaults (10 ms windows, long pauses) leave runs under
# 0.1 s unmeasured; these keep it knocking nearly all the time at a rate
# (1 kHz) that costs a sequential fib run no measurable time.
KNOCK_INTERVAL_US = 1000
KNOCK_WINDOW_US = 5000
KNOCK_PAUSE_US = 1000

# stop() may return while gilknocker's thread still runs; a thread still
# running when the interpreter exits aborts the process ("FATAL: exception
# not rethrown"), so stop() waits this long for it.
KNOCK_STOP_TIMEOUT_S = 1.0


def gil_sampler(pool=None):
    """Return a sampler for the GIL contention of the current run.

    POOL is the pool the run maps over (None for a sequential run).  The
    lead's sampler for poolparty pools plugs in here.
    """
    from .modes import is_free_threaded

    if is_free_threaded():
        return NullSampler("free-threaded build: there is no GIL")
    try:
        import gilknocker
    except ImportError:
        return NullSampler("gilknocker is not installed")
    return KnockerSampler(gilknocker)


class NullSampler:
    """A sampler that measures nothing and says why."""

    def __init__(self, note):
        self.note = note

    def start(self):
        pass

    def stop(self):
        return {"main": None, "workers": None, "source": None,
                "note": self.note}


class KnockerSampler:
    """gilknocker's contention metric for the main interpreter's GIL."""

    def __init__(self, gilknocker):
        self._knocker = gilknocker.KnockKnock(
            polling_interval_micros=KNOCK_INTERVAL_US,
            sampling_interval_micros=KNOCK_WINDOW_US,
            sleeping_interval_micros=KNOCK_PAUSE_US,
        )

    def start(self):
        self._knocker.start()

    def stop(self):
        import time

        self._knocker.stop()
        deadline = time.monotonic() + KNOCK_STOP_TIMEOUT_S
        while self._knocker.is_running and time.monotonic() < deadline:
            time.sleep(0.001)
        metric = self._knocker.contention_metric
        return {
            "main": None if metric is None else 100.0 * metric,
            "workers": None,
            "source": "gilknocker",
            "note": "main interpreter's GIL only",
        }
