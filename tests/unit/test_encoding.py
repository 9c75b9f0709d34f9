"""Input decoding: raw, hex and both base64 alphabets are told apart, never guessed wrong."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jupyter_cc.decoding import b64decode_any, b64url_encode, decode_blob, decode_hex
from jupyter_cc.errors import CCError, InputError

# Bytes whose standard and URL-safe encodings differ (they contain + and / or - and _).
SAMPLE = bytes([0xFB, 0xFF, 0xBF, 0xFE, 0x00, 0x10, 0x83])


def test_raw_binary_is_returned_unchanged() -> None:
    assert decode_blob(SAMPLE) == SAMPLE


def test_hex_text_with_whitespace_and_prefix() -> None:
    assert decode_blob(b"0xDEAD beef\n") == bytes.fromhex("deadbeef")
    assert decode_hex("de ad") == b"\xde\xad"


@pytest.mark.parametrize("encoder", [base64.b64encode, base64.urlsafe_b64encode])
def test_both_base64_alphabets_padded_or_not(encoder) -> None:  # type: ignore[no-untyped-def]
    text = encoder(SAMPLE)
    assert decode_blob(text) == SAMPLE
    assert decode_blob(text.rstrip(b"=")) == SAMPLE


def test_mixed_alphabets_are_refused_not_guessed() -> None:
    mixed = base64.b64encode(SAMPLE * 3).replace(b"/", b"_", 1)
    assert b"+" in mixed or b"/" in mixed
    with pytest.raises(InputError, match="mixes the standard"):
        decode_blob(mixed)


def test_text_that_is_neither_is_refused() -> None:
    with pytest.raises(InputError, match="neither hex nor base64"):
        decode_blob(b"hello, world!")
    with pytest.raises(InputError, match="empty"):
        decode_blob(b"")
    with pytest.raises(InputError, match="cannot be decoded"):
        b64decode_any("abcde")
    with pytest.raises(InputError, match="not hex"):
        decode_hex("abc")


def test_b64url_round_trip() -> None:
    assert b64decode_any(b64url_encode(SAMPLE)) == SAMPLE
    assert "=" not in b64url_encode(SAMPLE)


@given(st.binary(min_size=1, max_size=512))
def test_any_bytes_decode_or_raise_a_ccerror(data: bytes) -> None:
    with contextlib.suppress(CCError):
        decode_blob(data)


@given(st.binary(min_size=1, max_size=256))
@example(b"\xd1p")  # URL-safe "0XA": base64 that starts like a 0x prefix
@example(b"\xd1p\x00")  # "0XAA": hex after the prefix, the documented precedence
def test_every_encoding_of_binary_round_trips(data: bytes) -> None:
    for text in (data.hex().encode(), base64.b64encode(data), base64.urlsafe_b64encode(data).rstrip(b"=")):
        digits = text[2:] if text[:2].lower() == b"0x" else text
        if text != data.hex().encode() and all(c in b"0123456789abcdefABCDEF" for c in digits.rstrip(b"=")):
            continue  # base64 made only of hex digits (after 0x) reads as hex: the documented precedence
        assert decode_blob(text) == data
