"""Collateral on the paths that start kernels and release keys, attacked.

``judge_bundle`` (the provisioner, ``%attest``, ``jupyter-cc attest``, the Hub spawner) and the
broker fetch TCB info, the TD QE identity and the PCK and Root CA CRLs for a TD quote's FMSPC
through the collateral service, here pointed at a local PCS serving collateral of a synthetic
Intel PKI (``tests/support/synthetic_pcs.py``) that a test :class:`TrustStore` trusts. So a
revoked PCK, an ``OutOfDate`` or ``Revoked`` TCB, missing collateral offline, collateral in a
bundle older than the cache's, and stale collateral are each refused where it matters.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.evidence import serialize_bundle
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral import CollateralService
from jupyter_cc.errors import ChainError, CollateralError
from jupyter_cc.kbs.broker import Broker, RequestRefusedError
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.policy import Policy
from jupyter_cc.remote.attestation import judge_bundle
from tests.support.fake_pcs import FakeService, Route, serve
from tests.support.synthetic_pcs import synthetic_routes, synthetic_service
from tests.support.tdx_builder import (
    QuoteSpec,
    SyntheticPki,
    build_quote,
    level,
    make_pki,
    qe_identity,
    tcb_info,
)
from tests.unit.test_forged_quote import attest_with
from tests.unit.test_revocation import AmdPki, make_amd_pki

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
UP_TO_DATE = Policy(name="up-to-date", tee=("tdx",), tdx_tcb_status=("UpToDate",))


@pytest.fixture(scope="module")
def pki() -> SyntheticPki:
    return make_pki()


@pytest.fixture(scope="module")
def roots(pki: SyntheticPki) -> TrustStore:
    return TrustStore.of(pki.anchor)


@pytest.fixture
def pcs(pki: SyntheticPki) -> Iterator[FakeService]:
    with serve(FakeService(synthetic_routes(pki))) as service:
        yield service


def service(
    pcs: FakeService, tmp_path: Path, roots: TrustStore, *, offline: bool = False
) -> CollateralService:
    return synthetic_service(pcs, tmp_path / "cache", roots, offline=offline)


def bundle(pki: SyntheticPki, nonce: bytes, host_key: bytes, **extra: Any) -> bytes:
    quote = build_quote(pki, QuoteSpec(report_data=expected_report_data(nonce, host_key)))
    return serialize_bundle(
        "tdx",
        {"report": base64.b64encode(quote).decode(), **extra},
        nonce=nonce,
        host_key_sha256=host_key,
        source="tdx-guest",
        collected_at="2024-06-01T00:00:00Z",
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def judge(pki: SyntheticPki, svc: CollateralService, roots: TrustStore, policy: Policy, **kw: Any) -> Any:
    nonce, host_key = os.urandom(32), os.urandom(32)
    raw = bundle(pki, nonce, host_key, **kw.pop("extra", {}))
    at = kw.pop("at", AT)
    return judge_bundle(
        raw, nonce=nonce, host_key_sha256=host_key, policy=policy, at=at, collateral=svc, roots=roots
    )


def test_genuine_quote_passes_the_default_policy_with_fetched_collateral(
    pki: SyntheticPki, pcs: FakeService, roots: TrustStore, tmp_path: Path
) -> None:
    attestation = judge(pki, service(pcs, tmp_path, roots), roots, Policy())
    assert attestation.verdict.passed, attestation.verdict.reasons
    claims = attestation.claims
    assert claims.get("revocation") == "checked"
    assert claims.get("tcb_status") == "UpToDate"
    assert claims.get("collateral_stale_days") == 0
    assert any("fmspc=" + pki.fmspc.hex() in hit for hit in pcs.hits)
    # Cached now: a second judgement fetches nothing.
    before = len(pcs.hits)
    assert judge(pki, service(pcs, tmp_path, roots), roots, UP_TO_DATE).verdict.passed
    assert len(pcs.hits) == before


@pytest.mark.parametrize("which", ["pck", "platform-ca"])
def test_a_pck_listed_in_a_crl_is_refused_on_the_kernel_path(
    pki: SyntheticPki, roots: TrustStore, tmp_path: Path, which: str
) -> None:
    revoked = (
        {"revoked": [pki.pck.serial_number]}
        if which == "pck"
        else {"root_revoked": [pki.platform.serial_number]}
    )
    with serve(FakeService(synthetic_routes(pki, **revoked))) as pcs:  # type: ignore[arg-type]
        with pytest.raises(ChainError, match="revoked"):
            judge(pki, service(pcs, tmp_path, roots), roots, Policy())
        # Even a policy allowing unchecked revocation refuses a revoked PCK: it was checked.
        lax = Policy(name="lax", collateral_allow_unchecked_revocation=True)
        with pytest.raises(ChainError, match="revoked"):
            judge(pki, service(pcs, tmp_path, roots), roots, lax)


@pytest.mark.parametrize("status", ["OutOfDate", "Revoked", "SWHardeningNeeded"])
def test_a_tcb_not_up_to_date_is_refused_by_a_policy_asking_up_to_date(
    pki: SyntheticPki, roots: TrustStore, tmp_path: Path, status: str
) -> None:
    with serve(FakeService(synthetic_routes(pki, status=status))) as pcs:
        attestation = judge(pki, service(pcs, tmp_path, roots), roots, UP_TO_DATE)
    assert attestation.claims.get("tcb_status") == status
    assert not attestation.verdict.passed
    assert "tdx.tcb_status" in [r.rule for r in attestation.verdict.reasons]
    assert f"observed {status}" in str(attestation.verdict.reasons[0])
    default = judge_default(pki, roots, tmp_path, status)
    assert default.verdict.passed is (status != "Revoked")  # every policy refuses Revoked


def judge_default(pki: SyntheticPki, roots: TrustStore, tmp_path: Path, status: str) -> Any:
    with serve(FakeService(synthetic_routes(pki, status=status))) as pcs:
        return judge(pki, service(pcs, tmp_path / "default", roots), roots, Policy())


def test_offline_with_an_empty_cache_the_kernel_path_names_what_is_missing(
    pki: SyntheticPki, pcs: FakeService, roots: TrustStore, tmp_path: Path
) -> None:
    with pytest.raises(CollateralError) as caught:
        judge(pki, service(pcs, tmp_path, roots, offline=True), roots, Policy())
    text = caught.value.diagnostics()
    assert f"holds no TDX TCB info for FMSPC {pki.fmspc.hex()}" in text
    assert "jupyter-cc collateral import" in text
    assert pcs.hits == []


def test_the_service_down_refuses_the_bundle(pki: SyntheticPki, roots: TrustStore, tmp_path: Path) -> None:
    with (
        serve(FakeService(synthetic_routes(pki), status=503)) as pcs,
        pytest.raises(CollateralError, match="TDX TCB info"),
    ):
        judge(pki, service(pcs, tmp_path, roots), roots, Policy())


def test_a_bundle_carrying_older_collateral_than_the_cache_is_not_used(
    pki: SyntheticPki, roots: TrustStore, tmp_path: Path
) -> None:
    routes = synthetic_routes(pki, status="OutOfDate", tcb_next_update="2039-01-01T00:00:00Z")
    with serve(FakeService(routes)) as pcs:
        svc = service(pcs, tmp_path, roots)
        assert judge(pki, svc, roots, UP_TO_DATE).claims.get("tcb_status") == "OutOfDate"  # now cached
        older = tcb_info(pki, levels=[level("UpToDate")], next_update="2038-01-01T00:00:00Z")
        hint = {
            "tcb_info": b64(older),
            "qe_identity": b64(qe_identity(pki)),
            "collateral_chain": b64(pki.collateral_chain_pem()),
        }
        attestation = judge(pki, service(pcs, tmp_path, roots, offline=True), roots, UP_TO_DATE, extra=hint)
    assert attestation.claims.get("tcb_status") == "OutOfDate"
    assert not attestation.verdict.passed


def test_collateral_in_a_bundle_counts_only_when_it_verifies_to_the_pinned_roots(
    pki: SyntheticPki, roots: TrustStore, tmp_path: Path
) -> None:
    with serve(FakeService(synthetic_routes(pki, status="OutOfDate"))) as pcs:
        judge(pki, service(pcs, tmp_path, roots), roots, UP_TO_DATE)  # cache the CRLs and TCB info
        other = make_pki(fmspc=pki.fmspc)
        forged = tcb_info(other, levels=[level("UpToDate")], next_update="2039-06-01T00:00:00Z")
        hint = {"tcb_info": b64(forged), "collateral_chain": b64(other.collateral_chain_pem())}
        offline = service(pcs, tmp_path, roots, offline=True)
        assert judge(pki, offline, roots, UP_TO_DATE, extra=hint).claims.get("tcb_status") == "OutOfDate"
        # Newer collateral that verifies is taken (and cached, as an import would).
        newer = tcb_info(pki, levels=[level("UpToDate")], next_update="2039-06-01T00:00:00Z")
        good = {"tcb_info": b64(newer), "collateral_chain": b64(pki.collateral_chain_pem())}
        attestation = judge(pki, offline, roots, UP_TO_DATE, extra=good)
    assert attestation.verdict.passed, attestation.verdict.reasons


@pytest.mark.parametrize(("allowed", "passes"), [(None, False), (2, False), (3, True), (5, True)])
def test_stale_collateral_passes_only_within_max_stale_days(
    pki: SyntheticPki, roots: TrustStore, tmp_path: Path, allowed: int | None, passes: bool
) -> None:
    crl_next = AT - timedelta(days=3)
    with serve(FakeService(synthetic_routes(pki, crl_next_update=crl_next))) as pcs:
        svc = service(pcs, tmp_path, roots)
        svc.tdx(build_quote(pki), at=crl_next - timedelta(days=1))  # cached while still current
        offline = service(pcs, tmp_path, roots, offline=True)
        policy = Policy(name="stale", collateral_max_stale_days=allowed)
        if not passes:
            with pytest.raises(CollateralError, match="stale"):
                judge(pki, offline, roots, policy)
            return
        attestation = judge(pki, offline, roots, policy)
    assert attestation.verdict.passed, attestation.verdict.reasons
    assert attestation.claims.get("collateral_stale_days") == 3


# --- the broker ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    keys = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    keys.add("default/key/strict", b"\xa5" * 32)
    keys.add(
        "default/key/fresh", b"\x5a" * 32, policy_text='tee = ["tdx"]\n[tdx]\ntcb_status = ["UpToDate"]\n'
    )
    yield keys
    keys.close()


def attest(broker: Broker, pki: SyntheticPki) -> Any:
    """A protocol 0.4 session and attest body for a quote of ``pki`` (as upstream's tdx attester)."""
    return attest_with(broker, pki, QuoteSpec)


def test_the_broker_refuses_a_revoked_pck(
    pki: SyntheticPki, roots: TrustStore, store: KeyStore, tmp_path: Path
) -> None:
    with serve(FakeService(synthetic_routes(pki, revoked=[pki.pck.serial_number]))) as pcs:
        broker = Broker(store, roots=roots, collateral=service(pcs, tmp_path, roots))
        session, body = attest(broker, pki)
        with pytest.raises(RequestRefusedError) as caught:
            broker.attest(session, body)
    assert caught.value.status == 401 and "revoked" in caught.value.detail


@pytest.mark.parametrize("status", ["UpToDate", "OutOfDate", "Revoked"])
def test_the_broker_judges_the_tcb_status(
    pki: SyntheticPki, roots: TrustStore, store: KeyStore, tmp_path: Path, status: str
) -> None:
    with serve(FakeService(synthetic_routes(pki, status=status))) as pcs:
        broker = Broker(store, roots=roots, collateral=service(pcs, tmp_path, roots))
        session, body = attest(broker, pki)
        assert broker.attest(session, body)
        for rid in ("default/key/strict", "default/key/fresh"):
            if status == "UpToDate" or (status == "OutOfDate" and rid.endswith("strict")):
                assert broker.release(session, rid)[0]
                continue
            with pytest.raises(RequestRefusedError) as caught:
                broker.release(session, rid)
            assert caught.value.status == 403 and "tdx.tcb_status" in caught.value.detail


def test_the_broker_refuses_when_collateral_cannot_be_had(
    pki: SyntheticPki, pcs: FakeService, roots: TrustStore, store: KeyStore, tmp_path: Path
) -> None:
    broker = Broker(store, roots=roots, collateral=service(pcs, tmp_path, roots, offline=True))
    session, body = attest(broker, pki)
    with pytest.raises(RequestRefusedError) as caught:
        broker.attest(session, body)
    assert caught.value.status == 401 and "collateral import" in caught.value.detail


# --- SEV-SNP: AMD's CRL for the chain's product ---------------------------------------------------


def snp_bundle(amd: AmdPki, nonce: bytes, host_key: bytes) -> bytes:
    report = amd.tee.mint(expected_report_data(nonce, host_key))
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (amd.ask, amd.ark))
    evidence = {
        "report": b64(report),
        "vcek": amd.vcek.public_bytes(Encoding.PEM).decode(),
        "chain": chain.decode(),
    }
    return serialize_bundle(
        "snp",
        evidence,
        nonce=nonce,
        host_key_sha256=host_key,
        source="snp-guest",
        collected_at="2024-06-01T00:00:00Z",
    )


def kds_for(amd: AmdPki, revoked: list[int]) -> FakeService:
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (amd.ask, amd.ark))
    return FakeService(
        {"/vcek/v1/Milan/cert_chain": Route(chain), "/vcek/v1/Milan/crl": Route(amd.crl(revoked))}
    )


@pytest.mark.parametrize("kind", ["snp", "az-snp-vtpm"])
@pytest.mark.parametrize("revoked", [False, True])
def test_a_vcek_listed_in_amds_crl_is_refused_on_the_kernel_path(
    tmp_path: Path, revoked: bool, kind: str
) -> None:
    # The SNP report itself, or the one inside Azure's HCL report: both judged against AMD's CRL.
    amd = make_amd_pki()
    nonce, host_key = os.urandom(32), os.urandom(32)
    build = snp_bundle if kind == "snp" else az_snp_bundle
    with serve(kds_for(amd, [amd.vcek.serial_number] if revoked else [])) as kds:
        svc = synthetic_service(kds, tmp_path / "cache", amd.roots)

        def judge() -> Any:
            return judge_bundle(
                build(amd, nonce, host_key),
                nonce=nonce,
                host_key_sha256=host_key,
                policy=Policy(),
                at=AT,
                collateral=svc,
                roots=amd.roots,
            )

        if revoked:
            with pytest.raises(ChainError, match="revoked"):
                judge()
            assert "/vcek/v1/Milan/crl" in kds.hits
            return
        attestation = judge()
    assert attestation.claims.kind == kind
    assert attestation.claims.get("revocation") == "checked"
    assert attestation.verdict.passed, attestation.verdict.reasons
    assert "/vcek/v1/Milan/crl" in kds.hits


def test_snp_offline_without_a_cached_crl_is_refused_naming_it(tmp_path: Path) -> None:
    amd = make_amd_pki()
    nonce, host_key = os.urandom(32), os.urandom(32)
    with serve(kds_for(amd, [])) as kds:
        svc = synthetic_service(kds, tmp_path / "cache", amd.roots, offline=True)
        with pytest.raises(CollateralError, match="holds no Milan VCEK cert_chain"):
            judge_bundle(
                snp_bundle(amd, nonce, host_key),
                nonce=nonce,
                host_key_sha256=host_key,
                policy=Policy(),
                at=AT,
                collateral=svc,
                roots=amd.roots,
            )


def test_the_broker_lets_stale_collateral_through_only_for_policies_allowing_it(
    pki: SyntheticPki, roots: TrustStore, store: KeyStore, tmp_path: Path
) -> None:
    store.add("default/key/lenient", b"\x33" * 32, policy_text="[collateral]\nmax_stale_days = 5\n")
    crl_next = datetime.now(timezone.utc) - timedelta(days=3)
    with serve(FakeService(synthetic_routes(pki, crl_next_update=crl_next))) as pcs:
        service(pcs, tmp_path, roots).tdx(build_quote(pki), at=crl_next - timedelta(days=1))
        broker = Broker(store, roots=roots, collateral=service(pcs, tmp_path, roots, offline=True))
        session, body = attest(broker, pki)
        assert broker.attest(session, body)  # verified with the largest allowance of the policies
    assert broker.release(session, "default/key/lenient")[0]
    with pytest.raises(RequestRefusedError) as caught:
        broker.release(session, "default/key/strict")  # the default policy: 0 days
    assert caught.value.status == 403 and "collateral.max_stale_days" in caught.value.detail


# --- az-snp-vtpm: the SNP report inside Azure's HCL report is judged against AMD's CRL too -------


def az_snp_bundle(amd: AmdPki, nonce: bytes, host_key: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.support import azure_builder as ab

    ak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    var = ab.runtime_json(ak.public_key(), user_data=expected_report_data(nonce, host_key))
    hcl = ab.hcl_report(amd.tee.mint(ab.HASHES[1](var).ljust(64, b"\x00")), var, bind=False)
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (amd.ask, amd.ark))
    evidence = {
        "report": b64(hcl),
        "vcek": amd.vcek.public_bytes(Encoding.PEM).decode(),
        "chain": chain.decode(),
    }
    return serialize_bundle(
        "az-snp-vtpm",
        evidence,
        nonce=nonce,
        host_key_sha256=host_key,
        source="azure-vtpm",
        collected_at="2024-06-01T00:00:00Z",
    )
