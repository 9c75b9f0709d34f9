"""The verifiers remember what verified (parsed collateral, chains, CRLs, collateral checks), so a
long-running verifier is fast; attacked here: nothing remembered may let through what a fresh
verifier refuses. Each test first makes the verifier remember a success, then changes one thing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.attest.tdx import verify_tdx
from jupyter_cc.errors import ChainError, CollateralError, SignatureError
from tests.support.tdx_builder import QuoteSpec, SyntheticPki, build_quote, make_pki, qe_identity, tcb_info

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
NONCE, HOST_KEY = bytes(range(32)), bytes(range(32, 64))


@pytest.fixture(scope="module")
def intel() -> SyntheticPki:
    return make_pki()


def _verify(
    pki: SyntheticPki, *, at: datetime = NOW, crls: list[bytes] | None = None, **kw: object
) -> object:
    quote = build_quote(pki, QuoteSpec(report_data=expected_report_data(NONCE, HOST_KEY)))
    args: dict[str, object] = {
        "tcb_info": tcb_info(pki),
        "qe_identity": qe_identity(pki),
        "collateral_chain": pki.collateral_chain_pem(),
        "roots": TrustStore.of(pki.anchor),
    }
    args.update(kw)
    chosen = crls if crls is not None else [pki.crl("root"), pki.crl("platform")]
    return verify_tdx(quote, at=at, crls=chosen, **args)  # type: ignore[arg-type]


def test_a_remembered_success_does_not_outlive_the_collateral(intel: SyntheticPki) -> None:
    # TCB info valid until 2039: verified now, then judged at a time past its nextUpdate.
    assert _verify(intel).get("tcb_status") == "UpToDate"  # type: ignore[attr-defined]
    with pytest.raises(CollateralError, match="stale"):
        _verify(intel, at=datetime(2039, 6, 1, tzinfo=timezone.utc))
    # ...or before the chain is valid.
    with pytest.raises(ChainError, match="not valid before"):
        _verify(intel, at=datetime(2019, 6, 1, tzinfo=timezone.utc))


def test_a_remembered_success_does_not_cover_a_new_crl(intel: SyntheticPki) -> None:
    assert _verify(intel).get("revocation") == "checked"  # type: ignore[attr-defined]
    revoking = intel.crl("platform", [intel.pck.serial_number])
    with pytest.raises(ChainError, match="revoked"):
        _verify(intel, crls=[intel.crl("root"), revoking])
    revoking_signer = intel.crl("root", [intel.signing.serial_number])
    with pytest.raises(ChainError, match="revoked"):
        _verify(intel, crls=[revoking_signer, intel.crl("platform")])
    stale = intel.crl("platform", next_update=NOW - timedelta(days=3))
    with pytest.raises(CollateralError, match="stale"):
        _verify(intel, crls=[intel.crl("root"), stale])


def test_a_remembered_success_does_not_cover_other_documents_or_roots(intel: SyntheticPki) -> None:
    _verify(intel)
    forged = tcb_info(intel, key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(SignatureError, match="TCB info signature"):
        _verify(intel, tcb_info=forged)
    with pytest.raises(ChainError, match="not pinned"):
        _verify(intel, roots=TrustStore.of(make_pki().anchor))
    # The same success is still a success afterwards (nothing was remembered from the failures).
    assert _verify(intel).get("tcb_status") == "UpToDate"  # type: ignore[attr-defined]
