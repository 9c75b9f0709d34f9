"""Moving collateral to machines without network: ``export`` a file, ``import`` it there.

The file is JSON: ``{"format": "jupyter-cc-collateral", "version": 1, "exported_at": ...,
"entries": [<cache entry>, ...]}``, each entry as the cache stores it (body as served, its
issuer chain). Import judges every entry to the pinned roots as of the time given (by default
now) and that its key names what it holds, before it writes any: one bad entry and nothing is
imported. An entry older than the one the cache holds (earlier ``nextUpdate``) is skipped.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_cc.attest.certs import utcnow
from jupyter_cc.collateral.cache import Entry, days_past
from jupyter_cc.collateral.service import CollateralService, key_for
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import read_input, write_atomic

__all__ = ["FILE_FORMAT", "export_file", "import_file", "prune"]

FILE_FORMAT = "jupyter-cc-collateral"
_MAX_FILE = 64 * 1024 * 1024


def export_file(service: CollateralService, path: Path) -> int:
    """Write every cached entry to ``path`` (atomically); how many.

    Raises:
        InputError: ``path`` cannot be written.
    """
    entries = [e.to_json() for e in service.cache.entries()]
    doc = {"format": FILE_FORMAT, "version": 1, "exported_at": utcnow().isoformat(), "entries": entries}
    try:
        write_atomic(path, json.dumps(doc, indent=1).encode("utf-8"))
    except OSError as exc:
        raise InputError(f"cannot write the collateral file {path} ({exc.strerror or exc})") from None
    return len(entries)


def _entries(path: Path) -> list[Any]:
    raw = read_input(path, "collateral file", _MAX_FILE)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InputError(
            f"collateral file {path} is not JSON", hint="pass a 'collateral export' file"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT or doc.get("version") != 1:
        raise InputError(
            f"collateral file {path} is not a jupyter-cc collateral export (format {FILE_FORMAT}, version 1)"
        )
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise InputError(f"collateral file {path} has no 'entries' list")
    return entries


def _judged(service: CollateralService, path: Path, i: int, item: Any, at: datetime) -> Entry:
    try:
        entry = Entry.from_json(item)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"collateral file {path}: entry {i + 1} is malformed ({exc}); nothing was imported"
        ) from None
    try:
        if key_for(entry.kind, entry.params) != entry.key:
            raise InputError(f"its key {entry.key} does not name what it holds")
        next_update = service.check(entry.kind, entry.body, entry.chain, entry.params, at)
    except CCError as exc:
        raise InputError(
            f"collateral file {path}: entry {i + 1} ({entry.key}) does not verify to the pinned roots "
            f"({exc.message.rstrip('.')}); nothing was imported",
            hint="export it again from a machine that fetched it from the vendor",
        ) from None
    return Entry(
        key=entry.key,
        kind=entry.kind,
        params=entry.params,
        body=entry.body,
        chain=entry.chain,
        next_update=next_update,
        fetched_at=entry.fetched_at,
        source=f"import {path.name}",
    )


def import_file(service: CollateralService, path: Path, *, at: datetime | None = None) -> tuple[int, int]:
    """Judge every entry of ``path``, then cache them; (imported, skipped as older than cached).

    Raises:
        InputError: the file is unreadable, or an entry is malformed or does not verify.
        CollateralError: the cache cannot be written.
    """
    at = at or utcnow()
    judged = [_judged(service, path, i, item, at) for i, item in enumerate(_entries(path))]
    imported = skipped = 0
    for entry in judged:
        held = service.cache.get(entry.key)
        if held is not None and held.next_update > entry.next_update:
            skipped += 1
            continue
        service.cache.put(entry)
        imported += 1
    return imported, skipped


def prune(
    service: CollateralService, *, at: datetime, older_than_days: int = 0, everything: bool = False
) -> int:
    """Remove leftovers and damaged files, and entries past nextUpdate by more than the days given."""
    removed = 0
    for junk in service.cache.junk():
        service.cache.remove(junk)
        removed += 1
    for entry in list(service.cache.entries()):
        past = days_past(entry.next_update, at)
        if everything or (past > older_than_days and entry.next_update < at):
            service.cache.remove(service.cache.path(entry.key))
            removed += 1
    return removed
