"""Sealed files: streaming a file or a value into an envelope file and back, in constant memory.

The envelope is :mod:`jupyter_cc.seal.envelope`'s; this module reads the input a chunk ahead
(the final-chunk flag needs to know where the input ends) with three chunk-sized buffers, and
writes the output through :class:`jupyter_cc.files.AtomicOutput`: a temporary file (mode 0600)
beside the target, renamed over it only after the last chunk was written (sealing) or
authenticated (unsealing), and deleted on any failure. So an output file is never partial and
never holds plaintext that did not authenticate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from jupyter_cc.errors import InputError
from jupyter_cc.files import AtomicOutput, open_input
from jupyter_cc.seal.codecs import Buffer, ContentType, decode, encode
from jupyter_cc.seal.envelope import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNKS,
    PREAMBLE,
    TAG_SIZE,
    Chunks,
    EnvelopeFormatError,
    Header,
    SealError,
    TamperedError,
    build_header,
    byte_view,
    check_chunk_size,
    check_key,
    check_key_id,
    chunk_count,
    open_envelope,
    parse_header,
    parse_preamble,
    read_header_bytes,
)

__all__ = ["peek_header", "seal_file", "seal_value_to_file", "unseal_file", "unseal_value_from_file"]

StrPath = str | os.PathLike[str]


class _Reader(Protocol):
    """A binary file opened for reading (only what the streaming code uses)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def tell(self) -> int: ...
    def fileno(self) -> int: ...


def peek_header(source: Buffer | StrPath) -> Header:
    """Read an envelope's header without a key: key id, content type, creation time.

    Not authenticated: use it to decide which key to fetch, and trust it only once
    :func:`~jupyter_cc.seal.envelope.unseal_bytes` or :func:`unseal_file` succeeded.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_header(read_header_bytes(byte_view(source), "the envelope"), "the envelope")
    with open_input(source, "sealed file") as fh:
        return parse_header(_read_file_header(fh, str(source)), str(source))


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
        staged = AtomicOutput(target, suffix=".part")
    except OSError as exc:
        raise InputError(f"cannot write in folder {folder} ({exc.strerror})") from None
    with staged as fh:
        yield fh


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
    header, data_key = build_header(key, key_id, content_type, chunk_size)
    chunks = Chunks(header, data_key)
    _write(out, header.raw, "the sealed output")
    if isinstance(read, memoryview):
        count = chunk_count(len(read), chunk_size)
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
    key = check_key(key)
    check_chunk_size(chunk_size)
    if key_id is not None:
        check_key_id(key_id)
    with open_input(src, "input file") as fh, _atomic_output(dst, src) as out:
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
    key = check_key(key)
    check_chunk_size(chunk_size)
    content_type, data = encode(value, unsafe_pickle=unsafe_pickle)
    view = byte_view(data)
    with _atomic_output(dst, None) as out:
        return _seal_stream(view, out, key, key_id, content_type, chunk_size, "the value")


def _read_file_header(fh: _Reader, what: str) -> bytes:
    pre = memoryview(bytearray(PREAMBLE.size))
    got = _fill(fh, pre, what)
    length = parse_preamble(bytes(pre[:got]), what)
    body = memoryview(bytearray(length))
    if _fill(fh, body, what) < length:
        raise EnvelopeFormatError(f"{what} ends inside its envelope header: it was truncated")
    return bytes(pre) + bytes(body)


def _unseal_stream(fh: _Reader, key: bytes, what: str, sink: Any) -> Header:
    """Authenticate and decrypt a sealed file chunk by chunk, handing plaintext to ``sink``.

    ``sink(header)`` is called once the key checked, and returns a callable that takes each
    decrypted piece (a memoryview valid only during the call).
    """
    header = parse_header(_read_file_header(fh, what), what)
    chunks = open_envelope(header, key, what)
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
    key = check_key(key)
    what = f"sealed file {src}"
    with open_input(src, "sealed file") as fh, _atomic_output(dst, src) as out:

        def sink(header: Header) -> Any:
            return lambda piece: _write(out, piece, f"output {dst}")

        return _unseal_stream(fh, key, what, sink)


def unseal_value_from_file(src: StrPath, key: bytes, *, unsafe_pickle: bool = False) -> Any:
    """Unseal a value from an envelope file: memory is the plaintext plus one chunk.

    Raises:
        UnsealError, CodecError, InputError: as :func:`unseal_value` and :func:`unseal_file`.
    """
    key = check_key(key)
    what = f"sealed file {src}"
    with open_input(src, "sealed file") as fh:
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
