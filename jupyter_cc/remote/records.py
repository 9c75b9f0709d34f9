"""Records of running confidential kernels, so a restarted Jupyter server can take them back.

One file per kernel, ``<jupyter runtime dir>/jupyter-cc-kernels/<kernel id>.json``, mode 0600 in
a folder 0700 (refused if it is not this user's and private). A record holds what restoring
needs: the Jupyter kernel id and kernelspec name, and the resident agent's id for the kernel
(which only that user's attested connections can use to ``reattach``). It does not hold the
kernel's HMAC key or ports: the guest sends them again over the re-attested connection. Records
are never logged.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from jupyter_cc.errors import InputError
from jupyter_cc.files import write_private

__all__ = ["KernelRecord", "forget", "load", "records", "records_dir", "save"]

_ID_CHARS = frozenset("0123456789abcdef-")


@dataclass(frozen=True)
class KernelRecord:
    kernel_id: str
    kernel_name: str
    guest_kernel_id: str
    orphan_timeout: float
    #: The kernel's attested CurveZMQ public key (Z85; public, not a secret), "" without CurveZMQ:
    #: a restored kernel must present the same key the original attestation bound.
    curve_publickey: str = ""

    def __repr__(self) -> str:  # the guest id is a capability: not in reprs or logs
        return f"KernelRecord({self.kernel_id}, {self.kernel_name})"


def records_dir() -> Path:
    """The private folder of the records (created 0700)."""
    path = Path(jupyter_runtime_dir()) / "jupyter-cc-kernels"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise InputError(f"{path} is not a private folder of this user", hint="make it mode 0700")
    return path


def _path(kernel_id: str) -> Path:
    if not kernel_id or not set(kernel_id) <= _ID_CHARS:
        raise InputError(f"{kernel_id!r} is not a kernel id")
    return records_dir() / f"{kernel_id}.json"


def save(record: KernelRecord) -> Path:
    """Write (or replace) the record, mode 0600."""
    path = _path(record.kernel_id)
    path.unlink(missing_ok=True)
    write_private(path, json.dumps(asdict(record)).encode())
    return path


def load(kernel_id: str) -> KernelRecord | None:
    """The record of ``kernel_id``, or None (none, or unreadable: it is removed then)."""
    try:
        path = _path(kernel_id)
        raw = json.loads(path.read_text())
        return KernelRecord(
            kernel_id=str(raw["kernel_id"]),
            kernel_name=str(raw["kernel_name"]),
            guest_kernel_id=str(raw["guest_kernel_id"]),
            orphan_timeout=float(raw["orphan_timeout"]),
            curve_publickey=str(raw.get("curve_publickey") or ""),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, InputError):
        forget(kernel_id)
        return None


def forget(kernel_id: str) -> None:
    """Remove the record (the kernel was shut down, or could not be restored)."""
    try:
        _path(kernel_id).unlink(missing_ok=True)
    except (OSError, InputError):
        pass


def records() -> list[KernelRecord]:
    """Every readable record, for the server extension to restore at start."""
    try:
        folder = records_dir()
    except InputError:
        return []
    found = [load(p.stem) for p in sorted(folder.glob("*.json"))]
    return [r for r in found if r is not None]
