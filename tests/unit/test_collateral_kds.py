"""The collateral service against a local AMD KDS serving the real Milan VCEK and chains."""

from __future__ import annotations

import errno
from datetime import datetime, timezone
from pathlib import Path

import pytest

from jupyter_cc.attest.certs import load_certificate, load_certificates
from jupyter_cc.attest.snp import parse_report, verify_report
from jupyter_cc.collateral import Client, CollateralService, Settings
from jupyter_cc.collateral.kds import vcek_request
from jupyter_cc.decoding import decode_blob
from jupyter_cc.errors import CollateralError, InputError
from tests.support.fake_kds import kds_routes
from tests.support.fake_pcs import FakeService, serve

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)


def make(kds: FakeService, cache: Path) -> CollateralService:
    settings = Settings(amd_kds=kds.url, cache=cache)
    return CollateralService(settings, client=Client(None, timeout=2, backoff=0.01, sleep=lambda _: None))


def report(vectors: Path) -> bytes:
    return decode_blob((vectors / "snp/milan-v2.report.hex").read_bytes(), what="report")


def test_vcek_by_hwid_and_tcb_verifies_the_real_report(vectors: Path, tmp_path: Path) -> None:
    with serve(FakeService(kds_routes(vectors))) as kds:
        got = make(kds, tmp_path).snp(report(vectors), at=AT, product="Milan", crl=False)
        assert [i.origin for i in got.items] == ["fetched", "fetched"]
        claims = verify_report(
            parse_report(report(vectors)), load_certificate(got.vcek), load_certificates(got.chain), at=AT
        )
        assert claims.get("product") == "Milan"
        again = make(kds, tmp_path).snp(report(vectors), at=AT, product="Milan", crl=False)
        assert [i.origin for i in again.items] == ["cache", "cache"]
        assert len(kds.hits) == 2


def test_unknown_hwid_is_404_and_v2_needs_a_product(vectors: Path, tmp_path: Path) -> None:
    params = vcek_request(parse_report(report(vectors)), "Milan")
    assert set(params) == {"product", "hwid", "blSPL", "teeSPL", "snpSPL", "ucodeSPL"}
    with pytest.raises(InputError, match="--product"):
        vcek_request(parse_report(report(vectors)))
    with serve(FakeService(kds_routes(vectors))) as kds:
        other = {**params, "hwid": "00" * 63 + "01"}
        with pytest.raises(CollateralError, match="AMD KDS has no Milan VCEK"):
            make(kds, tmp_path).obtain(
                "amd-vcek", other, at=AT, chain=(vectors / "amd/ask_ark_milan.pem").read_bytes()
            )


def test_wrong_product_chain_is_refused_and_not_cached(vectors: Path, tmp_path: Path) -> None:
    routes = kds_routes(vectors)
    routes["/vcek/v1/Milan/cert_chain"] = routes["/vlek/v1/Milan/cert_chain"]
    with serve(FakeService(routes)) as kds, pytest.raises(CollateralError, match="not cached"):
        make(kds, tmp_path).snp(report(vectors), at=AT, product="Milan", crl=False)
    assert not list(tmp_path.rglob("*.json"))


def test_read_only_cache_is_one_sentence(
    vectors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jupyter_cc.collateral.cache as cache

    def refuse(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache, "write_atomic", refuse)
    with serve(FakeService(kds_routes(vectors))) as kds, pytest.raises(CollateralError, match="Read-only"):
        make(kds, tmp_path).snp(report(vectors), at=AT, product="Milan", crl=False)
    assert not list(tmp_path.rglob("*.json"))


# --- KDS faults: AMD rate-limits hard (429 with Retry-After) and answers slowly at times ---------


def test_kds_429_retry_after_is_honoured(vectors: Path, tmp_path: Path) -> None:
    waits: list[float] = []
    with serve(FakeService(kds_routes(vectors))) as kds:
        kds.rate_limit = 2
        settings = Settings(amd_kds=kds.url, cache=tmp_path)
        service = CollateralService(settings, client=Client(None, backoff=0.01, sleep=waits.append))
        got = service.snp(report(vectors), at=AT, product="Milan", crl=False)
    assert waits[:2] == [1.0, 1.0]  # the fake's Retry-After: 1, twice, then the answers
    assert [i.origin for i in got.items] == ["fetched", "fetched"]


def test_kds_429_with_a_long_retry_after_fails_at_once(vectors: Path, tmp_path: Path) -> None:
    with serve(FakeService(kds_routes(vectors))) as kds:
        kds.rate_limit, kds.retry_after = 5, "3600"
        with pytest.raises(CollateralError, match=r"AMD KDS rate-limits.*3600 s") as info:
            make(kds, tmp_path).snp(report(vectors), at=AT, product="Milan", crl=False)
        assert len(kds.hits) == 1
    assert "collateral import" in info.value.diagnostics()
    assert not list(tmp_path.rglob("*.json"))


def test_slow_kds_fails_closed_and_caches_nothing(vectors: Path, tmp_path: Path) -> None:
    with serve(FakeService(kds_routes(vectors))) as kds:
        kds.delay = 0.5
        settings = Settings(amd_kds=kds.url, cache=tmp_path)
        slow = CollateralService(
            settings, client=Client(None, timeout=0.1, backoff=0.01, sleep=lambda _: None)
        )
        with pytest.raises(CollateralError, match=r"AMD KDS did not answer in time"):
            slow.snp(report(vectors), at=AT, product="Milan", crl=False)
    assert not list(tmp_path.rglob("*.json"))


def test_the_vlek_chain_is_fetched_and_judged_as_a_vlek_chain(vectors: Path, tmp_path: Path) -> None:
    # VLEKs are provisioned to the host, not fetched by hwID; the KDS serves their ASVK/ARK chain.
    with serve(FakeService(kds_routes(vectors))) as kds:
        service = make(kds, tmp_path)
        item = service.obtain("amd-cert-chain", {"product": "Milan", "signer": "vlek"}, at=AT)
        names = [c.subject.rfc4514_string() for c in load_certificates(item.entry.chain or item.entry.body)]
        assert "SEV-VLEK-Milan" in names[0] and "ARK-Milan" in names[1]
        assert "/vlek/v1/Milan/cert_chain" in kds.hits
        # The VCEK chain served where the VLEK chain belongs is refused and not cached.
        kds.routes["/vlek/v1/Milan/cert_chain"] = kds.routes["/vcek/v1/Milan/cert_chain"]
        with pytest.raises(CollateralError, match="not the VLEK signing key"):
            make(kds, tmp_path / "other").obtain(
                "amd-cert-chain", {"product": "Milan", "signer": "vlek"}, at=AT
            )
    assert not list((tmp_path / "other").rglob("*.json"))
