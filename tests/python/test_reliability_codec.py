"""Reliability: the C codec fed damaged input.

tests/python/test_codec.py checks the codec's round trips and a few
corrupt inputs.  Here valid encodings of random plain data are damaged
(bytes flipped, cut short, spliced, duplicated) and decoded: the decoder
must return a value or raise an ordinary exception, never crash, hang or
read out of bounds.  Run under scripts/sanitize.sh this is an
AddressSanitizer fuzz of the decoder.
"""

import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REFERENCE

pytestmark = [
    pytest.mark.skipif(REFERENCE, reason="poolparty's own codec"),
    pytest.mark.timeout(120),
]

core = pytest.importorskip("poolparty._poolparty")
if not hasattr(core, "decode"):  # pragma: no cover - before the codec
    pytest.skip("no codec in this build", allow_module_level=True)

# What a corrupt input may raise: ValueError (the codec's "corrupt"),
# UnicodeDecodeError (a ValueError), TypeError (an unhashable dict key
# built from damaged tags), MemoryError (a damaged length asking for too
# much), OverflowError, RecursionError.
ACCEPTABLE = (ValueError, TypeError, MemoryError, OverflowError, RecursionError)

scalars = (st.none() | st.booleans() | st.integers()
           | st.floats(allow_nan=True) | st.text(max_size=20)
           | st.text(st.characters(codec=None), max_size=5)   # surrogates too
           | st.binary(max_size=20) | st.binary(max_size=20).map(bytearray)
           | st.binary(max_size=20).map(memoryview)
           | st.lists(st.integers(-2**15, 2**15 - 1), max_size=5).map(
               lambda items: array.array("h", items)))
plain = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=6)
                   # runs of numbers (T_FLOATS, T_INTS32, T_INTS64)
                   | st.lists(st.floats(allow_nan=True) | st.integers(),
                              min_size=4, max_size=12)
                   | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=5) | st.integers(), inner,
                                     max_size=4)),
    max_leaves=25,
)


def _encoded(value):
    data = core.encode(value)
    assert data is not None  # every value drawn here is plain data
    return bytes(data)


def _decode_survives(data):
    try:
        core.decode(data)
    except ACCEPTABLE:
        pass


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, where=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_one_byte_changed(value, where, byte):
    data = bytearray(_encoded(value))
    data[where % len(data)] = byte
    _decode_survives(bytes(data))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, cut=st.integers(0, 10_000))
def test_cut_short(value, cut):
    data = _encoded(value)
    _decode_survives(data[: cut % len(data)])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(a=plain, b=plain, i=st.integers(0, 10_000), j=st.integers(0, 10_000))
def test_spliced(a, b, i, j):
    x, y = _encoded(a), _encoded(b)
    _decode_survives(x[: i % len(x)] + y[j % len(y):])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, i=st.integers(0, 10_000), n=st.integers(1, 16))
def test_a_slice_repeated(value, i, n):
    data = _encoded(value)
    start = i % len(data)
    chunk = data[start:start + n]
    _decode_survives(data[:start] + chunk * 3 + data[start:])


def test_damaged_lengths_do_not_allocate_without_bound():
    # A list or tuple claiming 2**40 items: refused or MemoryError, at once.
    magic = bytes(core.encode(None))[:-1]
    for tag in (7, 8):  # T_TUPLE, T_LIST
        varint = bytes([0x80] * 5 + [0x20])  # 2**40
        _decode_survives(magic + bytes([tag]) + varint + b"\x00")
