"""The audit log: append-only, hash-chained JSON lines of what crossed the trust boundary.

Every attestation, key release, seal, unseal, declassification, push and pull (and each refusal
of one) is one line of ``<data dir>/audit.jsonl`` (``$JUPYTER_DATA_DIR/jupyter_cc/audit.jsonl``,
mode 0600; ``JUPYTER_CC_AUDIT_LOG`` names another file; the key broker keeps its own log beside
its database and passes that path explicitly)::

    {"seq": 1, "time": "2024-06-01T12:00:00.000000+00:00", "event": "release", ..., "prev": "000...0"}

``seq`` counts lines from 1, so it equals the line number. ``prev`` is the SHA-256 (hex) of the
previous line's exact bytes without its terminating newline, or 64 zeros on line 1. A line that
was edited, removed, inserted, duplicated or moved therefore breaks the link to the line after it
(or its own ``seq``), and :func:`verify` names the first such line.

What the chain does and does not prove: it detects changes made by anything that does not
rewrite every later line, and a torn write (a last line without its newline). Someone who can
write the file can still rewrite the whole chain, or drop whole lines from its end; pin
:attr:`VerifyResult.head` (the digest of the last line) somewhere else to detect that.

Concurrent writers (several kernels, the broker's workers) take an exclusive :func:`fcntl.flock`
on the log around "read the last line, append one", so lines never interleave and the chain stays
linear. Each append is one ``write``. Durability: :func:`record` returns only once an ``fsync``
(``fdatasync`` where the platform has it) of the log that *started after its write* has finished,
so an entry that was returned (and a key release answered after it) survives a crash. The lock
is not held across that flush: the flush covers every byte written before it began, so threads
of one process that append while a flush runs share the next one (group commit, :class:`_Flusher`),
and writers in other processes take the lock while this one waits for the disk. A failed flush
fails every writer of that process still waiting (or writing) then, never just the one that ran it.

Entries never hold key material or secrets. :func:`record` enforces this as a guard, not a
proof: a field whose name reads like a secret (``key``, ``material``, ``secret``, ``token``,
``password``, ``private``, ``credential``, ... as a word of the name, at any depth) is refused
with :class:`~jupyter_cc.errors.InputError` unless the name ends in a word that denotes a
reference rather than a value (``key_id``, ``key_fingerprint``, ``token_id``, ``key_uri``,
``host_key_sha256``, ``public_key``), and so is a string value holding a PEM private key.
Values must be JSON data (``bytes`` are refused: hex-encode a digest and name it for what it is).

>>> import tempfile, pathlib
>>> log = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
>>> record("seal", path=log, file="results.sealed", key_id="demo")["seq"]
1
>>> verify(log).ok
True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import read_if_present
from jupyter_cc.paths import data_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; single-writer use only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AUDIT_NAME",
    "ENV_VAR",
    "EVENTS",
    "GENESIS",
    "AuditError",
    "VerifyResult",
    "audit_path",
    "read",
    "record",
    "verify",
]

AUDIT_NAME = "audit.jsonl"
ENV_VAR = "JUPYTER_CC_AUDIT_LOG"
GENESIS = "0" * 64
"""The ``prev`` of line 1."""

_BASE_EVENTS = ("attest", "release", "seal", "unseal", "declassify", "push", "pull")
EVENTS = frozenset(
    {*_BASE_EVENTS, "deny"} | {f"{e}-refused" for e in _BASE_EVENTS} | {f"{e}-denied" for e in _BASE_EVENTS}
)
"""The events this project records (``deny`` is the broker's refused release). :func:`record`
accepts any short lowercase name, so later event kinds need no change here."""

RESERVED = ("seq", "time", "event", "prev")

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "material",
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "private",
        "privkey",
        "credential",
        "credentials",
        "cookie",
        "plaintext",
        "seed",
    }
)
# Names ending in one of these words refer to a secret without holding it (key_id, token_id, ...).
_REFERENCE_WORDS = frozenset(
    {
        "id",
        "ids",
        "fingerprint",
        "fingerprints",
        "fp",
        "sha256",
        "digest",
        "hash",
        "uri",
        "url",
        "name",
        "names",
        "type",
        "kind",
        "size",
        "bits",
        "version",
        "file",
        "path",
        "count",
        "algorithm",
    }
)
_PUBLIC_WORDS = frozenset({"public", "pub", "pubkey"})
_PRIVATE_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_MAX_LINE = 1 << 20


class AuditError(CCError):
    """The audit log is broken or cannot be appended to (exit status 1)."""

    check = "audit"


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found.

    Attributes:
        ok: every line is intact and linked to the one before.
        entries: the number of lines in the log (complete or not).
        first_broken: the 1-based line number of the first broken line, or None.
        reason: one sentence saying what was expected there and what was found, or None.
        head: the SHA-256 of the last intact line (64 zeros for an empty log): pin it elsewhere to
            detect a rewritten chain or lines dropped from the end.
    """

    ok: bool
    entries: int
    first_broken: int | None = None
    reason: str | None = None
    head: str = GENESIS


def audit_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The log file: ``path`` if given, else ``$JUPYTER_CC_AUDIT_LOG``, else ``<data dir>/audit.jsonl``."""
    if path is not None:
        return Path(path)
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else data_dir() / AUDIT_NAME


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def _check_name(name: str, where: str) -> None:
    words = _words(name)
    if not any(w in _SECRET_WORDS for w in words):
        return
    if words[-1] in _REFERENCE_WORDS or any(w in _PUBLIC_WORDS for w in words):
        return
    raise InputError(
        f"audit field {where} is named like a secret and audit entries never hold key material or secrets",
        hint="record a fingerprint or id instead (for example key_fingerprint or key_id)",
    )


def _clean(value: Any, where: str) -> Any:
    """``value`` as JSON data, refusing secrets-by-name, private keys, bytes and non-finite floats."""
    if value is None or isinstance(value, bool | int | float | str):
        return _clean_scalar(value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return _clean_mapping(value, where)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_clean(item, f"{where}[{i}]") for i, item in enumerate(items)]
    if isinstance(value, bytes | bytearray | memoryview):
        raise InputError(
            f"audit field {where} is bytes; audit entries hold text",
            hint="record a hex digest or a length, never the bytes themselves",
        )
    raise InputError(f"audit field {where} is a {type(value).__name__}, which is not JSON data")


def _clean_scalar(value: int | float | str | None, where: str) -> Any:
    """A JSON scalar as it is, unless it is a non-finite float or a string holding a private key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"audit field {where} is {value}, which JSON cannot hold")
    if isinstance(value, str) and _PRIVATE_PEM.search(value):
        raise InputError(f"audit field {where} holds a PEM private key; audit entries never hold keys")
    return value


def _clean_mapping(value: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """A JSON object of string keys, each named and valued as :func:`_clean` allows."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InputError(f"audit field {where} has a key {key!r} that is not a string")
        _check_name(key, f"{where}.{key}")
        out[key] = _clean(item, f"{where}.{key}")
    return out


def _entry_fields(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(event, str) or not _EVENT_NAME.match(event):
        raise InputError(
            f"audit event {event!r} is not a short lowercase name",
            hint="use one of " + ", ".join(sorted(EVENTS)),
        )
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in RESERVED:
            raise InputError(f"audit field {name} is reserved for the log itself")
        _check_name(name, name)
        out[name] = _clean(value, name)
    return out


def _open_log(path: Path) -> int:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    except IsADirectoryError:
        raise InputError(f"audit log {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot open audit log {path} ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"audit log {path} is not a regular file")
    if os.name == "posix" and info.st_mode & 0o077 and info.st_uid == os.getuid():
        os.fchmod(fd, 0o600)
    return fd


def _last_line(fd: int, log: Path) -> bytes | None:
    """The last line of the open file, with its newline if it has one; None for an empty file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    end = size - 1  # the final byte may be the newline that ends the last line: not a separator
    while end > 0:
        start = max(0, end - 8192)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            first = start + cut + 1
            return os.pread(fd, size - first, first)
        if size - start > _MAX_LINE + 1:
            raise AuditError(
                f"the last line of audit log {log} is longer than 1 MiB, so it is not an audit entry",
                hint="run 'jupyter-cc audit verify' and move the damaged log aside",
            )
        end = start
    return os.pread(fd, size, 0)


_sync = getattr(os, "fdatasync", os.fsync)
"""Flushes a log's appended bytes (and its size) to the disk; ``fdatasync`` skips the mtime."""


class _Flusher:
    """Group commit for one log file (one inode): one flush at a time; writers wait for a flush
    that started after their write, and whichever writer finds none running starts it.

    ``started`` and ``finished`` count flushes; a writer that appended when ``started`` was S
    is durable once a flush numbered S + 1 or later has finished. If any flush fails while a
    writer is between taking its ticket (before its write) and returning, that writer fails
    too, even when a later flush succeeds: after a failed ``fsync`` the kernel may have dropped
    the unwritten pages, so a later success proves nothing about bytes written before.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.started = 0
        self.finished = 0
        self.failures = 0
        self.error = ""
        self.running = False
        self.users = 0

    def ticket(self) -> int:
        """Taken before the write: the failures so far (any later one fails this writer)."""
        with self.cond:
            return self.failures

    def wait_durable(self, fd: int, log: Path, ticket: int) -> None:
        """Return once ``fd``'s file has been flushed by a flush begun after this call."""
        with self.cond:
            needed = self.started + 1
            while True:
                if self.failures > ticket:
                    raise AuditError(
                        f"audit log {log} could not be flushed to disk ({self.error}), so the "
                        "entry is not known to be durable",
                        hint="check the disk; the entry may be in the log already",
                    )
                if self.finished >= needed:
                    return
                if self.running:
                    self.cond.wait()
                else:
                    self._flush(fd)

    def _flush(self, fd: int) -> None:
        """One flush, run without the condition's lock held (the caller holds it on entry)."""
        self.running = True
        self.started += 1
        mine = self.started
        self.cond.release()
        error = None
        try:
            _sync(fd)
        except OSError as exc:
            error = exc.strerror or exc.__class__.__name__  # reported by wait_durable to every writer
        finally:
            self.cond.acquire()
            self.running = False
            if error is None:
                self.finished = max(self.finished, mine)
            else:
                self.failures += 1
                self.error = error
            self.cond.notify_all()


_flushers: dict[tuple[int, int], _Flusher] = {}
_flushers_lock = threading.Lock()


def _flusher_of(fd: int) -> tuple[tuple[int, int], _Flusher]:
    """The group commit of ``fd``'s file, kept while someone uses it (release with :func:`_done`).

    The key is the open file's device and inode: while ``fd`` is open its inode cannot belong to
    another file, so a flush by another thread on that key flushes this very file.
    """
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _flushers_lock:
        flusher = _flushers.setdefault(key, _Flusher())
        flusher.users += 1
    return key, flusher


def _done(key: tuple[int, int], flusher: _Flusher) -> None:
    with _flushers_lock:
        flusher.users -= 1
        if flusher.users == 0:
            del _flushers[key]


def _sync_parent(log: Path) -> None:
    """Flush the folder holding a just-created log, so the file itself survives a crash."""
    try:
        dfd = os.open(log.parent, os.O_RDONLY)
    except OSError:
        return  # not openable as a folder here (another platform): the file's own flush stands
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _chain_point(fd: int, log: Path) -> tuple[int, str]:
    """The ``seq`` and ``prev`` of the next entry after the log's last line."""
    last = _last_line(fd, log)
    if last is None:
        return 1, GENESIS
    if not last.endswith(b"\n"):
        raise AuditError(
            f"audit log {log} ends with an incomplete line, so no entry can be chained to it",
            hint="run 'jupyter-cc audit verify' and move the damaged log aside",
        )
    line = last[:-1]
    try:
        previous = json.loads(line)
        seq = int(previous["seq"]) + 1
    except (ValueError, KeyError, TypeError):
        raise AuditError(
            f"the last line of audit log {log} is not an entry, so nothing can be chained to it",
            hint="run 'jupyter-cc audit verify' and move the damaged log aside",
        ) from None
    return seq, _digest(line)


def _append(fd: int, log: Path, event: str, body: dict[str, Any]) -> dict[str, Any]:
    """Chain and write one entry (the caller holds the log's lock)."""
    seq, prev = _chain_point(fd, log)
    entry: dict[str, Any] = {
        "seq": seq,
        "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "event": event,
        **body,
        "prev": prev,
    }
    data = (json.dumps(entry, ensure_ascii=True, allow_nan=False, separators=(", ", ": ")) + "\n").encode()
    if len(data) > _MAX_LINE:
        raise InputError(f"audit entry for {event} is {len(data)} bytes; entries are at most 1 MiB")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return entry


def record(event: str, /, *, path: str | os.PathLike[str] | None = None, **fields: Any) -> dict[str, Any]:
    """Append one entry to the audit log and return it.

    Args:
        event: what happened: attest, release, seal, unseal, declassify, push, pull, or a refusal
            (``pull-refused``, ``deny``, ...).
        path: the log file (keyword only): tests and the broker pass their own; default as in
            :func:`audit_path`. It is not a field: record a file name as ``file=...``.
        fields: what the entry says about it (JSON data; no secrets, see the module docstring).

    Raises:
        InputError: a field named like a secret, holding a private key or bytes, or a reserved
            name; or a log that cannot be opened.
        AuditError: the log's last line is incomplete or not an entry, so nothing can be
            chained to it (run ``jupyter-cc audit verify``); or the flush to disk failed.

    When it returns, the entry is on disk (see the module docstring: a flush begun after the
    write has finished), so a caller may act on it, such as answering a key release.
    """
    body = _entry_fields(event, fields)
    log = audit_path(path)
    fd = _open_log(log)
    key, flusher = _flusher_of(fd)
    try:
        ticket = flusher.ticket()
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            entry = _append(fd, log, event, body)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)  # other writers go on while this one waits for the disk
        flusher.wait_durable(fd, log, ticket)
        if entry["seq"] == 1:
            _sync_parent(log)  # a new log: its folder entry must survive a crash too
    finally:
        _done(key, flusher)
        os.close(fd)
    return entry


def _split(data: bytes) -> list[bytes]:
    """Lines with their newline (the last may lack one)."""
    return data.splitlines(keepends=True) if data else []


def read(path: str | os.PathLike[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The log's entries, oldest first; only the last ``limit`` when it is given. No log: ``[]``.

    This reads; it does not check the chain (that is :func:`verify`).

    Raises:
        InputError: the log cannot be read.
        AuditError: a line is not a JSON object.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit {limit} is negative")
    log = audit_path(path)
    data = read_if_present(log, "audit log")
    if data is None:
        return []
    lines = _split(data)
    first = 0 if limit is None else max(0, len(lines) - limit)
    out: list[dict[str, Any]] = []
    for number, raw in enumerate(lines[first:], start=first + 1):
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise AuditError(
                f"line {number} of audit log {log} is not a JSON object",
                hint="run 'jupyter-cc audit verify' for the first broken line",
            )
        out.append(entry)
    return out


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\n")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def verify(path: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Check every line and link of the log and report the first broken one.

    A line is intact when it ends with a newline, is a JSON object with ``seq`` equal to its line
    number, a string ``time`` and ``event``, and a ``prev`` equal to the SHA-256 of the line
    before (64 zeros on line 1). When ``prev`` of line N+1 does not match line N while the
    ``seq`` numbers run on, line N is the one reported: it was edited (or that ``prev`` was).
    A missing log is an empty, intact chain.

    Raises:
        InputError: the log cannot be read (a directory, no permission).
    """
    log = audit_path(path)
    data = read_if_present(log, "audit log")
    if data is None:
        return VerifyResult(ok=True, entries=0)
    lines = _split(data)
    digests = [GENESIS]  # digests[n] is the SHA-256 of line n; digests[0] the genesis value
    for number, raw in enumerate(lines, start=1):
        problem = _line_problem(number, raw, digests[number - 1])
        if problem is not None:
            broken, reason = problem
            return VerifyResult(
                ok=False, entries=len(lines), first_broken=broken, reason=reason, head=digests[broken - 1]
            )
        digests.append(_digest(raw[:-1]))
    return VerifyResult(ok=True, entries=len(lines), head=digests[-1])


def _line_problem(number: int, raw: bytes, expected: str) -> tuple[int, str] | None:
    """The broken line (this one, or the one before when ``prev`` does not match) and why; None if intact.

    ``expected`` is the SHA-256 of the line before (the genesis value for line 1).
    """
    if not raw.endswith(b"\n"):
        return number, (
            f"line {number} is truncated: expected a complete JSON line ending in a newline, "
            f"found {len(raw)} bytes without one ({_preview(raw)})"
        )
    line = raw[:-1]
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        what = "an empty line" if not line.strip() else _preview(raw)
        return number, f"line {number} is not a JSON object: found {what}"
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq != number:
        return number, f"line {number} has seq {seq!r}, expected {number}: {_seq_story(seq, number)}"
    for name in ("time", "event"):
        if not isinstance(entry.get(name), str):
            return number, (
                f"line {number} has {name} {entry.get(name)!r}, expected a string: the line was edited"
            )
    recorded = entry.get("prev")
    if recorded == expected:
        return None
    if number == 1:
        return 1, (
            f"line 1 records prev {recorded!r}, expected {GENESIS}: the log does not start at its first entry"
        )
    return number - 1, (
        f"line {number - 1} was edited (or line {number}'s prev was): line {number} records "
        f"its SHA-256 as {recorded!r}, found {expected}"
    )


def _seq_story(seq: Any, number: int) -> str:
    """What a wrong ``seq`` on line ``number`` says happened to the log."""
    if isinstance(seq, int) and not isinstance(seq, bool) and seq > number:
        return f"{seq - number} line(s) before it were removed, or lines were reordered"
    if isinstance(seq, int) and not isinstance(seq, bool):
        return "a line was duplicated or inserted, or lines were reordered"
    return "the line was edited"
