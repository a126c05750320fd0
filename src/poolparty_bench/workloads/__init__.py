"""The benchmark workloads, one module each.

Every workload module defines:

* ``NAME`` (str) and ``DESCRIPTION`` (one line);
* ``inputs(scale) -> list``: one picklable argument per task; ``scale=1.0``
  reproduces the original study's sizes, smaller values shrink the work;
* ``task(arg)``: the top-level function the pools run on each argument;
* ``check(inputs, results) -> bool``: whether the results are right.

The modules import only light stdlib modules (math, copy, random) so they can be
imported inside isolated subinterpreters.
"""

from . import (data_blob, data_floats, data_ints, data_pass, data_records,
               data_text, fib, fib2, nbody, nbody_no_share, overhead, raytrace)

# Results of distinct values, as computations make them (data_pass's is
# one float repeated).
REAL_DATA = (data_floats, data_ints, data_records, data_text, data_blob)

WORKLOADS = {
    m.NAME: m
    for m in (fib, fib2, nbody, nbody_no_share, raytrace, data_pass, overhead,
              *REAL_DATA)
}


def get(name: str):
    """The workload module called ``name``."""
    try:
        return WORKLOADS[name]
    except KeyError:
        valid = ", ".join(WORKLOADS)
        raise ValueError(f"unknown workload {name!r}; valid names: {valid}") from None


__all__ = ["WORKLOADS", "get"]
