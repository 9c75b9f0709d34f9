"""The sealed envelope format: authenticated header, AES-256-GCM chunks (docs/sealed-format.md).

An envelope is a preamble (magic, format version, header length), a JSON header (key id, chunk
size, content type, creation time, salt, nonce prefix, key commitment) and the chunks. Every
chunk's AAD binds the SHA-256 of the exact header bytes, its index and a final-chunk flag, so
truncation, reordering, duplication, appended bytes, header edits and bit flips all fail, and
nothing is returned unless every chunk authenticated. This module seals and unseals buffers
and values; :mod:`jupyter_cc.seal.files` streams files with the same pieces (the names here
without a leading underscore and outside ``__all__`` are those pieces).

>>> key = bytes(range(32))
>>> blob = seal_value({"rows": 3}, key)
>>> unseal_value(blob, key)
{'rows': 3}
>>> unseal_bytes(blob, key)[1].content_type.codec
'json'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.keys import fingerprint
from jupyter_cc.seal.codecs import Buffer, CodecError, ContentType, decode, encode

__all__ = [
    "ALGORITHM",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_KEY_ID",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "EnvelopeFormatError",
    "Header",
    "SealError",
    "TamperedError",
    "UnsealError",
    "WrongKeyError",
    "seal_bytes",
    "seal_value",
    "unseal_bytes",
    "unseal_value",
]

MAGIC = b"\x89JCCSEAL"
FORMAT_VERSION = 1
ALGORITHM = "AES-256-GCM"
KDF = "HKDF-SHA256"
KEY_SIZE = 32
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_HEADER_SIZE = 65536
MAX_CHUNKS = 1 << 32
MAX_KEY_ID = 200

PREAMBLE = struct.Struct(">8sHI")  # magic, version, header length
_INFO_DATA_KEY = b"jupyter-cc sealed v1 data key"
_INFO_KEY_CHECK = b"jupyter-cc sealed v1 key check"
_HEADER_FIELDS = frozenset(
    {
        "version",
        "alg",
        "kdf",
        "key_id",
        "chunk_size",
        "content_type",
        "created",
        "salt",
        "nonce_prefix",
        "key_check",
    }
)


# -- errors -----------------------------------------------------------------------------------


class SealError(CCError):
    """Base of the sealing errors: a value, file or envelope could not be sealed or unsealed."""

    check = "seal"


class UnsealError(SealError):
    """An envelope did not authenticate (exit status 1); no plaintext was released."""

    check = "authentication"


class EnvelopeFormatError(UnsealError):
    """The bytes are not a sealed envelope this version reads (bad magic, version or header)."""

    check = "format"


class WrongKeyError(UnsealError):
    """The key's commitment does not match the envelope's: another key, or an edited header."""


class TamperedError(UnsealError):
    """A chunk failed authentication: altered, reordered, duplicated, truncated or extended."""


# -- keys and header --------------------------------------------------------------------------


def check_key(key: Any) -> bytes:
    """``key`` as 32 bytes of AES-256 key, or an :class:`InputError` saying what it is instead."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InputError(f"a sealing key must be 32 bytes, not {type(key).__name__}")
    material = bytes(key)
    if len(material) != KEY_SIZE:
        raise InputError(
            f"a sealing key must be exactly 32 bytes (AES-256), but this one has {len(material)}"
        )
    return material


def byte_view(data: Any) -> memoryview:
    """A flat byte view of a bytes-like object, without copying it."""
    try:
        view = memoryview(data)
    except TypeError:
        raise InputError(
            f"only bytes-like data can be sealed as bytes, not a {type(data).__name__}"
        ) from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InputError("a non-contiguous buffer cannot be sealed as bytes; copy it with bytes() first")
        view = view.cast("B")
    return view


def _derive(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class Header:
    """The authenticated header of an envelope (readable without the key, see :func:`peek_header`).

    ``raw`` is the exact header bytes (preamble and JSON) that every chunk's AAD binds; the salt,
    nonce prefix and key check are public per-envelope values, not key material.
    """

    version: int
    key_id: str
    algorithm: str
    chunk_size: int
    content_type: ContentType
    created: datetime
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    key_check: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Bytes from the start of the envelope to its first chunk."""
        return len(self.raw)

    def to_json(self) -> dict[str, Any]:
        """The header's fields as a JSON-able dict (for ``--json`` output and audit events)."""
        return {
            "version": self.version,
            "key_id": self.key_id,
            "alg": self.algorithm,
            "chunk_size": self.chunk_size,
            "content_type": self.content_type.to_json(),
            "created": _format_time(self.created),
        }


def _format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_key_id(key_id: Any) -> str:
    """``key_id`` if it is 1 to 200 printable ASCII characters (it is written in the header)."""
    if (
        not isinstance(key_id, str)
        or not 1 <= len(key_id) <= MAX_KEY_ID
        or not all(0x20 <= ord(c) <= 0x7E for c in key_id)
    ):
        raise InputError("a key id must be 1 to 200 printable ASCII characters")
    return key_id


def check_chunk_size(chunk_size: Any) -> int:
    """``chunk_size`` if it is an int from 16 bytes to 64 MiB."""
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(
            f"chunk size {chunk_size!r} is outside {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes (64 MiB)"
        )
    return chunk_size


def build_header(
    key: bytes, key_id: str | None, content_type: ContentType, chunk_size: int
) -> tuple[Header, bytes]:
    """A fresh header (random salt and nonce prefix) and the envelope's data key."""
    salt, prefix = secrets.token_bytes(32), secrets.token_bytes(8)
    created = datetime.now(timezone.utc).replace(microsecond=0)
    key_check = _derive(key, salt, _INFO_KEY_CHECK)
    name = check_key_id(key_id if key_id is not None else fingerprint(key))
    obj: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "alg": ALGORITHM,
        "kdf": KDF,
        "key_id": name,
        "chunk_size": check_chunk_size(chunk_size),
        "content_type": content_type.to_json(),
        "created": _format_time(created),
        "salt": salt.hex(),
        "nonce_prefix": prefix.hex(),
        "key_check": key_check.hex(),
    }
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise CodecError("the content type's parameters are not valid JSON (NaN or infinity)") from None
    body = text.encode("ascii")
    if len(body) > MAX_HEADER_SIZE:
        raise CodecError(f"the envelope header would be {len(body)} bytes, over the {MAX_HEADER_SIZE} limit")
    raw = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body
    header = Header(
        FORMAT_VERSION,
        name,
        ALGORITHM,
        chunk_size,
        content_type,
        created,
        salt,
        prefix,
        key_check,
        raw,
    )
    return header, _derive(key, salt, _INFO_DATA_KEY)


def parse_preamble(pre: bytes, what: str) -> int:
    """Check magic and version; return the header JSON length."""
    if len(pre) < PREAMBLE.size:
        raise EnvelopeFormatError(f"{what} is {len(pre)} bytes, too short to be a sealed envelope")
    magic, version, length = PREAMBLE.unpack_from(pre)
    if magic != MAGIC:
        raise EnvelopeFormatError(
            f"{what} is not a jupyter-cc sealed envelope (its first bytes are not the magic)"
        )
    if version != FORMAT_VERSION:
        raise EnvelopeFormatError(
            f"{what} has envelope format version {version}; this jupyter-cc reads version {FORMAT_VERSION}"
        )
    if not 2 <= length <= MAX_HEADER_SIZE:
        raise EnvelopeFormatError(
            f"{what} declares a header of {length} bytes, outside 2 to {MAX_HEADER_SIZE}"
        )
    return int(length)


def _hex_field(obj: dict[str, Any], name: str, size: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str) or len(value) != 2 * size or value != value.lower():
        raise ValueError(f"{name} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(value)


def parse_header(raw: bytes, what: str) -> Header:
    """Parse the header bytes (preamble and JSON); any defect is an EnvelopeFormatError."""
    parse_preamble(raw, what)
    try:
        obj = strict_json(raw[PREAMBLE.size :].decode("ascii"))
        if not isinstance(obj, dict):
            raise ValueError("it is not a JSON object")
        if set(obj) != _HEADER_FIELDS:
            missing, extra = sorted(_HEADER_FIELDS - set(obj)), sorted(set(obj) - _HEADER_FIELDS)
            raise ValueError(f"members missing {missing}, unknown {extra}")
        if type(obj["version"]) is not int or obj["version"] != FORMAT_VERSION:
            raise ValueError(f"version must be {FORMAT_VERSION}, like the preamble")
        if obj["alg"] != ALGORITHM or obj["kdf"] != KDF:
            raise ValueError(f"alg must be {ALGORITHM} and kdf {KDF}")
        key_id = check_key_id(obj["key_id"])
        chunk_size = check_chunk_size(obj["chunk_size"])
        content_type = ContentType.from_json(obj["content_type"])
        created_text = obj["created"]
        if not isinstance(created_text, str) or len(created_text) != 20:
            raise ValueError("created must be a UTC time like 2026-01-31T12:00:00Z")
        created = datetime.strptime(created_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        salt = _hex_field(obj, "salt", 32)
        prefix = _hex_field(obj, "nonce_prefix", 8)
        key_check = _hex_field(obj, "key_check", 32)
    except (UnicodeDecodeError, ValueError, InputError) as exc:
        reason = exc.message if isinstance(exc, InputError) else str(exc).splitlines()[0]
        raise EnvelopeFormatError(f"{what} has a malformed envelope header ({reason.rstrip('.')})") from None
    return Header(
        FORMAT_VERSION, key_id, ALGORITHM, chunk_size, content_type, created, salt, prefix, key_check, raw
    )


def read_header_bytes(data: memoryview, what: str) -> bytes:
    """The preamble and header JSON at the start of an in-memory envelope."""
    length = parse_preamble(bytes(data[: PREAMBLE.size]), what)
    end = PREAMBLE.size + length
    if len(data) < end:
        raise EnvelopeFormatError(f"{what} ends inside its envelope header: it was truncated")
    return bytes(data[:end])


# -- the chunk cipher -------------------------------------------------------------------------


class Chunks:
    """Per-envelope AEAD state: data key, nonce prefix and header hash; builds nonces and AADs."""

    __slots__ = ("_aead", "_hash", "_prefix")

    def __init__(self, header: Header, data_key: bytes) -> None:
        self._aead = AESGCM(data_key)
        self._prefix = header.nonce_prefix
        self._hash = hashlib.sha256(header.raw).digest()

    def _nonce_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        counter = index.to_bytes(4, "big")
        return self._prefix + counter, self._hash + counter + (b"\x01" if final else b"\x00")

    def encrypt_into(self, index: int, final: bool, piece: Buffer, out: memoryview) -> None:
        nonce, aad = self._nonce_aad(index, final)
        self._aead.encrypt_into(nonce, piece, aad, out)

    def decrypt_into(self, index: int, final: bool, segment: memoryview, out: memoryview) -> bool:
        """Authenticate and decrypt one chunk into ``out``; False if it does not authenticate."""
        nonce, aad = self._nonce_aad(index, final)
        try:
            self._aead.decrypt_into(nonce, segment, aad, out)
        except InvalidTag:
            return False
        return True

    def authenticates(self, index: int, final: bool, segment: memoryview) -> bool:
        nonce, aad = self._nonce_aad(index, final)
        try:
            self._aead.decrypt(nonce, segment, aad)
        except InvalidTag:
            return False
        return True

    def failure(self, index: int, final: bool, segment: memoryview, what: str, extra: int) -> TamperedError:
        """The error for a chunk that failed; the opposite final flag only words the sentence."""
        if final and len(segment) >= TAG_SIZE and self.authenticates(index, False, segment):
            return TamperedError(
                f"{what} ends after chunk {index}, which is not its final chunk: the envelope was truncated"
            )
        if not final and self.authenticates(index, True, segment):
            return TamperedError(
                f"{what} has {extra} bytes after its final chunk (chunk {index}): data was appended"
            )
        return TamperedError(
            f"chunk {index} of {what} does not authenticate: the envelope was altered, reordered, "
            "duplicated, truncated or extended"
        )


def open_envelope(header: Header, key: bytes, what: str) -> Chunks:
    """Check the key commitment and return the chunk cipher."""
    if not hmac.compare_digest(_derive(key, header.salt, _INFO_KEY_CHECK), header.key_check):
        raise WrongKeyError(
            f"{what} was sealed under key id {header.key_id}, and the given key "
            f"(fingerprint {fingerprint(key)}) does not open it, or its header was altered"
        )
    return Chunks(header, _derive(key, header.salt, _INFO_DATA_KEY))


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks ``size`` plaintext bytes take (at least one: the final chunk may be empty)."""
    count = max(1, -(-size // chunk_size))
    if count > MAX_CHUNKS:
        raise SealError(
            f"{size} bytes need {count} chunks of {chunk_size} bytes, over the 2^32 an envelope holds",
            hint="use a larger chunk size",
        )
    return count


# -- bytes and values -------------------------------------------------------------------------


def seal_bytes(
    data: Buffer,
    key: bytes,
    *,
    key_id: str | None = None,
    content_type: ContentType | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytearray:
    """Seal ``data`` into a new envelope.

    The envelope is built in one preallocated ``bytearray`` that the chunks are encrypted into
    directly, so sealing a 1 GiB buffer allocates the envelope and nothing else of its size
    (``bytes(envelope)`` makes an immutable copy when one is needed).

    Args:
        data: any C-contiguous bytes-like object; it is read, never copied.
        key: 32 bytes (AES-256).
        key_id: the name recorded in the header; by default the key's fingerprint
            (:func:`jupyter_cc.keys.fingerprint`, as a key release shows it).
        content_type: the codec recorded for the plaintext; ``bytes`` by default.
        chunk_size: plaintext bytes per chunk, 16 bytes to 64 MiB.

    Raises:
        InputError: a key that is not 32 bytes, a bad key id or chunk size.
    """
    key = check_key(key)
    view = byte_view(data)
    header, data_key = build_header(key, key_id, content_type or ContentType("bytes"), chunk_size)
    chunks = Chunks(header, data_key)
    size = len(view)
    count = chunk_count(size, chunk_size)
    out = bytearray(header.size + size + count * TAG_SIZE)
    out[: header.size] = header.raw
    with memoryview(out) as dst:
        pos = header.size
        for index in range(count):
            start = index * chunk_size
            piece = view[start : start + chunk_size]
            end = pos + len(piece) + TAG_SIZE
            chunks.encrypt_into(index, index == count - 1, piece, dst[pos:end])
            pos = end
    return out


def unseal_bytes(blob: Buffer, key: bytes) -> tuple[bytearray, Header]:
    """Authenticate and decrypt an envelope; returns the plaintext and the header.

    Every chunk is authenticated before the plaintext is returned; on any failure nothing is.

    Raises:
        EnvelopeFormatError: not an envelope, or a malformed header.
        WrongKeyError: the key is not the one it was sealed under.
        TamperedError: a chunk failed (altered, reordered, duplicated, truncated, extended).
        InputError: a key that is not 32 bytes.
    """
    key = check_key(key)
    what = "the envelope"
    view = byte_view(blob)
    header = parse_header(read_header_bytes(view, what), what)
    chunks = open_envelope(header, key, what)
    body = view[header.size :]
    segment_size = header.chunk_size + TAG_SIZE
    count = max(1, -(-len(body) // segment_size))
    last = len(body) - (count - 1) * segment_size
    if count == 1 and last < TAG_SIZE:
        raise TamperedError(f"{what} has no complete chunk after its header: it was truncated")
    out = bytearray((count - 1) * header.chunk_size + max(0, last - TAG_SIZE))
    with memoryview(out) as dst:
        pos = 0
        for index in range(count):
            segment = body[index * segment_size : (index + 1) * segment_size]
            final = index == count - 1
            if len(segment) < TAG_SIZE:
                raise TamperedError(f"{what} ends {len(segment)} bytes into chunk {index}: it was truncated")
            plain = len(segment) - TAG_SIZE
            if not chunks.decrypt_into(index, final, segment, dst[pos : pos + plain]):
                extra = len(body) - (index + 1) * segment_size
                raise chunks.failure(index, final, segment, what, extra)
            pos += plain
    return out, header


def seal_value(
    value: Any,
    key: bytes,
    *,
    key_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    unsafe_pickle: bool = False,
) -> bytearray:
    """Encode ``value`` with its codec (:mod:`jupyter_cc.seal.codecs`) and seal it.

    Bytes and C-ordered NumPy arrays are sealed from their own memory, without a copy.

    Raises:
        CodecError: no safe codec for the value (pickle needs ``unsafe_pickle=True``).
        InputError: a bad key, key id or chunk size.
    """
    key = check_key(key)
    content_type, data = encode(value, unsafe_pickle=unsafe_pickle)
    return seal_bytes(data, key, key_id=key_id, content_type=content_type, chunk_size=chunk_size)


def unseal_value(blob: Buffer, key: bytes, *, unsafe_pickle: bool = False) -> Any:
    """Unseal an envelope made by :func:`seal_value` and decode the value it names.

    Raises:
        UnsealError: as :func:`unseal_bytes`.
        CodecError: a pickle without ``unsafe_pickle=True``, an unknown codec, missing pyarrow.
    """
    data, header = unseal_bytes(blob, key)
    return decode(header.content_type, data, unsafe_pickle=unsafe_pickle)
