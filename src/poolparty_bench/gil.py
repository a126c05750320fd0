"""GIL contention sampling for a cell.

gil_sampler() is the one place where the suite chooses how GIL contention
is measured.  By default it uses poolparty's sampler, written in C
(src/core/gil_sampler.c): for every mode it samples the main
interpreter's GIL, and for the interp modes each worker's own GIL too.
gilknocker, which sees only the main GIL, is kept to cross-check it:
POOLPARTY_BENCH_GIL=gilknocker selects it (see docs/bench.md for how
closely the two agree).

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


def gil_sampler(pool=None, source=None):
    """Return a sampler for the GIL contention of the current run.

    POOL is the pool the run maps over (None for a sequential run); with a
    poolparty pool, its workers' GILs are sampled too.  SOURCE is
    "poolparty" or "gilknocker" (default: $POOLPARTY_BENCH_GIL, else
    poolparty).
    """
    import os

    from .modes import is_free_threaded

    if is_free_threaded():
        return NullSampler("free-threaded build: there is no GIL")
    source = source or os.environ.get("POOLPARTY_BENCH_GIL", "poolparty")
    if source == "poolparty":
        try:
            from poolparty.gil import GilSampler
        except ImportError:
            source = "gilknocker"
        else:
            return PoolpartySampler(GilSampler, pool)
    try:
        import gilknocker
    except ImportError:
        return NullSampler("gilknocker is not installed")
    return KnockerSampler(gilknocker)


class PoolpartySampler:
    """poolparty's C sampler: the main GIL, and a poolparty pool's workers'."""

    def __init__(self, sampler_class, pool):
        ours = pool is not None and hasattr(pool, "_runner")
        self._sampler = sampler_class(pool if ours else None)

    def start(self):
        self._sampler.start()

    def stop(self):
        result = self._sampler.stop()
        return {
            "main": result["main"],
            "workers": result["workers"],
            "source": "poolparty",
            "note": None,
        }


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
