"""GIL contention, measured from C (see src/core/gil_sampler.c).

>>> from poolparty.gil import GilSampler
>>> with GilSampler(pool) as sampler:
...     pool.map(work, items)
>>> sampler.result  # {"main": 0.02, "workers": [0.83, 0.81], "worst": 0.83}

Values are percentages of time a sampling thread waited for each GIL,
like gilknocker's contention metric; ``None`` on a free-threaded build,
where there is no GIL to wait for.
"""

import sys

__all__ = ["GilSampler"]


class GilSampler:
    """Sample the main GIL and, given a pool or executor, each worker's own GIL."""

    def __init__(self, pool=None, interval=0.001):
        self._engine = None if pool is None else pool._runner.engine
        self._interval = interval
        self._sampler = None
        self.result = None

    def start(self):
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            return self  # free-threaded: nothing to sample
        from . import _poolparty

        self._sampler = _poolparty.GilSampler(self._engine, self._interval)
        return self

    def stop(self):
        """Stop sampling; returns (and keeps in .result) the figures."""
        if self._sampler is None:
            self.result = {"main": None, "workers": None, "worst": None}
            return self.result
        main, workers = self._sampler.stop()
        self._sampler = None
        pct = lambda f: None if f is None else round(100.0 * f, 2)
        workers = [pct(w) for w in workers] if self._engine is not None else None
        measured = [w for w in (workers or []) if w is not None]
        self.result = {
            "main": pct(main),
            "workers": workers,
            "worst": max(measured) if measured else pct(main),
        }
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
