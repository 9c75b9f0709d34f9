"""GPU RIM appraisal with NVIDIA's real signed RIMs and real H100 reports (vectors README)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from jupyter_cc.attest.evidence import Evidence
from jupyter_cc.attest.nvidia import parse_spdm_report, verify_nvidia
from jupyter_cc.attest.nvidia_rim import (
    GpuCollateral,
    MeasurementError,
    appraise_rims,
    compare,
    rim_ids,
    verify_rim,
)
from jupyter_cc.cli import main as cli_main
from jupyter_cc.collateral.fetch import Client
from jupyter_cc.collateral.nvidia import gpu_collateral
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.collateral.settings import Settings
from jupyter_cc.collateral.transfer import export_file, import_file
from jupyter_cc.errors import ChainError, CollateralError, FormatError, SignatureError
from tests.support.fake_nvidia import FakeNvidia, RimPki, serve_nvidia, sign_swid, strip_signature
from tests.support.gpu_bundles import sim_gpu_bundle

# Between the driver RIM leaf's notBefore and the VBIOS RIM leaves' notAfter (vectors README).
AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
DRIVER = "nvidia/rim-driver-545.00-test.swidtag"
VBIOS = "nvidia/rim-vbios-96005E0001-test.swidtag"
PROD = "nvidia/rim-vbios-96005E0001-prod.swidtag"
pytestmark = pytest.mark.vectors


def report(vectors: Path, name: str) -> bytes:
    return bytes.fromhex((vectors / f"nvidia/{name}.report.hex").read_text().strip())


def chain(vectors: Path, name: str) -> bytes:
    return (vectors / f"nvidia/{name}.chain.pem").read_bytes()


def test_the_545_report_matches_its_driver_and_vbios_rims(vectors: Path) -> None:
    parsed = parse_spdm_report(report(vectors, "h100-545"))
    assert rim_ids(parsed) == ("NV_GPU_DRIVER_GH100_545.00", "NV_GPU_VBIOS_1010_0200_882_96005E0001")
    driver = verify_rim((vectors / DRIVER).read_bytes(), at=AT)
    vbios = verify_rim((vectors / VBIOS).read_bytes(), at=AT)
    assert (driver.version, vbios.version) == ("545.00", "96.00.5E.00.01")
    # The two RIM CAs write their dates as GeneralizedTime: noted, and the chain still verified.
    assert vbios.generalized_time_ca == (
        "NVIDIA Reference Value L3 GH100 001",
        "NVIDIA Reference Value GH100 CA",
    )
    result = appraise_rims(parsed, driver=driver, vbios=vbios)
    assert len(result.matched) == 21 + 12
    assert compare(parsed, vbios) == ([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12], [])


def test_the_verifier_accepts_the_545_report_with_its_rims(vectors: Path) -> None:
    collateral = GpuCollateral((vectors / DRIVER).read_bytes(), (vectors / VBIOS).read_bytes())
    nonce = bytes.fromhex("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")
    claims = verify_nvidia(
        report(vectors, "h100-545"), chain(vectors, "h100-545"), at=AT, nonce=nonce, collateral=collateral
    )
    assert claims.get("rim") == "verified" and claims.debug is False
    assert (claims.get("arch"), claims.get("cc_mode"), claims.get("driver_version")) == (
        "hopper",
        "on",
        "545.00",
    )
    assert claims.get("revocation") == "unchecked"  # no OCSP answers: NVIDIA's responder is not here


def test_the_prod_vbios_rim_of_the_same_id_is_refused_on_1_2_3_9(vectors: Path) -> None:
    collateral = GpuCollateral((vectors / DRIVER).read_bytes(), (vectors / PROD).read_bytes())
    with pytest.raises(MeasurementError) as err:
        verify_nvidia(report(vectors, "h100-545"), chain(vectors, "h100-545"), at=AT, collateral=collateral)
    assert "measurements 1, 2, 3, 9 differ from the VBIOS RIM" in err.value.message
    assert "driver" not in err.value.message.split(":", 1)[1]  # the versions agree: only measurements


@pytest.mark.parametrize("vbios", [VBIOS, PROD])
def test_the_other_h100_report_is_refused_with_both(vectors: Path, vbios: str) -> None:
    # RIMs for another driver and another VBIOS than this GPU runs.
    collateral = GpuCollateral((vectors / DRIVER).read_bytes(), (vectors / vbios).read_bytes())
    with pytest.raises(MeasurementError) as err:
        verify_nvidia(report(vectors, "h100"), chain(vectors, "h100"), at=AT, collateral=collateral)
    message = err.value.message
    assert "driver 550.90.07 is not the driver RIM's 545.00" in message
    assert "VBIOS 96.00.9f.00.01 is not the VBIOS RIM's 96.00.5E.00.01" in message
    bad = "1, 2, 3, 9, 11" if vbios == VBIOS else "1, 2, 9, 11"
    assert f"measurements {bad} differ from the VBIOS RIM" in message


def test_a_rim_resigned_by_a_self_made_key_is_refused(vectors: Path) -> None:
    pki = RimPki()
    forged = sign_swid(strip_signature((vectors / VBIOS).read_bytes()), pki.chain())
    assert verify_rim(forged, at=AT, roots=pki.roots()).version == "96.00.5E.00.01"  # well signed
    with pytest.raises(ChainError, match="does not chain to NVIDIA CoRIM signing Root CA"):
        verify_rim(forged, at=AT)
    collateral = GpuCollateral((vectors / DRIVER).read_bytes(), forged)
    with pytest.raises(ChainError):
        verify_nvidia(report(vectors, "h100-545"), chain(vectors, "h100-545"), at=AT, collateral=collateral)


def test_an_edited_measurement_breaks_the_signature(vectors: Path) -> None:
    xml = (vectors / VBIOS).read_bytes()
    at = xml.index(b'Hash0="0b42836f') + len(b'Hash0="')
    edited = xml[:at] + b"1" + xml[at + 1 :]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_rim(edited, at=AT)


def test_expired_leaf_and_malformed_xml_are_refused(vectors: Path) -> None:
    verify_rim((vectors / VBIOS).read_bytes(), at=AT)  # remembered as verified ...
    with pytest.raises(ChainError, match="HCC RIM L4 Signer"):  # ... yet judged again at each time
        verify_rim((vectors / VBIOS).read_bytes(), at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(FormatError, match="not well-formed XML"):
        verify_rim(b"<SoftwareIdentity><unclosed></SoftwareIdentity>", at=AT)
    with pytest.raises(FormatError, match="no signer certificate"):
        verify_rim(strip_signature((vectors / VBIOS).read_bytes()), at=AT)


def test_signxml_alone_refuses_the_rim_chain_our_verifier_judges_it(vectors: Path) -> None:
    # Why the chain is verified by jupyter_cc.attest.certs (nvidia_rim docstring): signxml's own
    # chain check (cryptography's x509.verification) cannot take this chain.
    from signxml import SignatureConfiguration, XMLVerifier
    from signxml.exceptions import InvalidCertificate

    config = SignatureConfiguration(verification_time=AT)
    with pytest.raises(InvalidCertificate):
        XMLVerifier().verify(
            (vectors / VBIOS).read_bytes(),
            ca_pem_file=str(vectors / "nvidia/rim-root.pem"),
            expect_config=config,
        )
    rim = verify_rim((vectors / VBIOS).read_bytes(), at=AT)  # signature, then the chain, checked here
    assert rim.signer == "HCC RIM L4 Signer" and len(rim.chain) == 4


def _service(url: str, cache: Path) -> CollateralService:
    settings = Settings(nvidia_rim=url, nvidia_ocsp=url, cache=cache)
    return CollateralService(settings, client=Client(None, timeout=2, backoff=0.01, sleep=lambda _: None))


def test_rims_come_from_the_rim_service_then_the_cache_and_export(vectors: Path, tmp_path: Path) -> None:
    fake = FakeNvidia(
        rims={
            "NV_GPU_DRIVER_GH100_545.00": (vectors / DRIVER).read_bytes(),
            "NV_GPU_VBIOS_1010_0200_882_96005E0001": (vectors / VBIOS).read_bytes(),
        }
    )
    ev = Evidence(kind="nvidia", report=report(vectors, "h100-545"), chain_pem=chain(vectors, "h100-545"))
    with serve_nvidia(fake):
        got = gpu_collateral(_service(fake.url, tmp_path / "c"), ev, at=AT)
        assert got.driver_rim == (vectors / DRIVER).read_bytes()
        # The responder knows none of NVIDIA's certificates: revocation stays unchecked, said why.
        assert any("OCSP" in n for n in got.notes) and len(got.ocsp) == 0
        rim_hits = [h for h in fake.hits if h.startswith("rim")]
        assert len(rim_hits) == 2
        gpu_collateral(_service(fake.url, tmp_path / "c"), ev, at=AT)
        assert [h for h in fake.hits if h.startswith("rim")] == rim_hits  # cached
    claims = verify_nvidia(ev.binary(), chain(vectors, "h100-545"), at=AT, collateral=got)
    assert claims.get("rim") == "verified"
    # Export, then import on an air-gapped machine: judged again to the pinned root.
    export = tmp_path / "export.json"
    assert export_file(_service("http://127.0.0.1:9", tmp_path / "c"), export) == 2
    offline = CollateralService(Settings(offline=True, cache=tmp_path / "other"))
    assert import_file(offline, export, at=AT) == (2, 0)
    again = gpu_collateral(offline, ev, at=AT)
    assert again.driver_rim is not None and again.vbios_rim is not None


def test_the_rim_service_serving_a_forged_or_unknown_rim(vectors: Path, tmp_path: Path) -> None:
    forged = sign_swid(strip_signature((vectors / VBIOS).read_bytes()), RimPki().chain())
    fake = FakeNvidia(rims={"NV_GPU_VBIOS_1010_0200_882_96005E0001": forged})
    ev = Evidence(kind="nvidia", report=report(vectors, "h100-545"), chain_pem=chain(vectors, "h100-545"))
    with serve_nvidia(fake):
        service = _service(fake.url, tmp_path / "c")
        got = gpu_collateral(service, ev, at=AT)
        with pytest.raises(CollateralError, match="does not verify to the pinned roots"):
            service.obtain("nvidia-rim", {"id": "NV_GPU_VBIOS_1010_0200_882_96005E0001"}, at=AT)
    assert got.driver_rim is None and got.vbios_rim is None  # neither cached nor used
    assert any("404" in n for n in got.notes)
    claims = verify_nvidia(ev.binary(), chain(vectors, "h100-545"), at=AT, collateral=got)
    assert claims.get("rim") == "unchecked" and claims.debug is True
    assert json.dumps(claims.to_json())  # the notes travel with the claims


def test_a_signature_over_other_bytes_is_refused(vectors: Path) -> None:
    # The VBIOS RIM's genuine signature moved onto the driver RIM's tag.
    from lxml import etree

    dsig = "{http://www.w3.org/2000/09/xmldsig#}Signature"
    driver = etree.fromstring(strip_signature((vectors / DRIVER).read_bytes()))
    signature = etree.fromstring((vectors / VBIOS).read_bytes()).find(dsig)
    driver.append(signature)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_rim(etree.tostring(driver), at=AT)


def test_collateral_fetch_gets_a_bundles_gpu_rims_and_lists_what_it_lacks(  # type: ignore[no-untyped-def]
    vectors: Path, sim_tee, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    gpu = {
        "kind": "nvidia",
        "report": base64.b64encode(report(vectors, "h100-545")).decode(),
        "chain": chain(vectors, "h100-545").decode(),
    }
    doc, _ = sim_gpu_bundle(sim_tee, [gpu])
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(doc)
    fake = FakeNvidia(
        rims={
            "NV_GPU_DRIVER_GH100_545.00": (vectors / DRIVER).read_bytes(),
            "NV_GPU_VBIOS_1010_0200_882_96005E0001": (vectors / VBIOS).read_bytes(),
        }
    )
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("JUPYTER_CC_OFFLINE", "0")
    at = ["--at", "2024-06-01T00:00:00Z"]
    with serve_nvidia(fake):
        monkeypatch.setenv("JUPYTER_CC_NVIDIA_RIM_URL", fake.url)
        monkeypatch.setenv("JUPYTER_CC_NVIDIA_OCSP_URL", fake.url)
        status = cli_main(["collateral", "fetch", str(bundle), *at])
        out, err = capsys.readouterr()
    # Both RIMs fetched (and judged to the pinned root before caching). The responder knows none
    # of NVIDIA's certificates, so the OCSP answers are missing: listed, status 1, one sentence.
    assert status == 1
    assert "NVIDIA RIM NV_GPU_DRIVER_GH100_545.00: fetched" in out
    assert "NVIDIA RIM NV_GPU_VBIOS_1010_0200_882_96005E0001: fetched" in out
    assert "missing: the GPU: no OCSP answer about" in out
    assert err.count("\n") == 1 and "could not be had" in err and "Traceback" not in err
    # Offline afterwards: the RIMs come from the cache; nothing is asked of the service.
    monkeypatch.setenv("JUPYTER_CC_OFFLINE", "1")
    hits = len(fake.hits)
    assert cli_main(["collateral", "fetch", str(bundle), *at, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)[str(bundle)]
    assert sorted(r["item"] for r in rows if r["origin"] == "cache") == [
        "NVIDIA RIM NV_GPU_DRIVER_GH100_545.00",
        "NVIDIA RIM NV_GPU_VBIOS_1010_0200_882_96005E0001",
    ]
    assert len(fake.hits) == hits


def test_collateral_fetch_of_a_bundle_with_nothing_to_fetch_is_one_sentence(  # type: ignore[no-untyped-def]
    sim_tee, tmp_path: Path, capsys
) -> None:
    doc, _ = sim_gpu_bundle(sim_tee, [])
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(doc)
    assert cli_main(["collateral", "fetch", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no collateral to fetch (only tdx, snp and NVIDIA GPUs)" in err
