"""A minimal, bounds-checked DER reader for the vendor extensions ``cryptography`` leaves opaque.

AMD's VCEK extensions, Intel's SGX extension in PCK certificates and the TCG DICE extension in
NVIDIA's GPU certificates arrive as raw DER. These functions split and decode just the forms
those extensions use (definite lengths, low tag numbers) and raise :class:`FormatError` for
anything else, so any bytes either decode or fail with a readable sentence.
"""

from __future__ import annotations

from jupyter_cc.errors import FormatError

__all__ = ["items", "octets", "oid", "single", "uint"]


def items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split ``data`` into its DER elements as (tag, content); they must cover it exactly.

    Lengths must be definite and minimal, as DER requires (a long form for a short length, or
    with leading zero bytes, is refused), and at most three bytes long.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise FormatError(f"{what} ends inside a DER header")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise FormatError(
                f"{what} uses a high-tag-number DER form, which attestation certificates never use"
            )
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 3 or pos + n > len(data) or data[pos] == 0:
                raise FormatError(f"{what} has a bad DER length")
            length = int.from_bytes(data[pos : pos + n], "big")
            if length < 0x80:
                raise FormatError(f"{what} has a bad DER length (long form for a short length)")
            pos += n
        if pos + length > len(data):
            raise FormatError(f"{what} has a DER element longer than its container")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def oid(content: bytes, what: str) -> str:
    if not content or content[-1] & 0x80:
        raise FormatError(f"{what} holds a malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def uint(tag: int, content: bytes, what: str, *, bits: int) -> int:
    if tag not in (0x02, 0x0A) or not content:
        raise FormatError(f"{what} is not a DER INTEGER")
    value = int.from_bytes(content, "big", signed=True)
    if not 0 <= value < 1 << bits:
        raise FormatError(f"{what} is {value}, outside 0..{(1 << bits) - 1}")
    return value


def octets(tag: int, content: bytes, what: str, size: int | None = None) -> bytes:
    if tag != 0x04:
        raise FormatError(f"{what} is not a DER OCTET STRING")
    if size is not None and len(content) != size:
        raise FormatError(f"{what} is {len(content)} bytes, expected {size}")
    return content


def single(data: bytes, tag: int, what: str) -> bytes:
    """The content of ``data`` when it is exactly one DER element with ``tag``."""
    parts = items(data, what)
    if len(parts) != 1 or parts[0][0] != tag:
        raise FormatError(f"{what} is not the expected DER type")
    return parts[0][1]
