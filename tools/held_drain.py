"""Time draining completions held in an Engine (issue 15, item 6).

Queues N no-op tasks on an engine no collector thread serves, waits for
the workers, then times the collect() calls that hand the N completions
out, PP_COLLECT_BATCH at a time.  Each call used to walk every held
completion (O(N^2 / 64) in all).

    .venv/3.13/bin/python tools/held_drain.py 100000
"""

import sys
import time

from poolparty import _engine
from poolparty import _poolparty as core


def main(n):
    engine = core.Engine(core.PP_DESIGN_QUEUE, 2, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    func, flags = _engine.function_pickle(abs)
    args = _engine.dumps(((1,), None))
    for i in range(n):
        engine.submit(1, i, core.PP_TASK_CALL | flags, func, args)
    engine.close()
    if not engine.join(600):
        sys.exit("the workers did not finish")
    start = time.perf_counter()
    collected = 0
    while (batch := engine.collect(5)) is not None:
        collected += len(batch)
    elapsed = time.perf_counter() - start
    print(f"{collected} of {n} held completions drained in {elapsed:.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
