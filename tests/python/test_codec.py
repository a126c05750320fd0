"""The C codec for plain data: exact round trips, shared references kept,
and a clean fallback (None) for anything it does not handle."""

import array
import math
import sys
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tasks import echo
from poolparty import SubinterpreterPool
from poolparty import _poolparty as core

scalars = (st.none() | st.booleans()
           | st.integers(min_value=-2**63, max_value=2**63 - 1)
           | st.floats(allow_nan=False) | st.text() | st.binary())
plain = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=8)
                   | st.lists(inner, max_size=8).map(tuple)
                   | st.dictionaries(st.text(max_size=5) | st.integers(-2**63, 2**63 - 1), inner,
                                     max_size=6)),
    max_leaves=40,
)


def same(a, b):
    """Equal, with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(plain)
def test_round_trip(value):
    data = core.encode(value)
    assert data is not None
    assert same(core.decode(data), value)


def test_nan_and_negative_zero_keep_their_bits():
    nan, zero = core.decode(core.encode([math.nan, -0.0]))
    assert math.isnan(nan)
    assert math.copysign(1.0, zero) == -1.0


def test_shared_references_stay_shared():
    x = 0.5
    shared = core.decode(core.encode([x] * 65536))
    assert len(shared) == 65536 and all(item is shared[0] for item in shared)
    assert len(core.encode([x] * 65536)) < 100          # pickle: ~590 KB
    s, inner = "text", [1]
    a, b, (c, d) = core.decode(core.encode([s, s, (inner, inner)]))
    assert a is b and c is d


def test_a_list_that_contains_itself():
    cycle = [1]
    cycle.append(cycle)
    back = core.decode(core.encode(cycle))
    assert back[0] == 1 and back[1] is back


def test_lists_far_longer_than_their_encoding():
    # Past 2**22 items a list is built as its items arrive, not at the
    # length it claims: this path must keep values, sharing and cycles.
    many = 2**22 + 3
    shared = 1.5
    back = core.decode(core.encode([shared] * many + ["end"]))
    assert len(back) == many + 1 and back[-1] == "end"
    assert back[0] == 1.5 and all(item is back[0] for item in back[:many])
    cycle = []
    cycle.extend([cycle] * many)
    back = core.decode(core.encode(cycle))
    assert len(back) == many and back[0] is back and back[-1] is back
    back = core.decode(core.encode(tuple([None] * many)))
    assert type(back) is tuple and len(back) == many


def test_nesting_is_bounded_whatever_the_thread_stack():
    # 3.13 lets C code nest 10,000 levels; the codec's 210-420 bytes a
    # level overflowed a thread with a 2 MB stack (threading.stack_size(),
    # which the collector thread gets too): a segfault.  (1,000 levels
    # fit in 2 MB under ASan too.)  The codec stops
    # at 1,000 levels on every version: deeper data is pickle's.
    import subprocess
    import textwrap

    deep = []
    for _ in range(1_500):
        deep = [deep]
    assert core.encode(deep) is None
    script = textwrap.dedent("""\
        import threading
        from poolparty import _poolparty as core
        data = b"\\xb5pp2" + b"\\x0d\\x01" * 9_990 + b"\\x00"
        threading.stack_size(2 << 20)
        caught = []
        def run():
            try:
                core.decode(data)
            except RecursionError as exc:
                caught.append(exc)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert caught, "decoded 9,990 levels"
        print("bounded")
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "bounded"


@pytest.mark.parametrize("value", [
    2**63, -2**63 - 1, 2**64, -(2**64), 3**1000, -(7**2000),   # beyond 64 bits
    -129, -128, 127, 128, -2**31 - 1, -2**31, 2**31 - 1, 2**31,  # width edges
    2**30 - 1, 2**30, -(2**30) + 1, -(2**30), -(2**30) - 1,  # one digit or two
    "", "ascii", "caf\u00e9", "\u20ac uro", "\U0001f600", "\x00\xff",
    "lone \udc80 surrogate", "\ud800", "x" * 100_000,
    b"", bytearray(), bytearray(b"x\x00y"),
])
def test_scalars_round_trip_exactly(value):
    back = core.decode(core.encode(value))
    assert type(back) is type(value) and back == value
    assert same(core.decode(core.encode([value, value, 0])), [value, value, 0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers() | st.text(st.characters(codec=None)), max_size=20))
def test_any_int_and_any_text_round_trip(value):
    assert same(core.decode(core.encode(value)), value)


def test_an_object_met_again_stays_one_object():
    # Objects with more than one reference are numbered and sent once;
    # the rest (one reference: the container's) cannot be met again.
    x, big, text, blob, inner = 1.5, 2**100, "shared", b"blob", [1]
    back = core.decode(core.encode([x, 2.0, x, big, text, big, text, blob, 7,
                                    blob, 10**12, inner, (inner,)]))
    assert back[0] is back[2] and back[3] is back[5] and back[4] is back[6]
    assert back[7] is back[9] and back[11] is back[12][0]
    records = core.decode(core.encode([{"id": i, "name": str(i)} for i in range(3)]))
    first, second, _ = (list(r) for r in records)
    assert first[0] is second[0] and first[1] is second[1]  # keys sent once


@pytest.mark.parametrize("value", [
    *(array.array(code, [1, 2, 3]) for code in "bBhHiIlLqQ"),
    array.array("d", [1.5, -0.0, math.inf]), array.array("f", [0.25]),
    array.array("q"), memoryview(b"read only"), memoryview(bytearray(b"rw")),
    memoryview(array.array("d", [2.5, 3.5])), memoryview(b"abcd").cast("H"),
])
def test_arrays_and_memoryviews_round_trip(value):
    back = core.decode(core.encode(value))
    assert type(back) is type(value) and back == value
    assert back.tolist() == value.tolist()
    if isinstance(value, memoryview):
        assert (back.readonly, back.format) == (value.readonly, value.format)
    else:
        assert back.typecode == value.typecode


def test_buffers_that_pickle_or_nobody_does():
    assert core.encode(memoryview(b"abcdef")[::2]) is None       # strided
    assert core.encode(memoryview(b"abcd").cast("B", (2, 2))) is None
    assert core.encode(type("A", (array.array,), {})("d")) is None  # subclass


def test_a_bytearray_is_copied_when_encoded():
    value = bytearray(b"abc")
    data = core.encode(value)
    value[0] = ord("z")
    assert core.decode(data) == bytearray(b"abc")


def test_too_deep_falls_back_to_pickle_and_never_crashes():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert core.encode(deep) is None          # pickle's turn
    with pytest.raises(RecursionError):
        pickle.dumps(deep)
    nested = b"\xb5pp2" + b"\x0d\x01" * 100_000 + b"\x00"   # 100,000 lists
    with pytest.raises((RecursionError, ValueError)):
        core.decode(nested)


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset(), 1 + 2j,
    type("Sub", (list,), {})(),           # subclasses are pickle's job
    type("Text", (str,), {})("x"), type("Int", (int,), {})(5),
])
def test_falls_back_for_what_it_does_not_do(value):
    assert core.encode(value) is None
    assert core.encode([1, value]) is None


def test_a_tuple_inside_itself_falls_back():
    holder = []
    cycle = (holder,)
    holder.append(cycle)
    assert core.encode(cycle) is None


@pytest.mark.parametrize("data", [
    b"", b"junk", b"\xb5pp1\x00", b"\xb5pp2", b"\xb5pp2\x63", b"\xb5pp2\x0d\x05\x00",
    b"\xb5pp2\x0f\x07", b"\xb5pp2\x00\x00", b"\xb5pp2\x06\x02zz", b"\xb5pp2\x06\x03\x30x\x00",
    b"\xb5pp2\x06\x00", b"\xb5pp2\x08\x05abc", b"\xb5pp2\x09\x02\xff\xfe", b"\xb5pp2\x04\x01",
    b"\xb5pp2\x07\x00\x00", b"\xb5pp2\x03", b"\xb5pp2\x8d\x01\x0f\x01",
    b"\xb5pp2\x11zz", b"\xb5pp2\x11d\x03abc", b"\xb5pp2\x11d\x09", b"\xb5pp2\x12",
    b"\xb5pp2\x12\x01\x00", b"\xb5pp2\x12\x01\x02Qz\x01a", b"\xb5pp2\x12\x01\x01d\x03abc",
])
def test_corrupt_input_raises_value_error(data):
    with pytest.raises(ValueError):
        core.decode(data)


def test_results_through_the_pool_keep_sharing_and_fall_back():
    with SubinterpreterPool(1) as pool:
        shared = pool.apply(list.__mul__, ([0.25], 1000))
        assert all(item is shared[0] for item in shared)
        assert pool.apply(set, ([1, 2],)) == {1, 2}           # pickle fallback
        assert pool.apply(pow, (2, 100)) == 2**100            # big int, as hex
        assert pool.apply(frozenset, ([1],)) == frozenset([1])
        big = pool.apply(bytes, (10_000_000,))
        assert len(big) == 10_000_000 and not any(big[:100])
        assert pickle.loads(pickle.dumps(shared)) == shared


def test_repeated_item_holds_one_reference_per_slot():
    # REPEATs add their references in one step: the count must still be
    # exact, or the object leaks (too many) or is freed while in use.
    value = core.decode(core.encode([2.5e300] * 3))[0]
    decoded = core.decode(core.encode([1.5e300] * 1000 + [(1, 2)] * 3))
    item = decoded[0]
    base = sys.getrefcount(value)  # one decoded object in one variable
    assert sys.getrefcount(item) == base + 1000
    assert decoded[-1] is decoded[-3]
    del decoded
    assert sys.getrefcount(item) == base


# ---- runs of unshared numbers (T_FLOATS 0x15, T_INTS32 0x16, T_INTS64 0x17)

def _distinct_floats(n, start=0.5):
    return [start + i for i in range(n)]


def test_distinct_floats_travel_as_one_run_of_doubles():
    # Tag, a two-byte count, then 8 bytes a float: no tag per float.
    values = _distinct_floats(1000)
    data = core.encode(values)
    assert len(data) == 4 + 2 + 1 + 3 + 8 * 1000       # magic, list, run
    assert data[7] == 0x15
    assert core.decode(data) == values


def test_ints_travel_in_runs_of_32_or_64_bits():
    narrow = list(range(1 << 20, (1 << 20) + 1000))
    data = core.encode(narrow)
    assert data[7] == 0x16 and len(data) == 4 + 3 + 3 + 4 * 1000
    assert core.decode(data) == narrow
    wide = [2**40 + i for i in range(1000)]
    data = core.encode(wide)
    assert data[7] == 0x17 and len(data) == 4 + 3 + 3 + 8 * 1000
    assert core.decode(data) == wide
    # One int past 32 bits widens its whole run; small ints ride along
    # (-5..256 decode as CPython's own cached objects).
    mixed = [1, -2, 2**31, 7, 100, -128, 127, -2**63, 2**63 - 1, 2**30,
             2**30 - 1, -(2**30), -(2**30) - 1]
    back = core.decode(core.encode(mixed))
    assert back == mixed and all(type(x) is int for x in back)
    assert back[0] is 1 and back[3] is 7


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 255, 256, 257, 16_383, 16_384,
                               2 * 16_383 + 3, 65_536])
def test_runs_of_every_length_round_trip(n):
    # Shorter than 4: one by one; longer than 16,383: cut into runs.
    for values in (_distinct_floats(n), list(range(1 << 20, (1 << 20) + n)),
                   [2**40 + i for i in range(n)]):
        for container in (list, tuple):
            value = container(values)
            back = core.decode(core.encode(value))
            assert type(back) is container and back == value


def test_runs_stop_at_what_they_cannot_carry():
    # Shared objects keep their identity; bools, subclasses, big ints
    # and other types end a run and travel as before.
    shared, big = 2.5, 3**50
    huge = 10**12 + 1                       # shared, past the small ints
    value = [0.5, 1.5, 2.5 + 1, 3.5, shared, 4.5, 5.5, 6.5, 7.5, shared,
             1, 2, 3, True, 4, 5, 6, 7, big, 8, 9, 10, 11, huge, 12, 13,
             14, 15, huge, "x", 2**64, -(2**63) - 1, 16.5, 17.5, 18.5, 19.5]
    back = core.decode(core.encode(value))
    assert same(back, value)
    assert back[4] is back[9] and back[23] is back[28]
    assert back[13] is True
    floats = [1.0, 2.0, 3.0, 4.0]
    repeated = floats + [floats[0]] * 3 + _distinct_floats(5)
    back = core.decode(core.encode(repeated))
    assert back == repeated and back[4] is back[0] is back[6]


def test_floats_in_runs_keep_their_bits():
    values = [math.nan, -0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]
    back = core.decode(core.encode(values + [0.25]))
    assert math.isnan(back[0]) and math.copysign(1.0, back[1]) == -1.0
    assert back[2:] == values[2:] + [0.25]


@pytest.mark.parametrize("data", [
    b"\xb5pp2\x0d\x04\x15\x00",                       # a run of no items
    b"\xb5pp2\x0d\x04\x15\x05" + b"\x00" * 40,        # more items than the list
    b"\xb5pp2\x0d\x04\x15\x04" + b"\x00" * 31,        # cut short
    b"\xb5pp2\x0d\x04\x16\x04" + b"\x00" * 15,
    b"\xb5pp2\x0d\x04\x17\x84\x00" + b"\x00" * 31,
    b"\xb5pp2\x0d\x04\x16",                           # no count
    b"\xb5pp2\x15\x01" + b"\x00" * 8,                 # a run as a value
    b"\xb5pp2\x0d\x01\x95\x01" + b"\x00" * 8,         # a numbered run
    b"\xb5pp2\x0e\x01\x16\x01\x00\x00\x00\x00\x00",   # a run as a dict key
    b"\xb5pp2\x0d\x02\x16\x01\x00\x00\x00\x00\x03\x01\x00",  # trailing bytes
])
def test_damaged_runs_raise_value_error(data):
    with pytest.raises(ValueError):
        core.decode(data)


def test_a_run_then_repeat_of_its_last_item():
    # REPEAT after a run repeats the run's last object.
    data = b"\xb5pp2\x0d\x06\x16\x04" + b"\x01\x00\x00\x00" * 3 + \
        b"\x00\x00\x01\x00" + b"\x10\x02"
    back = core.decode(data)
    assert back == [1, 1, 1, 65536, 65536, 65536]
    assert back[3] is back[4] is back[5]


@pytest.mark.parametrize("size", [(64 << 10) - 1, 64 << 10, (64 << 10) + 1,
                                  (1 << 20) + 123, (5 << 20) + 7])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_buffers_decode_whole_into_fresh_memory(size, kind):
    # From 64 KB to 4 MB a decoded buffer's pages, when fresh, are
    # faulted in by one madvise before the copy (whole pages only: the
    # edges are the copy's); from 4 MB it asks for huge pages instead.
    import random

    value = kind(random.Random(size).randbytes(size))
    back = core.decode(core.encode([value, b"end"]))
    assert type(back[0]) is kind and back[0] == value and back[1] == b"end"


@pytest.mark.parametrize("n", [8_191, 8_192, 8_193, 65_536, (1 << 19) + 1])
def test_long_lists_fill_their_populated_storage(n):
    # A list of 64 KB of pointers or more (under 4 MB) has its storage
    # faulted in by one madvise when fresh: every slot still set.
    x = 0.75
    back = core.decode(core.encode([x] * n))
    assert len(back) == n and back.count(x) == n and back[-1] is back[0]
    values = list(range(n))
    assert core.decode(core.encode(values)) == values


def _fresh(text):
    """A str object of its own: not interned, not a constant."""
    return "".join([text[:1], text[1:]])


def test_records_keys_stay_shared_in_any_order_and_number():
    # A record's keys are found by their position in the dict before
    # (encode_key); keys in another order, more keys than are kept
    # (16), keys that are not str, and a key met as a value too must
    # come back as they were: equal, and one object where one was sent.
    keys = [_fresh(f"key{i}") for i in range(20)]
    shared_value = _fresh("both a key and a value")
    records = [dict.fromkeys(keys, i) for i in range(3)]
    records += [dict.fromkeys(reversed(keys), i) for i in range(2)]
    records += [{keys[0]: 1, keys[1]: 2}, {keys[1]: 3, keys[0]: 4},
                {_fresh("key0"): 5},                  # equal, not the same
                {shared_value: 1, 7: 2, (1, 2): 3}, {shared_value: 2},
                [shared_value], {}]
    back = core.decode(core.encode(records))
    assert same(back, records)
    first = list(back[0])
    for record in back[:7]:
        for key in record:
            assert key is first[int(key[3:])]
    assert list(back[7])[0] == "key0" and list(back[7])[0] is not first[0]
    assert list(back[8])[0] is list(back[9])[0] is back[10][0]


def test_records_keys_keep_their_numbers_across_nesting():
    # A kept key's number must be the one its first sending took, also
    # when other objects were numbered between (shared values, nested
    # records with other keys at the same positions).
    a, b = _fresh("alpha"), _fresh("beta")
    v = [1.5]
    rows = [{a: v, b: {b: v, a: (v, v)}}, {a: [v], b: {a: 1, b: 2}},
            {b: 0, a: {a: v}}]
    back = core.decode(core.encode(rows))
    assert same(back, rows)
    keys = {id(k) for row in back for k in _all_keys(row)}
    assert len(keys) == 2
    assert back[0][a] is back[0][b][b] is back[0][b][a][0] is back[2][a][a]


def _all_keys(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _all_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _all_keys(item)


@pytest.mark.parametrize("depth", [1, 7, 8, 9, 15, 16, 17, 999])
def test_the_recursion_guard_is_balanced_at_every_depth(depth):
    # The interpreter's recursion counter is entered one level in eight
    # (GUARD_EVERY); an unbalanced enter or leave would drift it until
    # encoding fell back to pickle, or never stopped a deep caller.
    value = 0.5
    for _ in range(depth):
        value = [value, {"k": value}] if depth < 20 else [value]
    for _ in range(2_000 if depth < 20 else 20):
        data = core.encode(value)
        assert data is not None
    assert core.decode(data) == value
    deep = []
    for _ in range(1_000):
        deep = [deep]
    assert core.encode(deep[0]) is not None and core.encode(deep) is None


def test_unshared_items_of_a_list_are_not_numbered():
    # A free-threaded build encodes a copy of a list, whose references
    # made every item look shared: each went through the identity memo
    # and was numbered (4x the time of a tuple's items).  A list's items
    # must encode as a tuple's do, and the same for a dict's values.
    as_list = core.encode([_fresh(f"item-{i}") for i in range(100)])
    as_tuple = core.encode(tuple([_fresh(f"item-{i}") for i in range(100)]))
    assert as_list[4] == 0x0D and as_tuple[4] == 0x0C
    assert as_list[5:] == as_tuple[5:]
    data = core.encode({"k": _fresh("value")})
    assert data[9] == 0x08                         # T_STR1, not numbered
    # Sharing is still seen, with the copies' references counted.
    s = _fresh("shared")
    back = core.decode(core.encode([s, 1.5, s, {"a": s}, [s], (s,)]))
    assert back[0] is back[2] is back[3]["a"] is back[4][0] is back[5][0]


@pytest.mark.parametrize("at", [0, 1, 3, 4, 255, 256, 257, 1000, 16_377])
def test_a_run_widens_where_its_first_wide_int_comes(at):
    # Ints go 4 bytes each until one needs 8, when those before are
    # widened in place: negative ones keep their sign, and the run is
    # one T_INTS64 whatever the wide int's place.
    for wide in (2**31, -2**31 - 1, 2**63 - 1, -2**63):
        tail = [wide, -(2**31), 2**31 - 1, -129, 300, 5]
        # Objects only the list holds (not constants, not in two lists).
        values = [int(str((-1) ** i * ((1 << 20) + i))) for i in range(at)]
        values += [int(str(x)) for x in tail]
        data = core.encode(values)
        run = 4 + 1 + len(_varint(len(values)))   # magic, list, count
        assert data[run] == 0x17 and len(data) == run + 3 + 8 * len(values)
        back = core.decode(data)
        assert back == values and all(type(x) is int for x in back)


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("n", [4_095, 4_096, 70_000])
def test_long_lists_reserve_room_and_keep_only_what_they_wrote(n):
    # A long list of distinct values reserves 4 bytes an item up front
    # (encode_items); what is sent is still only what was written, for
    # values smaller than that (a repeat after two distinct items) and
    # larger (dicts), through encode() and through a pool's messages.
    few = [_fresh("first"), _fresh("second")] + [None] * (n - 2)
    assert len(core.encode(few)) < 40
    records = [{"i": i, "s": _fresh("s")} for i in range(n)]
    narrow = [chr(0x100 + i % 1000) + "" for i in range(n)]     # 4 bytes
    values = (few, records, narrow, [i * 0.5 for i in range(n)])
    for value in values:
        assert same(core.decode(core.encode(value)), value)
    with SubinterpreterPool(1) as pool:
        for value in values:
            assert same(pool.apply(echo, (value,)), value)


@pytest.mark.parametrize("k", range(1, 12))
def test_a_few_shared_objects_stay_shared_as_the_memo_grows(k):
    # The memo's inline table fills to three quarters (6 of 8) before a
    # table is allocated: every count around that must keep identity.
    objs = [_fresh(f"s{i}") for i in range(k)]
    value = (objs, [objs[::-1]], {"k": objs[0]})
    back = core.decode(core.encode(value))
    assert same(back, value)
    assert back[0] is not back[1][0]
    for i in range(k):
        assert back[0][i] is back[1][0][k - 1 - i]
    assert back[2]["k"] is back[0][0]
