"""starmap's chunks of argument tuples: the codec writes each tuple's
items inline and unnumbered (T_STARS), and the worker decodes them
straight into each call's arguments (design.md, issue 16).  What must
not change: every argument arrives as it was sent, sharing among and
inside the arguments included, and what the codec does not carry still
goes by pickle."""

import sys

import pytest

from conftest import FREE_THREADED, REFERENCE
import star_tasks
from poolparty import _poolparty as core

MAGIC = b"\xb5pp2"
T_STARS = b"\x3f"


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_tuples_of_any_length_arrive_as_sent(pool, chunksize):
    items = [(), (1,), (1, 2.5, "x", b"y", None), tuple(range(8)),
             tuple(range(9)), tuple(float(i) + 0.5 for i in range(40)),
             tuple(range(1000, 1300)), ((1, 2), [3], {"k": (4,)}),
             (2**70, -(3**50)), (bytearray(b"ab"), True, False)]
    back = pool.starmap(star_tasks.args_of, items, chunksize)
    assert back == items
    assert [type(x) for t in back for x in t] == [type(x) for t in items
                                                  for x in t]


def test_sharing_among_and_inside_arguments_round_trips(pool):
    shared = [1, 2]
    box = {"v": shared}
    items = [(shared, shared), (shared, [1, 2]), (box, box["v"])] * 3
    # One chunk: the objects are shared within its message.
    assert pool.starmap(star_tasks.same_objects, [(shared, shared)] * 4,
                        chunksize=4) == [True] * 4
    back = pool.starmap(star_tasks.args_of, items, chunksize=len(items))
    assert back[0][0] is back[0][1]
    assert back[1][0] is back[0][0] and back[1][1] is not back[0][0]
    assert back[2][0]["v"] is back[2][1] is back[0][0]
    # Every item's list is the same list in the worker: appends add up.
    lens = pool.starmap(star_tasks.append_then_len,
                        [(shared, i) for i in range(5)], chunksize=5)
    assert lens == [3, 4, 5, 6, 7]
    assert shared == [1, 2]  # the caller's list is not the worker's


@pytest.mark.parametrize("make", [
    lambda n: (7, [n]),                  # a list only the tuple holds
    lambda n: (f"text {n}",),            # a str only the tuple holds
    lambda n: (bytearray(b"%d" % n),),
])
def test_the_same_tuple_in_many_items(pool, make):
    args = make(1000)
    back = pool.starmap(star_tasks.args_of, [args] * 50, chunksize=50)
    assert back == [args] * 50
    assert all(b[-1] is back[0][-1] for b in back)


def test_numbers_only_the_tuple_holds_arrive_equal(pool):
    args = (10**12 + 1, 2.5e300, 2**70, -7)
    items = [args, (args,)] * 3 + [tuple(float(i) for i in range(12))] * 2
    back = pool.starmap(star_tasks.args_of, items, chunksize=len(items))
    assert back == items


@pytest.mark.parametrize("held", [True, False])
def test_an_argument_tuple_met_again_inside_another(pool, held):
    # held: the list has a holder besides the tuple (T_STARS); else the
    # chunk goes as a list of numbered tuples.  The same objects either way.
    inner = [0]
    args = (inner,) if held else ([0],)
    back = pool.starmap(star_tasks.args_of, [args, ([args],), args],
                        chunksize=3)
    assert back == [args, ([args],), args]
    assert back[1][0][0][0] is back[0][0] is back[2][0]


def test_a_tuple_inside_its_own_arguments(pool):
    holder = []
    cycle = (holder,)
    holder.append(cycle)
    assert pool.starmap(star_tasks.nested_is_arg, [cycle, cycle],
                        chunksize=2) == [True, True]


def test_items_that_are_not_tuples_still_unpack(pool):
    items = [[1, 2], (3, 4), range(5, 7), "ab", {8: 0, 9: 0}]
    assert pool.starmap(star_tasks.args_of, items, chunksize=len(items)) == [
        (1, 2), (3, 4), (5, 6), ("a", "b"), (8, 9)]


def test_what_the_codec_does_not_carry_goes_by_pickle(pool):
    items = [({1, 2}, 3j), (frozenset("a"), None)]
    assert pool.starmap(star_tasks.args_of, items, chunksize=2) == items


def test_a_builtin_gets_the_same_arguments(pool):
    items = [(1, 5), (7, 2), (3,), tuple(range(20))]
    assert pool.starmap(max, items[:2] + [([3],)] + items[3:], chunksize=4) \
        == [5, 7, 3, 19]
    assert pool.starmap(divmod, [(7, 2), (9, 4)], chunksize=2) == [(3, 1),
                                                                   (2, 1)]


def test_large_buffers_in_arguments(pool):
    big = bytes(range(256)) * 1024                 # pinned, not copied
    writable = bytearray(b"w" * (1 << 17))          # the caller holds it
    back = pool.starmap(star_tasks.args_of, [(big, writable), (big,)],
                        chunksize=2)
    assert back == [(big, writable), (big,)]
    assert type(back[0][1]) is bytearray


def test_a_failing_call_fails_its_chunk_and_the_pool_goes_on(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.starmap(star_tasks.fail_on, [(x, 3) for x in range(6)],
                     chunksize=6)
    assert excinfo.value.args == ("bad item", 3)
    with pytest.raises(TypeError):
        pool.starmap(star_tasks.kwonly, [(1, 2)], chunksize=1)
    assert pool.starmap(star_tasks.fail_on, [(1, 3), (2, 3)]) == [1, 2]


def test_deep_arguments_travel_or_fall_back_as_before(pool):
    deep = []
    for _ in range(990):
        deep = [deep]
    back = pool.starmap(star_tasks.args_of, [(deep,)], chunksize=1)
    depth, value = 0, back[0][0]
    while value:
        value, depth = value[0], depth + 1
    assert depth == 990


def test_executor_map_over_several_iterables(make_executor):
    with make_executor(2) as executor:
        shared = [0]
        out = list(executor.map(star_tasks.args_of, range(10), "abcdefghij",
                                [shared] * 10, chunksize=5))
    assert out == [(i, c, [0]) for i, c in zip(range(10), "abcdefghij")]


@pytest.mark.skipif(REFERENCE, reason="poolparty's worker")
@pytest.mark.skipif(FREE_THREADED, reason="gen 0's count is per thread")
def test_the_worker_makes_no_tuple_for_the_arguments(make_pool):
    # Before T_STARS the worker decoded a chunk of 200 items into 200
    # tuples, all tracked by the garbage collector, before the first call.
    with make_pool(1) as pool:
        pool.starmap(star_tasks.collect, [()], chunksize=1)
        lists = [[i] for i in range(200)]
        counts = pool.starmap(star_tasks.tracked_since_collect,
                              [(i, lists[i]) for i in range(100)]
                              + [(lists[i],) for i in range(100, 200)],
                              chunksize=200)
    # Each call's arguments are decoded just before it: one list more
    # each time, and no tuple (counts[0] was 403: the chunk's 200 lists
    # and 200 tuples, all decoded before the first call).
    assert counts[0] < 50, counts[:3]
    assert 199 <= counts[-1] - counts[0] < 220, (counts[0], counts[-1])


# ---- the format (pp__codec_decode's reading of it) -------------------

def test_a_star_payload_decodes_to_its_list_of_tuples():
    payload = (MAGIC + T_STARS + b"\x03"
               + b"\x02" + b"\x03\x01" + b"\x03\x02"     # (1, 2)
               + b"\x00"                                 # ()
               + b"\x01" + b"\x8d\x00")                  # ([],) numbered
    assert core.decode(payload) == [(1, 2), (), ([],)]


@pytest.mark.parametrize("data", [
    MAGIC + T_STARS, MAGIC + T_STARS + b"\x02", MAGIC + T_STARS + b"\x01",
    MAGIC + T_STARS + b"\x01\x02\x03\x01",               # one item of two
    MAGIC + T_STARS + b"\x05\x00",                       # more than the input
    MAGIC + T_STARS + b"\x01\x00\x00",                   # bytes left over
    MAGIC + b"\x0d\x01" + T_STARS + b"\x00",             # not at the top
    MAGIC + T_STARS + b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
])
def test_corrupt_star_payloads_raise_value_error(data):
    with pytest.raises(ValueError):
        core.decode(data)


# ---- submit_map's chunk lists (one list reused from chunk to chunk) --

@pytest.mark.parametrize("chunksize", [1, 3, 4])
def test_chunks_of_every_size_carry_their_own_items(pool, chunksize):
    items = list(range(1000, 1010))
    assert pool.map(star_tasks.value_of, items, chunksize) == items
    pairs = [(i, i) for i in items]
    assert pool.starmap(star_tasks.args_of, pairs, chunksize) == pairs


@pytest.mark.skipif(REFERENCE, reason="poolparty's submit_map")
def test_a_chunk_that_pickling_kept_stays_whole(pool):
    star_tasks.KEPT.clear()
    items = [star_tasks.KeepsItsChunk(i) for i in range(6)]
    assert pool.map(star_tasks.value_of, items, chunksize=2) == list(range(6))
    kept = list({id(r): r for r in star_tasks.KEPT
                 if r is not items}.values())  # each item found its chunk
    # Each chunk the pickler was handed is still whole in its holder's
    # hands (never emptied for the next chunk), and holds its own items.
    assert [[x.value for x in r] for r in kept] == [[0, 1], [2, 3], [4, 5]]
    star_tasks.KEPT.clear()
