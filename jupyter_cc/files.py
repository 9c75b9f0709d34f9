"""Reading the user's input files and writing files whole: the one place jupyter-cc does either.

* :func:`open_input` and :func:`read_input` turn a missing, directory or unreadable input file
  into one :class:`~jupyter_cc.errors.InputError` sentence naming what the file was for
  (``policy file``, ``sealed file``, ...), so every face words it the same way;
  :func:`read_if_present` does the same for a file that may not exist yet (None then).
* :class:`AtomicOutput` and :func:`write_atomic` write a temporary file (mode 0600, made by
  :func:`tempfile.mkstemp`) beside the target and rename it over the target only once it is
  complete: readers see the old file or the new one, never a part, and a failure leaves nothing.
* :func:`write_private` creates a new file with mode 0600 from the start (keys, connection
  files): it is never readable by others, not even between creation and a ``chmod``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "report.bin"
>>> write_atomic(path, b"evidence")
>>> read_input(str(path), "report")
b'evidence'
>>> oct(path.stat().st_mode & 0o777)
'0o600'
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

from jupyter_cc.errors import InputError

__all__ = [
    "AtomicOutput",
    "create_private_db",
    "open_input",
    "read_if_present",
    "read_input",
    "write_atomic",
    "write_private",
]

StrPath = str | os.PathLike[str]


@contextmanager
def open_input(path: StrPath, what: str) -> Iterator[io.BufferedReader]:
    """``path`` opened for binary reading; an :class:`InputError` naming ``what`` when it cannot be.

    Raises:
        InputError: ``"<what> <path> does not exist"``, ``"... is a directory, not a file"`` or
            ``"cannot read <what> <path> (<reason>)"``.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    with fh:
        yield fh


def _unreadable(path: StrPath, what: str, exc: OSError) -> InputError:
    """The one sentence for an input file that cannot be opened or read."""
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{what} {path} does not exist")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{what} {path} is a directory, not a file")
    return InputError(f"cannot read {what} {path} ({exc.strerror})")


def read_input(path: StrPath, what: str, limit: int | None = None, *, allow_empty: bool = False) -> bytes:
    """The bytes of the input file ``path``, refused as :func:`open_input` words it.

    Args:
        path: the file.
        what: what the file is for, as the sentence names it (``"policy file"``).
        limit: the most bytes accepted; a larger file is refused without reading it all.
        allow_empty: accept an empty file (by default it is refused: an empty input is a mistake).

    Raises:
        InputError: the file cannot be read, is larger than ``limit`` or is empty.
    """
    with open_input(path, what) as fh:
        try:
            data = fh.read() if limit is None else fh.read(limit + 1)
        except OSError as exc:
            raise InputError(f"cannot read {what} {path} ({exc.strerror})") from None
    if limit is not None and len(data) > limit:
        raise InputError(f"{what} {path} is larger than {limit} bytes")
    if not data and not allow_empty:
        raise InputError(f"{what} {path} is empty")
    return data


def read_if_present(path: StrPath, what: str) -> bytes | None:
    """The bytes of ``path``, or None when there is no such file (a log or config not made yet).

    Raises:
        InputError: the file exists but cannot be read (worded as :func:`open_input` words it).
    """
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, what, exc) from None


class AtomicOutput:
    """A temporary file (mode 0600) beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary file (``.<name>.<random><suffix>`` in the target's folder, so the rename stays
    on one file system) is made when the object is made, so a caller can word that failure
    itself; ``with`` yields it open for binary writing. On a clean exit it is closed (flushed
    and ``fsync``-ed first when ``fsync``), then renamed over ``path``; on any exception it is
    deleted and the exception goes on.

    Raises:
        OSError: the temporary file cannot be made (no folder, no permission).
    """

    def __init__(self, path: StrPath, *, suffix: str = "", fsync: bool = False) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        self._tmp = Path(tmp)
        try:
            self._fh: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise
        self._fsync = fsync

    def __enter__(self) -> IO[bytes]:
        return self._fh

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                with self._fh:
                    if self._fsync:
                        self._fh.flush()
                        os.fsync(self._fh.fileno())
                os.replace(self._tmp, self.path)
                return
            self._fh.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self._tmp.unlink(missing_ok=True)


def write_atomic(path: StrPath, data: bytes, *, suffix: str = "", fsync: bool = False) -> None:
    """Write ``data`` to ``path`` (mode 0600) through an :class:`AtomicOutput`.

    Raises:
        OSError: the folder cannot be written, or the write or the rename failed.
    """
    with AtomicOutput(path, suffix=suffix, fsync=fsync) as fh:
        fh.write(data)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly).

    Raises:
        FileExistsError: ``path`` already exists (it is never overwritten).
        OSError: the file cannot be created or written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_private_db(path: Path) -> None:
    """Make sure an SQLite database file exists with mode 0600 (and its folder), before SQLite
    opens it: SQLite creates its file with the umask's mode, and gives its ``-wal`` and ``-shm``
    files the database file's mode. An existing file is left as it is.

    Raises:
        OSError: the folder or the file cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
