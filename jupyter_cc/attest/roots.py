"""Roots of trust, pinned by the SHA-256 fingerprint of their DER certificate.

The project ships no third-party certificates: a root arrives with the evidence or a chain file
and is trusted only if its fingerprint is one of these. A chain that imitates AMD's or Intel's
subject names but ends at any other certificate fails.

The simulated TEE has its own root, generated in the data dir. It is never in
:data:`HARDWARE_ROOTS`; verifiers trust it only when asked for simulated evidence, and the claims
they then produce say ``simulated: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "AMD_ARKS",
    "HARDWARE_ROOTS",
    "INTEL_SGX_ROOT",
    "NVIDIA_DEVICE_ROOT",
    "TrustAnchor",
    "TrustStore",
]


@dataclass(frozen=True)
class TrustAnchor:
    """One pinned root: a name for messages, its fingerprint, and whether it is simulated."""

    name: str
    fingerprint: str
    simulated: bool = False
    product: str | None = None


def _anchor(name: str, fingerprint: str, product: str | None = None) -> TrustAnchor:
    return TrustAnchor(name=name, fingerprint=fingerprint, product=product)


AMD_ARKS: Mapping[str, TrustAnchor] = MappingProxyType(
    {
        "Milan": _anchor(
            "ARK-Milan",
            product="Milan",
            fingerprint="69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        ),
        "Genoa": _anchor(
            "ARK-Genoa",
            product="Genoa",
            fingerprint="4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        ),
        "Turin": _anchor(
            "ARK-Turin",
            product="Turin",
            fingerprint="1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        ),
    }
)
INTEL_SGX_ROOT = _anchor(
    "Intel SGX Root CA", "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)
NVIDIA_DEVICE_ROOT = _anchor(
    "NVIDIA Device Identity CA", "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
)
HARDWARE_ROOTS: tuple[TrustAnchor, ...] = (*AMD_ARKS.values(), INTEL_SGX_ROOT, NVIDIA_DEVICE_ROOT)


@dataclass(frozen=True)
class TrustStore:
    """The roots a verification accepts, by fingerprint.

    ``TrustStore.hardware()`` holds the pinned vendor roots only. Tests and the simulated TEE
    build stores of their own; a store is immutable, so one verification cannot widen another's.
    """

    anchors: Mapping[str, TrustAnchor] = field(default_factory=dict)

    @classmethod
    def of(cls, *anchors: TrustAnchor) -> TrustStore:
        return cls(MappingProxyType({a.fingerprint.lower(): a for a in anchors}))

    @classmethod
    def hardware(cls) -> TrustStore:
        return cls.of(*HARDWARE_ROOTS)

    def find(self, fingerprint: str) -> TrustAnchor | None:
        return self.anchors.get(fingerprint.lower())

    def names(self) -> list[str]:
        return sorted(a.name for a in self.anchors.values())
