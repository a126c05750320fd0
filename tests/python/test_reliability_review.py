"""What a line-by-line reading of the code found (issue 15, item 6).

Each test failed (or crashed, hence the subprocesses) before its fix.
"""

import os
import textwrap

import pytest

from conftest import FREE_THREADED, run_script

pytestmark = pytest.mark.poolparty_only

TESTS = os.path.dirname(os.path.abspath(__file__))


# --- map() reads a snapshot of the caller's items ------------------------------


@pytest.mark.parametrize("api", ["pool", "executor"])
def test_map_whose_items_shrink_the_list_while_pickled(tmp_path, dispatch, api):
    # The encoder used to read the caller's own list by index after
    # calling pickle (here: __reduce__ empties the list): a read through
    # the emptied list's NULL item array (SIGSEGV).
    script = tmp_path / "shrink.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {TESTS!r})
        import poolparty
        import reliability_tasks as rt

        class EmptiesTheList:
            def __init__(self, items):
                self.items = items

            def __reduce__(self):
                self.items.clear()
                return (int, (7,))

        if __name__ == "__main__":
            items = list(range(50))
            items[0] = EmptiesTheList(items)
            if {api!r} == "pool":
                with poolparty.SubinterpreterPool(2, dispatch={dispatch!r}) as pool:
                    got = pool.map(rt.echo, items, 1)
            else:
                with poolparty.SubinterpreterPoolExecutor(
                        2, dispatch={dispatch!r}) as executor:
                    got = list(executor.map(rt.echo, items))
            # Whatever the list holds afterwards, the map ran on what it
            # was given.
            assert got == [7] + list(range(1, 50)), got
            print("ok")
        """))
    result = run_script(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


# --- the collector survives a failing Engine.collect() --------------------------


class _EngineFailingOnce:
    """The real Engine, but collect() raises MemoryError once when told."""

    def __init__(self, real, fail):
        self._real = real
        self._fail = fail

    def collect(self, *args):
        if self._fail.is_set():
            self._fail.clear()
            raise MemoryError("no room for the results")
        return self._real.collect(*args)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def failing_collect(monkeypatch):
    import threading

    from poolparty import _engine

    fail = threading.Event()
    real_engine = _engine._core.Engine
    monkeypatch.setattr(
        _engine._core, "Engine",
        lambda *args, **kwargs: _EngineFailingOnce(
            real_engine(*args, **kwargs), fail))
    return fail


def test_a_failing_collect_breaks_the_pool_instead_of_hanging(
        tmp_path, dispatch, failing_collect):
    import poolparty
    import reliability_tasks as rt
    from conftest import wait_until_exists

    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    pool = poolparty.SubinterpreterPool(2, dispatch=dispatch)
    try:
        assert pool.apply(rt.increment, (1,)) == 2
        running = pool.apply_async(rt.touch_then_wait, (started, release, 1, 60))
        wait_until_exists(started)
        # The collector waits inside collect(); once this result is
        # delivered, its next call fails.
        failing_collect.set()
        pool.apply_async(rt.increment, (1,))
        # The collector used to end there, and the running task's result
        # (like every other) never came.
        with pytest.raises(poolparty.BrokenInterpreterPool) as caught:
            running.get(30)
        assert isinstance(caught.value.__cause__, MemoryError)
        assert "MemoryError: no room for the results" in str(caught.value)
        with pytest.raises(poolparty.BrokenInterpreterPool):
            pool.apply(rt.increment, (1,))
    finally:
        with open(release, "w"):
            pass
        pool.terminate()
        pool.join()


def test_a_completion_whose_decode_raises_fails_alone(dispatch, monkeypatch):
    # decode() promises not to raise; when it did (a chunk in parts whose
    # rest came as plain text), the collector thread died and every later
    # result hung.  Now that one task fails and the pool goes on.
    import poolparty
    import tasks
    from poolparty import _engine

    real_decode = _engine.decode

    def decode(kind, payload):
        if kind == _engine.DONE_UNDECODABLE:
            raise RuntimeError("decode broke")
        return real_decode(kind, payload)

    monkeypatch.setattr(_engine, "decode", decode)
    with poolparty.SubinterpreterPool(1, dispatch=dispatch) as pool:
        # Its value fails to unpickle in the caller: an undecodable
        # completion, which only the collector's Python loop decodes.
        broken = pool.apply_async(tasks.return_fails_when_unpickled, ("x",))
        with pytest.raises(RuntimeError, match="decode broke"):
            broken.get(30)
        assert pool.apply(tasks.square, (7,)) == 49


# --- free-threaded builds: the codec against other threads ---------------------


@pytest.mark.skipif(not FREE_THREADED,
                    reason="a free-threaded build's race (the GIL rules it out)")
def test_encoding_lists_and_dicts_that_other_threads_change(tmp_path):
    # Without a GIL, the encoder read a list's item array while another
    # thread's appends reallocated it (and a dict's entries while they
    # were replaced).  In a subprocess: before the fix it could crash.
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent("""\
        import threading
        from poolparty import _poolparty as core

        shared_list = [[i] for i in range(64)]
        shared_dict = {i: [i] for i in range(64)}
        payload = {"list": shared_list, "dict": shared_dict}
        stop = threading.Event()

        def churn():
            n = 0
            while not stop.is_set():
                shared_list.extend([[n]] * 500)
                del shared_list[64:]
                shared_dict.update({k: [n] for k in range(64, 300)})
                for k in range(64, 300):
                    del shared_dict[k]
                n += 1

        threads = [threading.Thread(target=churn) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for _ in range(3000):
                data = core.encode(payload)
                if data is not None:
                    decoded = core.decode(data)
                    assert decoded["list"][:64] == [[i] for i in range(64)]
        finally:
            stop.set()
            for t in threads:
                t.join()
        print("ok")
        """))
    result = run_script(script, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
