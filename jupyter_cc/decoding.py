"""Decode evidence given as raw bytes, hex text or base64 (standard or URL-safe).

Evidence travels in many wrappers: AMD tools write raw binary, test suites hex, Azure services
base64 in either alphabet, padded or not. ``base64.b64decode`` silently drops characters outside
its alphabet, so a URL-safe string decoded as standard base64 yields wrong bytes without an
error. Here every text form is recognised by its alphabet, decoded strictly, and anything
ambiguous or mixed is refused with a sentence saying what was found.

>>> decode_blob(b"deadbeef").hex()
'deadbeef'
>>> decode_blob(b"3q2-7w").hex()
'deadbeef'
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from jupyter_cc.errors import InputError

__all__ = ["JSON_DECODER", "b64decode_any", "b64url_encode", "decode_blob", "decode_hex", "strict_json"]

_HEX = re.compile(rb"\A[0-9a-fA-F]+\Z")
_B64_STD = re.compile(rb"\A[A-Za-z0-9+/]+={0,2}\Z")
_B64_URL = re.compile(rb"\A[A-Za-z0-9_-]+={0,2}\Z")
_B64_ANY = re.compile(rb"\A[A-Za-z0-9+/_-]+={0,2}\Z")
_WHITESPACE = re.compile(rb"\s+")


def _is_text(data: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in data)


def decode_hex(text: str | bytes, *, what: str = "value") -> bytes:
    """Decode hex text (whitespace allowed, optional ``0x``), or raise :class:`InputError`."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = _WHITESPACE.sub(b"", raw)
    if raw[:2].lower() == b"0x":
        raw = raw[2:]
    if not raw or not _HEX.match(raw) or len(raw) % 2:
        raise InputError(
            f"{what} is not hex text (expected an even number of 0-9a-f digits)",
            hint="pass the value as hex, for example 64 hex digits for 32 bytes",
        )
    return bytes.fromhex(raw.decode("ascii"))


def b64decode_any(text: str | bytes, *, what: str = "value") -> bytes:
    """Strictly decode standard or URL-safe base64, padded or not.

    A string that mixes the two alphabets (``+`` or ``/`` together with ``-`` or ``_``), has a
    character outside both, or has an impossible length is refused rather than guessed.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = _WHITESPACE.sub(b"", raw)
    if not raw or not _B64_ANY.match(raw):
        raise InputError(f"{what} is not base64 (found characters outside both base64 alphabets)")
    body = raw.rstrip(b"=")
    if (b"+" in body or b"/" in body) and (b"-" in body or b"_" in body):
        raise InputError(
            f"{what} mixes the standard (+/) and URL-safe (-_) base64 alphabets",
            hint="pass it in one alphabet as the service produced it",
        )
    if len(body) % 4 == 1:
        raise InputError(f"{what} has a base64 length that cannot be decoded ({len(body)} characters)")
    padded = body + b"=" * (-len(body) % 4)
    if b"-" in body or b"_" in body:
        padded = padded.translate(bytes.maketrans(b"-_", b"+/"))
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{what} is not valid base64 ({exc})") from None


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 without padding, as JOSE and Azure services write it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_blob(data: bytes, *, what: str = "input") -> bytes:
    """Return the bytes that ``data`` holds, whether it is raw, hex text or base64 text.

    Binary input (anything with bytes outside printable ASCII) is returned unchanged. Text is
    hex when it consists only of hex digits (an even number of them), otherwise base64 in one
    of the two alphabets; other text is refused, since no evidence kind is plain text. Base64
    text made only of hex digits (after an optional ``0x``) is read as hex: for real evidence
    (hundreds of bytes) that cannot happen by chance, and a wrong reading fails the kind's size
    and format checks. Base64 that merely starts with ``0x`` is decoded whole.
    """
    if not data:
        raise InputError(f"{what} is empty")
    if not _is_text(data):
        return data
    compact = _WHITESPACE.sub(b"", data)
    digits = compact[2:] if compact[:2].lower() == b"0x" else compact
    if digits and _HEX.match(digits) and len(digits) % 2 == 0:
        return bytes.fromhex(digits.decode("ascii"))
    if compact and (_B64_STD.match(compact) or _B64_URL.match(compact) or _B64_ANY.match(compact)):
        return b64decode_any(compact, what=what)
    raise InputError(
        f"{what} is text but neither hex nor base64",
        hint="pass the evidence as raw binary, hex or base64",
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two repeated keys wins; signed or bound JSON must mean one
    # thing to every reader, so a repeated key is an error.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


JSON_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
"""A decoder for evidence JSON: repeated keys and NaN/Infinity raise ValueError."""


def strict_json(text: str) -> Any:
    """Parse evidence JSON with :data:`JSON_DECODER`; raises ValueError or RecursionError."""
    return JSON_DECODER.decode(text)
