"""A chunk in parts (docs/design.md): a worker that has spent 2 ms of CPU
on a map chunk sends the results made so far ahead, and the collector
decodes them while the rest are made.  What the caller sees must be what
a chunk sent whole gives: results, order, exceptions, callbacks, ready().

Each behaviour is checked against the same call with tasks too short to
send parts (ms=0), the chunk-whole path that multiprocessing's semantics
were first matched on; Engine.parts says that parts really went."""

import re
import time

import pytest

from conftest import REFERENCE, UNDER_SANITIZER
import parts_tasks as pt

ITEMS = list(range(8))
CHUNK = 4  # two chunks of four; at 3 ms each, items 0-2 and 4-6 go ahead


def _parts(pool):
    return pool._runner.engine.parts


def _wait_for_parts(pool, count):
    """Poll (bounded) until the collector has taken `count` parts."""
    deadline = time.monotonic() + 30
    while _parts(pool) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _parts(pool) == count


def _expected(items=ITEMS):
    return [pt.spin(i, 0) for i in items]


def _outcome(call):
    """What a call gives: ("ok", value) or ("raised", type, message), the
    message without object addresses (a lock's repr has one)."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        return ("raised", type(exc), re.sub(r"0x[0-9a-f]+", "0x?", str(exc)))


@pytest.mark.poolparty_only
def test_a_slow_chunk_goes_in_parts_and_arrives_whole(make_pool):
    pool = make_pool(1)
    assert pool.map(pt.spin, ITEMS, CHUNK) == _expected()
    # items 0, 1, 2 of each chunk went ahead; the fourth with the chunk's end
    assert _parts(pool) == 6


@pytest.mark.poolparty_only
@pytest.mark.skipif(UNDER_SANITIZER,
                    reason="1,000 no-op tasks may take 2 ms under ASan/TSan")
def test_a_chunk_of_a_thousand_no_op_tasks_is_one_message(make_pool):
    pool = make_pool(1)
    assert pool.map(pt.noop, range(1000), 1000) == list(range(1000))
    assert _parts(pool) == 0


@pytest.mark.poolparty_only
@pytest.mark.parametrize("how", ["map", "map_async", "imap", "imap_unordered",
                                 "starmap", "starmap_async"])
def test_every_pool_call_gets_the_chunks_whole(make_pool, how):
    pool = make_pool(2)
    if how == "map":
        got = pool.map(pt.spin, ITEMS, CHUNK)
    elif how == "map_async":
        got = pool.map_async(pt.spin, ITEMS, CHUNK).get(60)
    elif how == "imap":
        got = list(pool.imap(pt.spin, ITEMS, CHUNK))
    elif how == "imap_unordered":
        got = sorted(pool.imap_unordered(pt.spin, ITEMS, CHUNK))
    elif how == "starmap":
        got = pool.starmap(pt.spin_star, [(i, 3) for i in ITEMS], CHUNK)
    else:
        got = pool.starmap_async(pt.spin_star, [(i, 3) for i in ITEMS],
                                 CHUNK).get(60)
    assert got == _expected()
    assert _parts(pool) == 6


@pytest.mark.poolparty_only
def test_executor_map_gets_the_chunks_whole(make_executor):
    with make_executor(2) as ex:
        assert list(ex.map(pt.spin, ITEMS, chunksize=CHUNK)) == _expected()
        assert ex._runner.engine.parts == 6


def test_callback_once_with_every_result_and_ready_only_at_the_end(
        make_pool, tmp_path):
    pool = make_pool(1)
    release = str(tmp_path / "release")
    called = []
    result = pool.starmap_async(
        pt.spin_or_wait, [(i, CHUNK - 1, release) for i in ITEMS[:CHUNK]],
        CHUNK, callback=called.append)
    if not REFERENCE:
        # The first three went ahead and the collector took them ...
        _wait_for_parts(pool, CHUNK - 1)
    # ... and still nothing is ready: the chunk's last result is not in.
    assert not result.ready()
    result.wait(0.05)
    assert not result.ready() and called == []
    open(release, "w").close()
    assert result.get(60) == _expected(ITEMS[:CHUNK])
    assert called == [_expected(ITEMS[:CHUNK])]


@pytest.mark.parametrize("bad", [2, 5])
def test_an_exception_after_parts_went_is_what_a_whole_chunk_gives(
        make_pool, bad):
    pool = make_pool(1)
    args = [(i, bad, "raise") for i in ITEMS]
    whole = [(i, bad, "raise", 0) for i in ITEMS]
    for call in (lambda a: pool.starmap(pt.spin_unless, a, CHUNK),
                 lambda a: list(pool.imap(pt.spin_unless_star, a, CHUNK))):
        assert _outcome(lambda: call(args)) == _outcome(lambda: call(whole))
    # imap yields the chunks before the failed one, and not a result of it
    got = []
    with pytest.raises(ValueError, match=f"item {bad} failed"):
        for value in pool.imap(pt.spin_unless_star, args, CHUNK):
            got.append(value)
    assert got == _expected(range(CHUNK * (bad // CHUNK)))


@pytest.mark.parametrize("how", ["unpicklable", "unpicklable, small",
                                 "pickled"])
def test_a_result_the_codec_refuses_after_parts_went(make_pool, how):
    pool = make_pool(1)
    args = [(i, CHUNK - 1, how) for i in ITEMS]
    whole = [(i, CHUNK - 1, how, 0) for i in ITEMS]
    errors = []
    parts = _outcome(lambda: pool.starmap(pt.spin_unless, args, CHUNK))
    once = _outcome(lambda: pool.starmap(pt.spin_unless, whole, CHUNK))
    assert parts == once
    async_result = pool.starmap_async(pt.spin_unless, args, CHUNK,
                                      error_callback=errors.append)
    async_result.wait(60)
    if how == "pickled":
        assert parts[0] == "ok" and parts[1][CHUNK - 1] == {CHUNK - 1,
                                                           "a set: pickle's"}
        assert errors == []
    else:
        assert parts[0] == "raised"
        if how == "unpicklable, small":
            # the whole chunk's repr: the parts' results, then the rest's
            assert "'[0, 1, 2, <unlocked _thread.lock" in parts[2]
        assert len(errors) == 1 and not async_result.successful()
    if not REFERENCE:
        # two calls, two chunks each, three results of each went ahead
        assert _parts(pool) == 2 * 2 * (CHUNK - 1)


def test_identity_is_kept_within_a_result_not_across_parts(make_pool):
    pool = make_pool(1)
    got = pool.map(pt.spin_shared, range(CHUNK), CHUNK)
    assert got == [[pt.SHARED, pt.SHARED, i] for i in range(CHUNK)]
    for row in got:
        assert row[0] is row[1]
    if not REFERENCE:
        # Each result went in its own part: one copy each.
        assert len({id(row[0]) for row in got}) == CHUNK


@pytest.mark.poolparty_only
def test_terminate_while_a_chunk_is_half_sent(make_pool, tmp_path):
    import poolparty

    pool = make_pool(1)
    release = str(tmp_path / "never")
    result = pool.starmap_async(
        pt.spin_or_wait, [(i, CHUNK - 1, release) for i in ITEMS[:CHUNK]],
        CHUNK)
    _wait_for_parts(pool, CHUNK - 1)
    pool.terminate()
    pool.join()
    with pytest.raises(poolparty.TerminatedError):
        result.get(30)


@pytest.mark.parametrize("payload", [b"MemoryError: ", b"RuntimeError: no"])
def test_a_plain_text_failure_after_parts_is_delivered_as_it_is(payload):
    # A worker out of memory while encoding the MaybeEncodingError of a
    # chunk whose parts went sends the C core's plain text: decode() must
    # hand that on, not raise (raising killed the collector thread, and
    # every later result waited for ever).
    from poolparty import _engine

    ok, error = _engine.decode(_engine.DONE_UNPICKLABLE_PARTS,
                               ([1, 2], payload))
    assert not ok
    assert type(error).__name__ == "RemoteError"
    assert payload.split(b":")[0].decode() in str(error)


def test_an_unpicklable_rest_after_parts_joins_the_reprs():
    from multiprocessing.pool import MaybeEncodingError

    from poolparty import _engine, _worker

    payload = _worker.encode_error(TypeError("no"), [object])
    ok, error = _engine.decode(_engine.DONE_UNPICKLABLE_PARTS,
                               ([1, 2], payload))
    assert not ok and isinstance(error, MaybeEncodingError)
    assert error.value == "[1, 2, " + repr(object) + "]"
    assert error.args == (error.exc, error.value)
