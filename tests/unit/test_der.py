"""The DER reader shared by the AMD, Intel and NVIDIA extension parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_cc.attest import der
from jupyter_cc.errors import CCError, FormatError


def test_items_split_and_decode() -> None:
    data = b"\x02\x01\x05" + b"\x04\x02\xab\xcd" + b"\x06\x03\x2a\x86\x48"
    parts = der.items(data, "x")
    assert [t for t, _ in parts] == [0x02, 0x04, 0x06]
    assert der.uint(*parts[0], "x", bits=8) == 5
    assert der.octets(*parts[1], "x", size=2) == b"\xab\xcd"
    assert der.oid(parts[2][1], "x") == "1.2.840"
    long_form = b"\x04\x81\x80" + bytes(128)
    assert der.single(long_form, 0x04, "x") == bytes(128)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04\x81\x05" + bytes(5), "long form for a short length"),
        (b"\x04\x82\x00\x80" + bytes(128), "bad DER length"),
        (b"\x04\x80", "bad DER length"),
        (b"\x04\x05\x00", "longer than its container"),
        (b"\x1f\x01\x00", "high-tag-number"),
        (b"\x04", "ends inside a DER header"),
    ],
)
def test_non_der_encodings_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        der.items(data, "x")


def test_integers_out_of_range_are_refused() -> None:
    with pytest.raises(FormatError, match="outside"):
        der.uint(0x02, b"\xff", "x", bits=8)  # -1
    with pytest.raises(FormatError, match="not the expected DER type"):
        der.single(b"\x02\x01\x01\x02\x01\x01", 0x02, "x")


@given(st.binary(max_size=300))
def test_any_bytes_split_or_raise_a_ccerror(data: bytes) -> None:
    with contextlib.suppress(CCError):
        for tag, content in der.items(data, "x"):
            if tag == 0x06:
                der.oid(content, "x")
