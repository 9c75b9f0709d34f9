"""Every GPU of a bundle judged: NVIDIA evidence only, each for its own nonce, each with a verdict."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import Bundle, parse_bundle, verify_bundle
from jupyter_cc.collateral.evidence import with_collateral
from jupyter_cc.collateral.fetch import Client
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.collateral.settings import Settings
from jupyter_cc.errors import BindingError, FormatError, SignatureError
from jupyter_cc.policy import Policy, appraise
from tests.support.fake_nvidia import (
    BLOCKS,
    FakeNvidia,
    GpuPki,
    RimPki,
    gpu_entry,
    ocsp_pairs,
    serve_nvidia,
    synthetic_rims,
)
from tests.support.gpu_bundles import sim_gpu_bundle

NOW = datetime.now(timezone.utc)
REQUIRED = Policy.from_toml("allow_simulated = true\n[gpu]\nrequired = true\n")


@pytest.fixture(scope="module")
def pkis() -> tuple[GpuPki, RimPki]:
    return GpuPki(), RimPki()


def bundle(sim_tee: Any, entries: Any) -> Bundle:
    """A simulated CPU bundle binding ``entries(nonce)`` as its GPU list."""
    nonce = os.urandom(32)
    doc, _ = sim_gpu_bundle(sim_tee, entries(nonce), nonce=nonce)
    return parse_bundle(doc)


def test_a_second_invalid_gpu_refuses_the_bundle(sim_tee, pkis) -> None:  # type: ignore[no-untyped-def]
    gpu, _ = pkis

    def entries(nonce: bytes) -> list[dict[str, str]]:
        good = gpu_entry(gpu, gpu_nonce(nonce, 0))
        bad = gpu_entry(gpu, gpu_nonce(nonce, 1))
        raw = bytearray(base64.b64decode(bad["report"]))
        raw[60] ^= 1  # a measurement bit: the signature no longer covers it
        return [good, {**bad, "report": base64.b64encode(bytes(raw)).decode()}]

    with pytest.raises(SignatureError) as err:
        verify_bundle(bundle(sim_tee, entries), at=NOW, roots=gpu.roots())
    assert err.value.message.startswith("GPU 1: the GPU attestation report's signature does not verify")


def test_a_non_nvidia_entry_in_gpus_is_refused(sim_tee, pkis) -> None:  # type: ignore[no-untyped-def]
    def entries(nonce: bytes) -> list[dict[str, str]]:
        # A genuine (simulated) CPU report posing as the GPU.
        return [{"kind": "sim-snp", "report": base64.b64encode(sim_tee.mint(bytes(64))).decode()}]

    with pytest.raises(
        FormatError, match="GPU 0: the bundle's gpus list holds sim-snp evidence, not an NVIDIA"
    ):
        verify_bundle(bundle(sim_tee, entries), at=NOW, roots=pkis[0].roots())


@pytest.mark.parametrize("signed", ["another session", "another index"])
def test_gpu_evidence_for_another_nonce_or_index_is_refused(sim_tee, pkis, signed: str) -> None:  # type: ignore[no-untyped-def]
    gpu, _ = pkis

    def entries(nonce: bytes) -> list[dict[str, str]]:
        first = gpu_entry(gpu, gpu_nonce(nonce, 0))
        if signed == "another session":
            return [first, gpu_entry(gpu, gpu_nonce(os.urandom(32), 1))]
        return [first, gpu_entry(gpu, gpu_nonce(nonce, 0))]  # GPU 1 answers GPU 0's nonce

    with pytest.raises(BindingError, match=r"^GPU 1: the GPU report answers nonce"):
        verify_bundle(bundle(sim_tee, entries), at=NOW, roots=gpu.roots())


def _service(url: str, cache: Path, rim: RimPki) -> CollateralService:
    settings = Settings(nvidia_rim=url, nvidia_ocsp=url, cache=cache)
    client = Client(None, timeout=2, backoff=0.01, sleep=lambda _: None)
    return CollateralService(settings, client=client, nvidia_rim_roots=rim.roots())


def test_an_eight_gpu_bundle_is_judged_gpu_by_gpu(sim_tee, pkis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gpu, rim = pkis
    driver, vbios = synthetic_rims(rim)
    fake = FakeNvidia(
        rims={"NV_GPU_DRIVER_GH100_545.00": driver, "NV_GPU_VBIOS_1010_0200_882_96005E0001": vbios},
        next_update=NOW + timedelta(days=7),
    )
    fake.know(ocsp_pairs(gpu, rim))
    got = bundle(sim_tee, lambda nonce: [gpu_entry(gpu, gpu_nonce(nonce, i)) for i in range(8)])
    with serve_nvidia(fake):
        evidence, _ = with_collateral(got.evidence, at=NOW, service=_service(fake.url, tmp_path, rim))
    claims = verify_bundle(replace(got, evidence=evidence), at=NOW, roots=gpu.roots())
    assert len(claims.gpus) == 8 and claims.gpu == claims.gpus[0]
    assert {(g.get("rim"), g.get("revocation"), g.debug) for g in claims.gpus} == {
        ("verified", "checked", False)
    }
    policy = Policy.from_toml(
        'allow_simulated = true\n[gpu]\nrequired = true\ncount = 8\narch = ["hopper"]\n'
        'min_driver = "545.00"\nmin_vbios = "96.00.5e.00.01"\n'
    )
    assert appraise(claims, policy).passed
    assert [g["rim"] for g in claims.to_json()["gpus"]] == ["verified"] * 8
    # One GPU whose RIMs could not be had: that GPU, and only it, fails.
    gpus = list(claims.gpus)
    gpus[5] = Claims(
        kind="nvidia",
        simulated=False,
        debug=True,
        report_data=gpus[5].report_data,
        details={
            **gpus[5].details,
            "rim": "unchecked",
            "revocation": "unchecked",
            "collateral_notes": ["offline"],
        },
    )
    verdict = appraise(replace(claims, gpus=tuple(gpus)), policy)
    assert [r.rule for r in verdict.reasons] == ["gpu[5].debug", "gpu[5].rim", "gpu[5].revocation"]
    assert "offline" in str(verdict.reasons[1])
    lenient = Policy.from_toml(
        "allow_simulated = true\n[gpu]\nrequired = true\nallow_unverified_rim = true\n"
    )
    assert appraise(replace(claims, gpus=tuple(gpus)), lenient).passed
    # count: exactly, or at least.
    assert [
        r.rule
        for r in appraise(claims, Policy.from_toml("allow_simulated = true\n[gpu]\ncount = 4\n")).reasons
    ] == ["gpu.count"]
    assert appraise(claims, Policy.from_toml("allow_simulated = true\n[gpu]\ncount = { min = 4 }\n")).passed
    newer = Policy.from_toml('allow_simulated = true\n[gpu]\nmin_driver = "550.54"\nppcie = true\n')
    rules = [r.rule for r in appraise(claims, newer).reasons]
    assert rules == [f"gpu[{i}].{rule}" for i in range(8) for rule in ("min_driver", "ppcie")]


def test_no_gpu_under_gpu_required_names_the_rule(sim_tee) -> None:  # type: ignore[no-untyped-def]
    claims = verify_bundle(bundle(sim_tee, lambda nonce: []), at=NOW)
    assert [str(r) for r in appraise(claims, REQUIRED).reasons] == [
        "gpu.required: expected a verified confidential GPU, observed no GPU evidence"
    ]
    assert BLOCKS  # the synthetic measurements the RIMs of fake_nvidia cover


def test_malformed_report_unknown_architecture_and_another_vbios_rim(sim_tee, pkis) -> None:  # type: ignore[no-untyped-def]
    gpu, rim = pkis

    def truncated(nonce: bytes) -> list[dict[str, str]]:
        entry = gpu_entry(gpu, gpu_nonce(nonce, 0))
        return [{**entry, "report": base64.b64encode(base64.b64decode(entry["report"])[:80]).decode()}]

    with pytest.raises(FormatError, match=r"^GPU 0: the SPDM MEASUREMENTS response ends inside"):
        verify_bundle(bundle(sim_tee, truncated), at=NOW, roots=gpu.roots())
    # A Blackwell-named chain: genuine to its pinned root, but not an architecture we appraise.
    from tests.support.fake_nvidia import _cert

    other = GpuPki()
    other.leaf = _cert("GB100 A01 GSP FMC LF", other.brom, ca=False)
    with pytest.raises(
        FormatError, match="GPU 0: the GPU is a GB100, an architecture this verifier does not support"
    ):
        verify_bundle(
            bundle(sim_tee, lambda nonce: [gpu_entry(other, gpu_nonce(nonce, 0))]),
            at=NOW,
            roots=other.roots(),
        )
    # A properly signed VBIOS RIM, but for another VBIOS than the GPU reports.
    from jupyter_cc.attest.nvidia import verify_nvidia
    from jupyter_cc.attest.nvidia_rim import GpuCollateral, MeasurementError
    from tests.support.fake_nvidia import make_report

    driver, _ = synthetic_rims(rim)
    _, vbios = synthetic_rims(rim, vbios_version="96.00.9F.00.01")
    with pytest.raises(
        MeasurementError, match=r"VBIOS 96\.00\.5e\.00\.01 is not the VBIOS RIM's 96\.00\.9F\.00\.01"
    ):
        verify_nvidia(
            make_report(gpu.leaf, bytes(32), BLOCKS),
            gpu.chain_pem(),
            at=NOW,
            roots=gpu.roots(),
            collateral=GpuCollateral(driver, vbios, rim_roots=rim.roots()),
        )


def test_protected_pcie_mode_is_its_own_mode_and_needs_ppcie(pkis) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.attest.nvidia import verify_nvidia
    from tests.support.fake_nvidia import make_report

    gpu, _ = pkis
    report = make_report(gpu.leaf, bytes(32), BLOCKS, ppcie=b"\xaa")
    claims = verify_nvidia(report, gpu.chain_pem(), at=NOW, roots=gpu.roots())
    assert (claims.get("cc_mode"), claims.get("ppcie")) == ("ppcie", "aa")
    lenient = "[gpu]\nallow_unverified_rim = true\n"
    assert [r.rule for r in appraise(claims, Policy.from_toml(lenient)).reasons] == ["gpu[0].cc_mode"]
    assert appraise(claims, Policy.from_toml(lenient + "ppcie = true\n")).passed
    off = verify_nvidia(
        make_report(gpu.leaf, bytes(32), BLOCKS, ppcie=b"\x55"), gpu.chain_pem(), at=NOW, roots=gpu.roots()
    )
    assert off.get("cc_mode") == "on"
    assert [r.rule for r in appraise(off, Policy.from_toml(lenient + "ppcie = true\n")).reasons] == [
        "gpu[0].ppcie"
    ]
