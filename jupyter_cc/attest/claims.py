"""What verified evidence says: the immutable input of policy appraisal.

Verifiers return :class:`Claims` only after every signature and chain check passed, so holding a
``Claims`` means "genuine"; whether it is *acceptable* is for :mod:`jupyter_cc.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jupyter_cc.attest.kinds import kind as _registered

__all__ = ["Claims", "freeze"]

# The isolation TEE an MAA token describes (``x-ms-attestation-type``), as a CPU family.
_MAA_FAMILIES = {"sevsnpvm": "snp", "tdxvm": "tdx"}


_SCALARS = frozenset({str, int, bool, float, bytes, type(None)})


def freeze(value: Any) -> Any:
    """Make nested dicts and lists read-only so Claims cannot be edited after verification."""
    if type(value) in _SCALARS:  # most claims; the ABC check below is the slow path
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


@dataclass(frozen=True)
class Claims:
    """Verified facts about one piece of evidence.

    Attributes:
        kind: the evidence kind that was verified (a name in
            :data:`jupyter_cc.attest.kinds.KIND_NAMES`).
        simulated: True only for evidence from the simulated TEE.
        debug: the TEE allows a debugger (SNP policy bit 19, TDX TD attribute bit 0, ...).
        report_data: the 64 bytes the guest bound into the evidence (empty where the kind has
            none, as for MAA tokens that carry it as a claim).
        details: the per-kind claims named in design section 4 (JSON-ready values).
        gpu: claims of the first confidential GPU verified together with this evidence, if any.
        gpus: claims of every GPU verified together with this evidence, in bundle order.
    """

    kind: str
    simulated: bool
    debug: bool
    report_data: bytes
    details: Mapping[str, Any] = field(default_factory=dict)
    gpu: Claims | None = None
    gpus: tuple[Claims, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", freeze(dict(self.details)))

    @property
    def family(self) -> str:
        """``snp`` or ``tdx`` for the CPU TEE behind the evidence, else the kind itself."""
        entry = _registered(self.kind)
        return entry.family if entry is not None else self.kind

    @property
    def cpu_family(self) -> str | None:
        """``snp`` or ``tdx`` for the CPU TEE whose claims these are, else None.

        The kind's family, except for an MAA token: the TEE its ``attestation_type`` names
        (``sevsnpvm`` or ``tdxvm``), since its claims carry that TEE's values.
        """
        if self.kind == "maa":
            return _MAA_FAMILIES.get(str(self.get("attestation_type")))
        family = self.family
        return family if family in ("snp", "tdx") else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.details.get(key, default)

    def to_json(self) -> dict[str, Any]:
        """The ``claims`` object of ``jupyter-cc verify --json`` (design section 4)."""
        out: dict[str, Any] = {
            "tee": self.kind,
            "simulated": self.simulated,
            "debug": self.debug,
            "report_data": self.report_data.hex(),
        }
        out.update(_thaw(self.details))
        if self.gpu is not None:
            out["gpu"] = self.gpu.to_json()
        if self.gpus:
            out["gpus"] = [g.to_json() for g in self.gpus]
        return out
