"""OCSP for the GPU device chain and the RIM signing chain, through a local test responder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from jupyter_cc.attest.evidence import Evidence
from jupyter_cc.attest.nvidia import verify_nvidia
from jupyter_cc.attest.nvidia_ocsp import check_response
from jupyter_cc.collateral.fetch import Client
from jupyter_cc.collateral.nvidia import gpu_collateral, obtain_ocsp
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.collateral.settings import Settings
from jupyter_cc.collateral.transfer import export_file, import_file
from jupyter_cc.errors import BindingError, ChainError, FreshnessError, SignatureError
from tests.support.fake_nvidia import (
    T0,
    FakeNvidia,
    GpuPki,
    RimPki,
    make_report,
    ocsp_answer,
    ocsp_pairs,
    serve_nvidia,
    synthetic_rims,
)

AT = T0 + timedelta(days=1)
NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def pkis() -> tuple[GpuPki, RimPki]:
    return GpuPki(), RimPki()


def _service(url: str, cache: Path, rim: RimPki, *, offline: bool = False) -> CollateralService:
    settings = Settings(nvidia_rim=url, nvidia_ocsp=url, cache=cache, offline=offline)
    client = Client(None, timeout=2, backoff=0.01, sleep=lambda _: None)
    return CollateralService(settings, client=client, nvidia_rim_roots=rim.roots())


def _fake(gpu: GpuPki, rim: RimPki, **kw: object) -> FakeNvidia:
    driver, vbios = synthetic_rims(rim)
    fake = FakeNvidia(
        rims={"NV_GPU_DRIVER_GH100_545.00": driver, "NV_GPU_VBIOS_1010_0200_882_96005E0001": vbios}
    )
    fake.know(ocsp_pairs(gpu, rim), **kw)  # type: ignore[arg-type]
    return fake


def _evidence(gpu: GpuPki) -> Evidence:
    return Evidence(kind="nvidia", report=make_report(gpu.leaf, NONCE, _blocks()), chain_pem=gpu.chain_pem())


def _blocks() -> dict[int, bytes]:
    from tests.support.fake_nvidia import BLOCKS

    return dict(BLOCKS)


def test_good_answers_make_revocation_checked_and_are_cached(pkis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gpu, rim = pkis
    ev = _evidence(gpu)
    with serve_nvidia(_fake(gpu, rim)) as fake:
        got = gpu_collateral(_service(fake.url, tmp_path, rim), ev, at=AT)
        assert got.notes == () and len(got.ocsp) == 4
        first = list(fake.hits)
        gpu_collateral(_service(fake.url, tmp_path, rim), ev, at=AT)
        assert fake.hits == first  # RIMs and OCSP answers came from the cache
        # Past nextUpdate the cached answers are stale: asked for again.
        gpu_collateral(_service(fake.url, tmp_path, rim), ev, at=T0 + timedelta(days=8))
        assert len([h for h in fake.hits if h.startswith("ocsp")]) == 8
    claims = verify_nvidia(
        ev.binary(), gpu.chain_pem(), at=AT, roots=gpu.roots(), nonce=NONCE, collateral=got
    )
    assert (claims.get("rim"), claims.get("revocation"), claims.debug) == ("verified", "checked", False)
    # Exported and imported on an air-gapped machine, a month later: judged again, kept as
    # stale, and the verifier refuses a stale answer rather than calling revocation checked.
    export = tmp_path / "export.json"
    assert export_file(_service("http://127.0.0.1:9", tmp_path, rim), export) == 6  # 2 RIMs, 4 OCSP
    later = T0 + timedelta(days=30)
    offline = _service("http://127.0.0.1:9", tmp_path / "gapped", rim, offline=True)
    assert import_file(offline, export, at=later) == (6, 0)
    stale = gpu_collateral(offline, ev, at=later)
    with pytest.raises(FreshnessError, match="expired at its nextUpdate"):
        verify_nvidia(ev.binary(), gpu.chain_pem(), at=later, roots=gpu.roots(), collateral=stale)


@pytest.mark.parametrize("which", ["brom", "identity", "signer"])
def test_a_revoked_certificate_is_refused(pkis, tmp_path: Path, which: str) -> None:  # type: ignore[no-untyped-def]
    gpu, rim = pkis
    target = {"brom": gpu.brom, "identity": gpu.identity, "signer": rim.signer}[which]
    issuer = {"brom": gpu.identity, "identity": gpu.root, "signer": rim.ca}[which]
    with serve_nvidia(_fake(gpu, rim, revoked=[target])) as fake:
        service = _service(fake.url, tmp_path, rim)
        got = gpu_collateral(service, _evidence(gpu), at=AT)
        item = obtain_ocsp(service, target.cert, issuer.cert, at=AT)
        assert item.origin == "fetched" and service.cache.get(item.entry.key) is None  # never cached
    name = target.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    with pytest.raises(ChainError, match=f"says '{name}' was revoked"):
        verify_nvidia(_evidence(gpu).binary(), gpu.chain_pem(), at=AT, roots=gpu.roots(), collateral=got)
    with pytest.raises(ChainError, match="key_compromise"):
        check_response(ocsp_answer(target.cert, issuer, revoked=True), target.cert, issuer.cert, at=AT)


def test_forged_stale_and_misdirected_answers(pkis) -> None:  # type: ignore[no-untyped-def]
    gpu, _ = pkis
    stranger = GpuPki().identity
    with pytest.raises(SignatureError, match="signed neither by its issuer"):
        check_response(
            ocsp_answer(gpu.brom.cert, gpu.identity, signer=stranger), gpu.brom.cert, gpu.identity.cert, at=AT
        )
    with pytest.raises(FreshnessError, match="expired at its nextUpdate"):
        check_response(
            ocsp_answer(gpu.brom.cert, gpu.identity),
            gpu.brom.cert,
            gpu.identity.cert,
            at=T0 + timedelta(days=30),
        )
    with pytest.raises(FreshnessError, match="no nextUpdate"):
        check_response(
            ocsp_answer(gpu.brom.cert, gpu.identity, next_update=None),
            gpu.brom.cert,
            gpu.identity.cert,
            at=AT,
        )
    with pytest.raises(BindingError, match="does not answer"):
        check_response(ocsp_answer(gpu.identity.cert, gpu.root), gpu.brom.cert, gpu.identity.cert, at=AT)


def test_offline_without_cached_answers_is_unchecked_not_an_error(pkis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gpu, rim = pkis
    got = gpu_collateral(_service("http://127.0.0.1:9", tmp_path, rim, offline=True), _evidence(gpu), at=AT)
    assert (
        got.driver_rim is None
        and len(got.notes) >= 2
        and all("offline" in n or "could not" in n for n in got.notes)
    )
    claims = verify_nvidia(_evidence(gpu).binary(), gpu.chain_pem(), at=AT, roots=gpu.roots(), collateral=got)
    assert (claims.get("rim"), claims.get("revocation")) == ("unchecked", "unchecked")
    assert datetime.now(timezone.utc) > AT  # the pinned time is what the checks used
