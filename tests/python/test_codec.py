"""The C codec for plain data: exact round trips, shared references kept,
and a clean fallback (None) for anything it does not handle."""

import math
import sys
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("value", [
    2**63, -2**63 - 1,                    # beyond 64 bits
    "lone \udc80 surrogate",
    {1, 2}, frozenset(), bytearray(b"x"), 1 + 2j,
    type("Sub", (list,), {})(),           # subclasses are pickle's job
])
def test_falls_back_for_what_it_does_not_do(value):
    assert core.encode(value) is None
    assert core.encode([1, value]) is None


def test_a_tuple_inside_itself_falls_back():
    holder = []
    cycle = (holder,)
    holder.append(cycle)
    assert core.encode(cycle) is None


@pytest.mark.parametrize("data", [b"", b"\xb5pp1", b"\xb5pp1\x63", b"\xb5pp1\x08\x05\x00",
                                  b"\xb5pp1\x0a\x07", b"junk", b"\xb5pp1\x00\x00"])
def test_corrupt_input_raises_value_error(data):
    with pytest.raises(ValueError):
        core.decode(data)


def test_results_through_the_pool_keep_sharing_and_fall_back():
    with SubinterpreterPool(1) as pool:
        shared = pool.apply(list.__mul__, ([0.25], 1000))
        assert all(item is shared[0] for item in shared)
        assert pool.apply(set, ([1, 2],)) == {1, 2}           # pickle fallback
        assert pool.apply(pow, (2, 100)) == 2**100            # big int fallback
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
