"""What may leave a confidential kernel: sealed envelopes, and values declassified on purpose.

``%declassify VAR --reason TEXT`` takes a snapshot of the value *as it is now* (encoded with the
safe codecs) and records the decision in the audit log; ``%cc pull`` from an ordinary kernel
then receives that snapshot, not whatever the variable holds later. A sealed envelope (bytes
starting with the envelope magic) may always leave, since only a released key opens it.
Anything else is refused with a sentence saying how to seal or declassify it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jupyter_cc.errors import CCError
from jupyter_cc.notebook.transfer import pack
from jupyter_cc.seal.envelope import MAGIC

__all__ = ["PullRefusedError", "declassified", "declassify", "export"]


class PullRefusedError(CCError):
    """A value that is neither sealed nor declassified cannot leave the confidential kernel."""

    check = "declassification"


@dataclass(frozen=True)
class Declassified:
    name: str
    reason: str
    at: str
    sha256: str
    packed: str

    def __repr__(self) -> str:
        return (
            f"Declassified({self.name!r}, reason={self.reason!r}, at={self.at}, sha256={self.sha256[:16]}...)"
        )


_REGISTRY: dict[str, Declassified] = {}


def declassify(name: str, value: Any, reason: str, *, unsafe_pickle: bool = False) -> Declassified:
    """Snapshot ``value`` under ``name`` as declassified, and audit the decision."""
    packed = pack(value, unsafe_pickle=unsafe_pickle)
    digest = hashlib.sha256(packed.encode()).hexdigest()
    entry = Declassified(
        name, reason, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), digest, packed
    )
    _REGISTRY[name] = entry
    _audit("declassify", variable=name, reason=reason, sha256=digest)
    return entry


def declassified() -> dict[str, Declassified]:
    return dict(_REGISTRY)


def export(name: str, namespace: dict[str, Any]) -> str:
    """Transfer text for ``%cc pull``: the declassified snapshot, or a sealed envelope as is."""
    value = namespace.get(name)
    if isinstance(value, (bytes, bytearray)) and bytes(value[: len(MAGIC)]) == MAGIC:
        _audit("pull", variable=name, kind="sealed", size=len(value))
        return pack(bytes(value), extra={"kind": "sealed"})
    entry = _REGISTRY.get(name)
    if entry is not None:
        _audit("pull", variable=name, kind="declassified", sha256=entry.sha256)
        doc = json.loads(entry.packed)
        doc.update(kind="declassified", reason=entry.reason)
        return json.dumps(doc, separators=(",", ":"))
    if name not in namespace:
        raise PullRefusedError(f"there is no variable '{name}' in the confidential kernel")
    raise PullRefusedError(
        f"'{name}' is neither sealed nor declassified, so it stays in the confidential kernel",
        hint=f"seal it (%seal {name} --key NAME) or declassify it (%declassify {name} --reason TEXT) first",
    )


def _audit(event: str, **fields: Any) -> None:
    from jupyter_cc import audit

    audit.record(event, **fields)
