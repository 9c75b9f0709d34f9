"""Sealed envelopes: streaming AES-256-GCM with an authenticated header (docs/sealed-format.md).

Callers: the ``jupyter-cc seal``/``unseal`` commands (:mod:`jupyter_cc.cli.seal`) and the
``%seal``/``%unseal`` magics. An envelope binds its header (key id, chunk size, content type,
creation time) into every chunk and marks the final chunk, so truncation, reordering,
duplication, appended bytes, header edits and bit flips all fail; nothing partial is ever
returned or left on disk. Values go through :mod:`jupyter_cc.seal.codecs` (pickle only with
``unsafe_pickle=True``); files stream in constant memory.

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
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.seal.codecs import Buffer, CodecError, ContentType, decode, encode

__all__ = [
    "ALGORITHM",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "CodecError",
    "EnvelopeFormatError",
    "Header",
    "SealError",
    "TamperedError",
    "UnsealError",
    "WrongKeyError",
    "key_fingerprint",
    "peek_header",
    "seal_bytes",
    "seal_file",
    "seal_value",
    "seal_value_to_file",
    "unseal_bytes",
    "unseal_file",
    "unseal_value",
    "unseal_value_from_file",
]

StrPath = Union[str, "os.PathLike[str]"]


class _Reader(Protocol):
    """A binary file opened for reading (only what the streaming code uses)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def tell(self) -> int: ...
    def fileno(self) -> int: ...


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

_PREAMBLE = struct.Struct(">8sHI")  # magic, version, header length
_FINGERPRINT_LABEL = b"jupyter-cc key fingerprint v1\x00"
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


def key_fingerprint(key: bytes) -> str:
    """The key's public name: SHA-256 over a label and the key, first 16 bytes as 32 hex digits.

    The same value as ``jupyter_cc.keys.fingerprint`` (the label keeps it from being the plain
    hash of the key), so an envelope's default key id matches the fingerprint a key release
    shows. A 256-bit key cannot be recovered from it.
    """
    return hashlib.sha256(_FINGERPRINT_LABEL + _check_key(key)).hexdigest()[:32]


def _check_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InputError(f"a sealing key must be 32 bytes, not {type(key).__name__}")
    material = bytes(key)
    if len(material) != KEY_SIZE:
        raise InputError(
            f"a sealing key must be exactly 32 bytes (AES-256), but this one has {len(material)}"
        )
    return material


def _byte_view(data: Any) -> memoryview:
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


def _check_key_id(key_id: Any) -> str:
    if (
        not isinstance(key_id, str)
        or not 1 <= len(key_id) <= MAX_KEY_ID
        or not all(0x20 <= ord(c) <= 0x7E for c in key_id)
    ):
        raise InputError("a key id must be 1 to 200 printable ASCII characters")
    return key_id


def _check_chunk_size(chunk_size: Any) -> int:
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(
            f"chunk size {chunk_size!r} is outside {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes (64 MiB)"
        )
    return chunk_size


def _build_header(
    key: bytes, key_id: str | None, content_type: ContentType, chunk_size: int
) -> tuple[Header, bytes]:
    """A fresh header (random salt and nonce prefix) and the envelope's data key."""
    salt, prefix = secrets.token_bytes(32), secrets.token_bytes(8)
    created = datetime.now(timezone.utc).replace(microsecond=0)
    key_check = _derive(key, salt, _INFO_KEY_CHECK)
    name = _check_key_id(key_id if key_id is not None else key_fingerprint(key))
    obj: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "alg": ALGORITHM,
        "kdf": KDF,
        "key_id": name,
        "chunk_size": _check_chunk_size(chunk_size),
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
    raw = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body
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


def _parse_preamble(pre: bytes, what: str) -> int:
    """Check magic and version; return the header JSON length."""
    if len(pre) < _PREAMBLE.size:
        raise EnvelopeFormatError(f"{what} is {len(pre)} bytes, too short to be a sealed envelope")
    magic, version, length = _PREAMBLE.unpack_from(pre)
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


def _parse_header(raw: bytes, what: str) -> Header:
    """Parse the header bytes (preamble and JSON); any defect is an EnvelopeFormatError."""
    _parse_preamble(raw, what)
    try:
        obj = strict_json(raw[_PREAMBLE.size :].decode("ascii"))
        if not isinstance(obj, dict):
            raise ValueError("it is not a JSON object")
        if set(obj) != _HEADER_FIELDS:
            missing, extra = sorted(_HEADER_FIELDS - set(obj)), sorted(set(obj) - _HEADER_FIELDS)
            raise ValueError(f"members missing {missing}, unknown {extra}")
        if type(obj["version"]) is not int or obj["version"] != FORMAT_VERSION:
            raise ValueError(f"version must be {FORMAT_VERSION}, like the preamble")
        if obj["alg"] != ALGORITHM or obj["kdf"] != KDF:
            raise ValueError(f"alg must be {ALGORITHM} and kdf {KDF}")
        key_id = _check_key_id(obj["key_id"])
        chunk_size = _check_chunk_size(obj["chunk_size"])
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


def _read_header_bytes(data: memoryview, what: str) -> bytes:
    length = _parse_preamble(bytes(data[: _PREAMBLE.size]), what)
    end = _PREAMBLE.size + length
    if len(data) < end:
        raise EnvelopeFormatError(f"{what} ends inside its envelope header: it was truncated")
    return bytes(data[:end])


def peek_header(source: Buffer | StrPath) -> Header:
    """Read an envelope's header without a key: key id, content type, creation time.

    Not authenticated: use it to decide which key to fetch, and trust it only once
    :func:`unseal_bytes` or :func:`unseal_file` succeeded.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse_header(_read_header_bytes(_byte_view(source), "the envelope"), "the envelope")
    with _open_input(source, "sealed file") as fh:
        return _parse_header(_read_file_header(fh, str(source)), str(source))


# -- the chunk cipher -------------------------------------------------------------------------


class _Chunks:
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


def _open_envelope(header: Header, key: bytes, what: str) -> _Chunks:
    """Check the key commitment and return the chunk cipher."""
    if not hmac.compare_digest(_derive(key, header.salt, _INFO_KEY_CHECK), header.key_check):
        raise WrongKeyError(
            f"{what} was sealed under key id {header.key_id}, and the given key "
            f"(fingerprint {key_fingerprint(key)}) does not open it, or its header was altered"
        )
    return _Chunks(header, _derive(key, header.salt, _INFO_DATA_KEY))


def _chunk_count(size: int, chunk_size: int) -> int:
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
        key_id: the name recorded in the header; the key's fingerprint by default.
        content_type: the codec recorded for the plaintext; ``bytes`` by default.
        chunk_size: plaintext bytes per chunk, 16 bytes to 64 MiB.

    Raises:
        InputError: a key that is not 32 bytes, a bad key id or chunk size.
    """
    key = _check_key(key)
    view = _byte_view(data)
    header, data_key = _build_header(key, key_id, content_type or ContentType("bytes"), chunk_size)
    chunks = _Chunks(header, data_key)
    size = len(view)
    count = _chunk_count(size, chunk_size)
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
    key = _check_key(key)
    what = "the envelope"
    view = _byte_view(blob)
    header = _parse_header(_read_header_bytes(view, what), what)
    chunks = _open_envelope(header, key, what)
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
    key = _check_key(key)
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


# -- files ------------------------------------------------------------------------------------


@contextmanager
def _open_input(path: StrPath, what: str) -> Iterator[_Reader]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the context manager below
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path} ({exc.strerror})") from None
    with fh:
        yield fh


@contextmanager
def _atomic_output(dst: StrPath, src: StrPath | None) -> Iterator[IO[bytes]]:
    """A temporary file (mode 0600) beside ``dst``, renamed over it only if the body succeeds."""
    target = Path(dst)
    if target.is_dir():
        raise InputError(f"output {target} is a directory; name a file")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {target}: folder {folder} does not exist")
    if src is not None and _same_file(Path(src), target):
        raise InputError(f"output {target} is the input file; write to another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write in folder {folder} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _write(fh: IO[bytes], data: Buffer, what: str) -> None:
    try:
        fh.write(data)
    except OSError as exc:
        raise InputError(f"cannot write {what} ({exc.strerror})") from None


def _fill(fh: _Reader, buf: memoryview, what: str) -> int:
    """Read until ``buf`` is full or the input ends; returns the bytes read."""
    got = 0
    try:
        while got < len(buf):
            n = fh.readinto(buf[got:])
            if not n:
                break
            got += n
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})") from None
    return got


def _seal_stream(
    read: _Reader | memoryview,
    out: IO[bytes],
    key: bytes,
    key_id: str | None,
    content_type: ContentType,
    chunk_size: int,
    what: str,
) -> Header:
    """Seal a file object or buffer into ``out`` with three chunk-sized buffers (constant memory).

    The final chunk is known by reading one chunk ahead: the piece after which the input ends.
    """
    header, data_key = _build_header(key, key_id, content_type, chunk_size)
    chunks = _Chunks(header, data_key)
    _write(out, header.raw, "the sealed output")
    if isinstance(read, memoryview):
        count = _chunk_count(len(read), chunk_size)
        buf = memoryview(bytearray(min(len(read), chunk_size) + TAG_SIZE))
        for index in range(count):
            piece = read[index * chunk_size : (index + 1) * chunk_size]
            dst = buf[: len(piece) + TAG_SIZE]
            chunks.encrypt_into(index, index == count - 1, piece, dst)
            _write(out, dst, "the sealed output")
        return header
    cur, nxt = memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))
    enc = memoryview(bytearray(chunk_size + TAG_SIZE))
    have = _fill(read, cur, what)
    index = 0
    while True:
        more = _fill(read, nxt, what) if have == chunk_size else 0
        if index >= MAX_CHUNKS:
            raise SealError(
                f"{what} needs more than 2^32 chunks of {chunk_size} bytes", hint="use a larger chunk size"
            )
        dst = enc[: have + TAG_SIZE]
        chunks.encrypt_into(index, more == 0, cur[:have], dst)
        _write(out, dst, "the sealed output")
        if more == 0:
            return header
        cur, nxt, have, index = nxt, cur, more, index + 1


def seal_file(
    src: StrPath,
    dst: StrPath,
    key: bytes,
    *,
    key_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Header:
    """Seal the file ``src`` into the envelope file ``dst`` (codec ``bytes``), in constant memory.

    ``dst`` appears only complete: the envelope is written to a temporary file (mode 0600) in
    its folder and renamed over it at the end. ``dst`` must not be ``src``.

    Raises:
        InputError: unreadable ``src``, unwritable ``dst``, ``dst`` same as ``src``, bad key.
    """
    key = _check_key(key)
    _check_chunk_size(chunk_size)
    if key_id is not None:
        _check_key_id(key_id)
    with _open_input(src, "input file") as fh, _atomic_output(dst, src) as out:
        return _seal_stream(fh, out, key, key_id, ContentType("bytes"), chunk_size, f"input file {src}")


def seal_value_to_file(
    value: Any,
    dst: StrPath,
    key: bytes,
    *,
    key_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    unsafe_pickle: bool = False,
) -> Header:
    """Seal ``value`` straight into the file ``dst``: memory is the value plus one chunk.

    Raises:
        CodecError, InputError: as :func:`seal_value` and :func:`seal_file`.
    """
    key = _check_key(key)
    _check_chunk_size(chunk_size)
    content_type, data = encode(value, unsafe_pickle=unsafe_pickle)
    view = _byte_view(data)
    with _atomic_output(dst, None) as out:
        return _seal_stream(view, out, key, key_id, content_type, chunk_size, "the value")


def _read_file_header(fh: _Reader, what: str) -> bytes:
    pre = memoryview(bytearray(_PREAMBLE.size))
    got = _fill(fh, pre, what)
    length = _parse_preamble(bytes(pre[:got]), what)
    body = memoryview(bytearray(length))
    if _fill(fh, body, what) < length:
        raise EnvelopeFormatError(f"{what} ends inside its envelope header: it was truncated")
    return bytes(pre) + bytes(body)


def _unseal_stream(fh: _Reader, key: bytes, what: str, sink: Any) -> Header:
    """Authenticate and decrypt a sealed file chunk by chunk, handing plaintext to ``sink``.

    ``sink(header)`` is called once the key checked, and returns a callable that takes each
    decrypted piece (a memoryview valid only during the call).
    """
    header = _parse_header(_read_file_header(fh, what), what)
    chunks = _open_envelope(header, key, what)
    put = sink(header)
    size = header.chunk_size + TAG_SIZE
    cur, nxt = memoryview(bytearray(size)), memoryview(bytearray(size))
    plain = memoryview(bytearray(header.chunk_size))
    have = _fill(fh, cur, what)
    if have == 0:
        raise TamperedError(f"{what} has no chunk after its header: it was truncated")
    index = 0
    while True:
        more = _fill(fh, nxt, what) if have == size else 0
        final = more == 0
        if have < TAG_SIZE:
            raise TamperedError(f"{what} ends {have} bytes into chunk {index}: it was truncated")
        if index >= MAX_CHUNKS:
            raise TamperedError(f"{what} has more than 2^32 chunks, more than any envelope holds")
        segment = cur[:have]
        if not chunks.decrypt_into(index, final, segment, plain[: have - TAG_SIZE]):
            extra = more + _drain(fh) if more else 0
            raise chunks.failure(index, final, segment, what, extra)
        put(plain[: have - TAG_SIZE])
        if final:
            return header
        cur, nxt, have, index = nxt, cur, more, index + 1


def _drain(fh: _Reader) -> int:
    """Bytes left in the input (only to word an error)."""
    try:
        here = fh.tell()
        return os.fstat(fh.fileno()).st_size - here
    except (OSError, ValueError):
        return 0


def unseal_file(src: StrPath, dst: StrPath, key: bytes) -> Header:
    """Authenticate and decrypt the envelope file ``src`` into ``dst``, in constant memory.

    The plaintext goes to a temporary file (mode 0600) beside ``dst`` that is renamed over
    ``dst`` only after the last chunk authenticated, and deleted on any failure, so ``dst`` is
    never left partial or unauthenticated. Whatever the content type, the plaintext bytes are
    written. ``dst`` must not be ``src``.

    Raises:
        EnvelopeFormatError, WrongKeyError, TamperedError: as :func:`unseal_bytes`.
        InputError: unreadable ``src``, unwritable ``dst``, a bad key.
    """
    key = _check_key(key)
    what = f"sealed file {src}"
    with _open_input(src, "sealed file") as fh, _atomic_output(dst, src) as out:

        def sink(header: Header) -> Any:
            return lambda piece: _write(out, piece, f"output {dst}")

        return _unseal_stream(fh, key, what, sink)


def unseal_value_from_file(src: StrPath, key: bytes, *, unsafe_pickle: bool = False) -> Any:
    """Unseal a value from an envelope file: memory is the plaintext plus one chunk.

    Raises:
        UnsealError, CodecError, InputError: as :func:`unseal_value` and :func:`unseal_file`.
    """
    key = _check_key(key)
    what = f"sealed file {src}"
    with _open_input(src, "sealed file") as fh:
        try:
            total = os.fstat(fh.fileno()).st_size
        except OSError:
            total = 0
        state: dict[str, Any] = {}

        def sink(header: Header) -> Any:
            # the plaintext size follows from the file size; a file that changes while it is
            # read fails below (too long) or in authentication (too short)
            body = max(0, total - header.size)
            segment = header.chunk_size + TAG_SIZE
            count = max(1, -(-body // segment))
            last = body - (count - 1) * segment
            state["buf"] = buf = bytearray((count - 1) * header.chunk_size + max(0, last - TAG_SIZE))
            state["pos"] = 0

            def put(piece: memoryview) -> None:
                pos = state["pos"]
                if pos + len(piece) > len(buf):
                    raise SealError(f"{what} changed while it was read; unseal it again")
                buf[pos : pos + len(piece)] = piece
                state["pos"] = pos + len(piece)

            return put

        header = _unseal_stream(fh, key, what, sink)
    data: bytearray = state["buf"]
    if state["pos"] != len(data):
        raise SealError(f"{what} changed while it was read; unseal it again")
    return decode(header.content_type, data, unsafe_pickle=unsafe_pickle)
