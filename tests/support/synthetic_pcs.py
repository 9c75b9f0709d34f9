"""Intel PCS routes serving collateral of a synthetic PKI (``tests/support/tdx_builder.py``).

With :func:`synthetic_service` pointed at a :class:`~tests.support.fake_pcs.FakeService` holding
these routes and trusting only the synthetic root, the production collateral path (fetch, check
to the roots, cache) runs against quotes the test builds: TCB levels, the QE identity and the
CRLs are the test's to choose (a revoked PCK, an ``OutOfDate`` TCB, a stale CRL).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral import Client, CollateralService, Settings
from tests.support.fake_pcs import FakeService, Route
from tests.support.tdx_builder import NOT_AFTER, SyntheticPki, level, qe_identity, tcb_info

__all__ = ["synthetic_routes", "synthetic_service"]


def _quoted(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe="")


def synthetic_routes(
    pki: SyntheticPki,
    *,
    status: str = "UpToDate",
    levels: Sequence[dict[str, Any]] | None = None,
    revoked: Sequence[int] = (),
    root_revoked: Sequence[int] = (),
    tcb_next_update: str = "2039-01-01T00:00:00Z",
    crl_next_update: datetime = NOT_AFTER,
) -> dict[str, Route]:
    """The PCS routes for ``pki``: its TCB info (one level of ``status`` unless ``levels``),
    TD QE identity, a Platform CA CRL listing ``revoked`` and a Root CA CRL listing ``root_revoked``.
    """
    chain = _quoted(pki.collateral_chain_pem())
    crl_chain = b"".join(c.public_bytes(Encoding.PEM) for c in (pki.platform, pki.root))
    tcb = tcb_info(pki, levels=levels or [level(status)], next_update=tcb_next_update)
    return {
        f"/tdx/certification/v4/tcb?fmspc={pki.fmspc.hex()}": Route(tcb, {"TCB-Info-Issuer-Chain": chain}),
        "/tdx/certification/v4/qe/identity": Route(
            qe_identity(pki), {"SGX-Enclave-Identity-Issuer-Chain": chain}
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Route(
            pki.crl("platform", revoked, next_update=crl_next_update),
            {"SGX-PCK-CRL-Issuer-Chain": _quoted(crl_chain)},
        ),
        "/IntelSGXRootCA.der": Route(pki.crl("root", root_revoked, next_update=crl_next_update)),
    }


def synthetic_service(
    pcs: FakeService, cache: Path, roots: TrustStore, *, offline: bool = False
) -> CollateralService:
    """A collateral service on ``pcs`` (Intel and AMD URLs), trusting ``roots`` only."""
    settings = Settings(intel_pcs=pcs.url, intel_certs=pcs.url, amd_kds=pcs.url, cache=cache, offline=offline)
    client = Client(None, timeout=2.0, backoff=0.01, sleep=lambda _s: None)
    return CollateralService(settings, client=client, intel_roots=roots, amd_roots=roots)
