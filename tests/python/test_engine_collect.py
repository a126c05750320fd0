"""Engine.collect() hands out completions a bounded batch at a time.

Every completion tuple it makes counts towards the garbage collector's
next young pass until the collector thread is done with it; handing out
thousands at once set off passes over every large result still young.
The rest stay in the Engine and come out, in order, on the next calls,
also after the workers have exited.
"""

import pytest

from conftest import REFERENCE
from poolparty import _engine
from poolparty import _poolparty as core

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's engine")


def test_collect_hands_out_a_batch_at_a_time_and_keeps_the_rest():
    engine = core.Engine(core.PP_DESIGN_QUEUE, 2, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    func, flags = _engine.function_pickle(abs)
    tasks = 5 * core.PP_COLLECT_BATCH + 7
    for i in range(tasks):
        engine.submit(1, i, core.PP_TASK_CALL | flags, func,
                      _engine.dumps(((-i,), None)))
    engine.close()
    # No collector runs: every completion waits in the engine.
    assert engine.join(60)
    sizes, results = [], {}
    while (batch := engine.collect(5)) is not None:
        sizes.append(len(batch))
        for job, index, kind, _worker, payload in batch:
            # Plain results come decoded, straight from the message.
            assert (job, kind) == (1, core.PP_DONE_DECODED)
            results[index] = _engine.decode(kind, payload)[1]
            assert results[index] is payload
    assert sizes == [core.PP_COLLECT_BATCH] * 5 + [7]
    assert results == {i: i for i in range(tasks)}


def test_large_completions_come_a_few_at_a_time():
    # Decoding holds the main GIL: a call stops once it has handed out
    # PP_COLLECT_BYTES, so a caller's thread gets the GIL in between.
    engine = core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    func, flags = _engine.function_pickle(bytes)
    size = 400_000
    for i in range(10):
        engine.submit(1, i, core.PP_TASK_CALL | flags, func,
                      _engine.dumps(((size,), None)))
    engine.close()
    results = []
    while not results:  # on 3.12 the worker first asks us for imports
        for job, _index, kind, worker, payload in engine.collect(5):
            if kind == core.PP_DONE_MAIN_IMPORT:
                engine.answer_import(worker)
            else:
                results.append(payload)
    assert engine.join(60)  # the other nine wait in the engine
    sizes = []
    while (batch := engine.collect(5)) is not None:
        sizes.append(len(batch))
        results += [payload for *_, payload in batch]
    # 1.2 MB >= 1 MB: each call stops at three (at fewer when what one
    # call took from the queue runs out; how many came ready before the
    # first call is the workers' timing: results are pinned, not copied,
    # which made it differ from run to run).  The pinned bytes count.
    assert max(sizes) == 3
    assert results == [bytes(size)] * 10


def test_a_result_that_completed_takes_no_more_completions_of_its_job():
    # collect() looks a pool result up once for a run of its job's
    # completions; one that completed within the run has left the dict,
    # and a later completion of its job comes back as a tuple, as when
    # every completion was looked up.
    from poolparty.pool import _ApplyResult

    engine = core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    try:
        results = engine.bind_futures(owner=object())
        job = engine.new_job()
        result = _ApplyResult(results, job, None, None)
        func, flags = _engine.function_pickle(abs)
        for value in (-1, -2):
            engine.submit(job, 0, core.PP_TASK_CALL | flags, func,
                          _engine.dumps(((value,), None)))
        engine.close()
        assert engine.join(60)
        batch = engine.collect(5)
        assert result.get(0) == 1
        assert results == {}
        assert [(j, i, _engine.decode(kind, payload)[1])
                for j, i, kind, _worker, payload in batch] == [(job, 0, 2)]
        assert engine.collect(5) is None
    finally:
        engine.terminate()
        engine.join(60)


def test_a_failure_midway_hands_out_what_came_before_and_keeps_the_rest():
    # A lookup in the bound dict that raises (a key whose __eq__ raises,
    # colliding with a job id) stops collect() at that completion: the
    # ones before it are handed out, it and every later one stay held
    # and come out on the next call, each once and in order.
    class Raising:
        def __init__(self, job):
            self.job, self.calls = job, 0

        def __hash__(self):
            return hash(self.job)

        def __eq__(self, other):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("lookup failed")
            return False

    engine = core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    try:
        results = engine.bind_futures(owner=object())
        jobs = [engine.new_job() for _ in range(5)]
        results[Raising(jobs[2])] = None
        func, flags = _engine.function_pickle(abs)
        for job in jobs:
            engine.submit(job, 0, core.PP_TASK_CALL | flags, func,
                          _engine.dumps(((-job,), None)))
        engine.close()
        assert engine.join(60)
        batches = []
        while (batch := engine.collect(5)) is not None:
            batches.append([(job, _engine.decode(kind, payload)[1])
                            for job, _i, kind, _w, payload in batch])
        assert batches == [[(job, job) for job in jobs[:2]],
                           [(job, job) for job in jobs[2:]]]
    finally:
        engine.terminate()
        engine.join(60)
