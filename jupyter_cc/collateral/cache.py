"""The collateral cache: one JSON file per item, written atomically, shared by processes.

Layout: ``<cache>/<key>.json`` where the key names the item (``intel/tcb-info/50806f000000``,
``amd/Milan/vcek/<hwid>-<tcb>``). Each file holds the item's body exactly as the vendor served
it (base64), the issuer chain it verifies with (PEM), its ``nextUpdate`` and where it came from;
so every entry can be verified again on its own (``collateral import`` does).

A file is written through :func:`jupyter_cc.files.write_atomic` (a temporary file renamed over
the target), so concurrent readers see the old entry or the new one and concurrent writers of
the same entry leave one of theirs; a full or read-only disk leaves no half-written file and
fails with one sentence. An unreadable or malformed entry is treated as absent.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_cc.errors import CollateralError
from jupyter_cc.files import write_atomic

__all__ = ["ENTRY_FORMAT", "Cache", "Entry", "days_past"]

ENTRY_FORMAT = "jupyter-cc-collateral-entry"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_MAX_ENTRY = 16 * 1024 * 1024


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def days_past(next_update: datetime, at: datetime) -> int:
    """Whole days (rounded up) ``at`` is past ``next_update``; 0 when it is not past."""
    seconds = (at - next_update).total_seconds()
    return 0 if seconds <= 0 else int(-(-seconds // 86400))


@dataclass(frozen=True)
class Entry:
    """One cached item.

    Attributes:
        key: where it lives in the cache (also its identity).
        kind: what it is (``tdx-tcb-info``, ``amd-vcek``, ...; see ``collateral.items``).
        params: what was asked for (FMSPC, product, hwID, TCB, CA).
        body: the bytes as served.
        chain: the PEM issuer chain the body verifies with (may be empty).
        next_update: when the item stops being current.
        fetched_at: when it was fetched (or imported).
        source: the URL it came from, or ``import``.
    """

    key: str
    kind: str
    params: Mapping[str, str]
    body: bytes
    chain: bytes
    next_update: datetime
    fetched_at: datetime
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def stale_days(self, at: datetime) -> int:
        return days_past(self.next_update, at)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ENTRY_FORMAT,
            "version": 1,
            "key": self.key,
            "kind": self.kind,
            "params": dict(self.params),
            "next_update": _iso(self.next_update),
            "fetched_at": _iso(self.fetched_at),
            "source": self.source,
            "body": base64.b64encode(self.body).decode("ascii"),
            "chain": self.chain.decode("ascii", "replace"),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Entry:
        """An entry from its JSON form.

        Raises:
            ValueError: the document is not an entry (any field missing or of the wrong type).
        """
        if not isinstance(doc, dict) or doc.get("format") != ENTRY_FORMAT or doc.get("version") != 1:
            raise ValueError("not a collateral entry")
        key, kind, params = doc.get("key"), doc.get("kind"), doc.get("params")
        if not isinstance(key, str) or not _KEY.match(key) or ".." in key:
            raise ValueError("bad key")
        if not isinstance(kind, str) or not isinstance(params, dict):
            raise ValueError("bad kind or params")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
            raise ValueError("bad params")
        body, chain, source = doc.get("body"), doc.get("chain"), doc.get("source", "")
        if not isinstance(body, str) or not isinstance(chain, str) or not isinstance(source, str):
            raise ValueError("bad body, chain or source")
        return cls(
            key=key,
            kind=kind,
            params=dict(params),
            body=base64.b64decode(body, validate=True),
            chain=chain.encode("ascii"),
            next_update=_time(doc.get("next_update")),
            fetched_at=_time(doc.get("fetched_at")),
            source=source,
        )


class Cache:
    """The cache folder (default ``$JUPYTER_DATA_DIR/jupyter_cc/collateral/``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        # Parsed entries by key, with the (device, inode, mtime, size) of the file they came
        # from: a verifier re-reads the same few files on every call, and a replaced (renamed
        # over) or rewritten file has another stamp, so it is read again.
        self._parsed: dict[str, tuple[tuple[int, int, int, int], Entry]] = {}
        self._paths: dict[str, str] = {}

    def path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key:
            raise ValueError(f"bad cache key {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        """The entry under ``key``, or None when there is none (or it is unreadable)."""
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = str(self.path(key))
        try:
            st = os.stat(path)
        except OSError:
            self._parsed.pop(key, None)
            return None
        known = self._parsed.get(key)
        if known is not None and known[0] == (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size):
            return known[1]
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read(_MAX_ENTRY + 1)
            entry = Entry.from_json(json.loads(raw))
        except (OSError, ValueError, UnicodeDecodeError):
            self._parsed.pop(key, None)
            return None
        if entry.key != key:
            return None
        if len(self._parsed) >= 256:
            self._parsed.clear()
        self._parsed[key] = ((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), entry)
        return entry

    def put(self, entry: Entry) -> Path:
        """Write ``entry`` whole (atomically).

        Raises:
            CollateralError: the cache folder cannot be created or written (read-only, full).
        """
        path = self.path(entry.key)
        data = json.dumps(entry.to_json(), indent=1, sort_keys=True).encode("utf-8")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, suffix=".tmp", fsync=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CollateralError(
                f"cannot write the collateral cache {self.root} ({reason}) to store the "
                f"{entry.kind} {entry.key}; nothing was written",
                hint="free space or make the folder writable, or point JUPYTER_DATA_DIR elsewhere",
            ) from None
        return path

    def entries(self) -> Iterator[Entry]:
        """Every readable entry, sorted by key (unreadable files are skipped)."""
        for path in sorted(self.root.rglob("*.json")) if self.root.is_dir() else ():
            if path.name.startswith("."):
                continue
            key = path.relative_to(self.root).with_suffix("").as_posix()
            entry = self.get(key) if _KEY.match(key) else None
            if entry is not None:
                yield entry

    def junk(self) -> list[Path]:
        """Files that are not readable entries: leftovers of interrupted writes, damaged files."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            key = path.relative_to(self.root).with_suffix("").as_posix()
            if path.name.startswith(".") or path.suffix != ".json" or self.get(key) is None:
                out.append(path)
        return out

    def remove(self, path: Path) -> None:
        """Delete one file of the cache; a missing file is fine.

        Raises:
            CollateralError: it cannot be deleted.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CollateralError(
                f"cannot remove {path} from the collateral cache ({exc.strerror})"
            ) from None
