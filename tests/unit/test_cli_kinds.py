"""``jupyter-cc verify`` for every evidence kind on the real vectors: claims, exit codes, reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_cc.cli import main

TDX_AT = "2023-07-01T00:00:00Z"
MAA_AT = "2024-12-31T01:00:00Z"


def verify(capsys, *argv: str) -> tuple[int, dict, str]:  # type: ignore[no-untyped-def,type-arg]
    status = main(["verify", *argv, "--json"])
    out, err = capsys.readouterr()
    return status, json.loads(out), err


def test_tdx_quote_claims(vectors: Path) -> None:
    """What the real quote says once its signatures and PCK chain verify to Intel's pinned root
    (the CLI adds the TCB evaluation, for which it needs collateral: see the next test)."""
    from datetime import datetime

    from jupyter_cc.attest.tdx import parse_quote, verify_quote

    quote = parse_quote((vectors / "tdx/spr-e4-v4.quote.bin").read_bytes())
    claims = verify_quote(quote, at=datetime.fromisoformat(TDX_AT.replace("Z", "+00:00"))).to_json()
    assert claims["tee"] == "tdx" and claims["debug"] is False
    assert claims["mrtd"].startswith("6363b8043668a3ad")
    assert claims["report_data"].startswith("6c62dec1b8191749")
    assert len(claims["rtmr"]) == 4
    assert claims["quote_version"] == 4
    assert claims["fmspc"] == "50806f000000"
    for key in ("td_attributes", "tee_tcb_svn"):
        assert key in claims
    assert "tcb_status" not in claims  # only with collateral


def test_tdx_quote_offline_without_collateral_says_what_is_missing(  # type: ignore[no-untyped-def]
    capsys, vectors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No verdict without TCB collateral: offline with an empty cache, the CLI names what is
    missing and how to bring it, and exits 1 (fail closed)."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))  # an empty collateral cache
    status, doc, err = verify(
        capsys, "tdx", str(vectors / "tdx/spr-e4-v4.quote.bin"), "--at", TDX_AT, "--offline"
    )
    assert status == 1 and not doc["verified"] and not doc["passed"]
    assert "TCB info for FMSPC 50806f000000" in doc["errors"][0]
    assert "jupyter-cc collateral import" in err and "Traceback" not in err


def test_tdx_collateral_finds_no_tcb_level_as_go_tdx_guest_does(capsys, vectors: Path) -> None:  # type: ignore[no-untyped-def]
    tdx = vectors / "tdx"
    collateral = [
        "--tcb-info",
        str(tdx / "tcb-info-50806f000000.json"),
        "--qe-identity",
        str(tdx / "qe-identity.json"),
        "--collateral-chain",
        str(tdx / "tcb-info-issuer-chain.pem"),
        "--crl",
        str(tdx / "pck-platform-crl.der"),
        "--crl",
        str(tdx / "root-ca-crl.der"),
    ]
    status, doc, err = verify(capsys, "tdx", str(tdx / "spr-e4-v4.quote.bin"), "--at", TDX_AT, *collateral)
    assert status == 1 and not doc["verified"]
    assert "no TCB level in the TCB info matches" in doc["errors"][0]
    assert "tcb check failed" in err
    # Without a pinned time the collateral is stale.
    status, doc, _ = verify(capsys, "tdx", str(tdx / "spr-e4-v4.quote.bin"), *collateral)
    assert status == 1 and "stale" in doc["errors"][0]
    # Half the collateral is a usage error.
    status, doc, err = verify(capsys, "tdx", str(tdx / "spr-e4-v4.quote.bin"), *collateral[:2])
    assert status == 2 and "--tcb-info given without" in err


def test_az_snp_vtpm(capsys, vectors: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    azure = vectors / "azure"
    args = [
        "az-snp-vtpm",
        str(azure / "snp-vtpm.hcl-report.bin"),
        "--vcek",
        str(azure / "snp-vtpm.vcek-chain.pem"),
    ]
    status, doc, _ = verify(capsys, *args, "--at", "2024-06-01T00:00:00Z")
    assert status == 1 and doc["verified"]  # no AMD CRL given: revocation unchecked, refused
    assert [r.split(":")[0] for r in doc["reasons"]] == ["collateral.revocation"]
    lax = tmp_path / "unchecked-ok.toml"
    lax.write_text("[collateral]\nallow_unchecked_revocation = true\n")
    status, doc, _ = verify(capsys, *args, "--at", "2024-06-01T00:00:00Z", "--policy", str(lax))
    assert status == 0 and doc["passed"]
    claims = doc["claims"]
    assert claims["tee"] == "az-snp-vtpm"
    assert {k["kid"] for k in claims["runtime"]["keys"]} >= {"HCLAkPub", "HCLEkPub"}
    assert "vm-configuration" in claims["runtime"] and "user-data" in claims["runtime"]
    assert claims["product"] == "Milan" and claims["report_version"] == 2
    assert claims["measurement"].startswith("9ac48fcac8a2d88a")


def test_az_snp_vtpm_published_tpm_quote_is_not_signed_by_this_reports_key(capsys, vectors: Path) -> None:  # type: ignore[no-untyped-def]
    # The vectors README says this quote verifies with HCLAkPub; it does not (neither runtime key
    # opens its signature), so a correct verifier refuses it. See the issue note.
    azure = vectors / "azure"
    status, doc, err = verify(
        capsys,
        "az-snp-vtpm",
        str(azure / "snp-vtpm.hcl-report.bin"),
        "--vcek",
        str(azure / "snp-vtpm.vcek-chain.pem"),
        "--tpm-quote",
        str(azure / "snp-vtpm.tpm-quote.msg"),
        "--tpm-sig",
        str(azure / "snp-vtpm.tpm-quote.sig"),
        "--at",
        "2024-06-01T00:00:00Z",
    )
    assert status == 1 and "signature check failed" in err
    assert "TPM quote" in doc["errors"][0]


def test_az_tdx_vtpm_refuses_a_quote_of_another_machine(capsys, vectors: Path) -> None:  # type: ignore[no-untyped-def]
    status, doc, err = verify(
        capsys,
        "az-tdx-vtpm",
        str(vectors / "azure/tdx-vtpm.hcl-report.bin"),
        "--quote",
        str(vectors / "tdx/spr-e4-v4.quote.bin"),
        "--at",
        TDX_AT,
    )
    assert status == 1 and "binding check failed" in err
    assert "REPORTDATA" in doc["errors"][0]


def test_maa_token(capsys, vectors: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = [
        "maa",
        str(vectors / "maa/sevsnpvm-token.jwt"),
        "--jwks",
        str(vectors / "maa/sharedeus2-jwks.json"),
    ]
    issuer = ["--issuer", "https://sharedeus2.eus2.attest.azure.net"]
    status, doc, _ = verify(capsys, *args, *issuer, "--at", MAA_AT)
    assert status == 0 and doc["passed"]
    claims = doc["claims"]
    assert claims["tee"] == "maa"
    assert claims["x-ms-isolation-tee"]["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["compliance_status"] == "azure-compliant-cvm"
    # A policy on the nested Azure claims passes; one asking for TDX does not.
    policy = tmp_path / "azure.toml"
    policy.write_text(
        'tee = ["maa"]\n[azure]\ncompliance_status = "azure-compliant-cvm"\nsecure_boot = true\n'
    )
    status, doc, _ = verify(capsys, *args, "--at", MAA_AT, "--policy", str(policy))
    assert status == 0 and doc["passed"]
    policy.write_text('tee = ["az-tdx-vtpm"]\n')
    status, doc, _ = verify(capsys, *args, "--at", MAA_AT, "--policy", str(policy))
    assert status == 1 and doc["reasons"] == ["tee: expected one of ['az-tdx-vtpm'], observed maa"]
    # Expired without --at; another issuer refused.
    status, doc, err = verify(capsys, *args)
    assert status == 1 and "expired" in err
    status, doc, err = verify(capsys, *args, "--issuer", "https://evil.example", "--at", MAA_AT)
    assert status == 1 and not doc["verified"]


def test_maa_token_with_one_changed_character_is_invalid(capsys, vectors: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = (vectors / "maa/sevsnpvm-token.jwt").read_text().strip()
    header, payload, sig = token.split(".")
    middle = len(payload) // 2
    swapped = "B" if payload[middle] != "B" else "C"
    (tmp_path / "t.jwt").write_text(f"{header}.{payload[:middle]}{swapped}{payload[middle + 1 :]}.{sig}")
    status, doc, _ = verify(
        capsys, "maa", str(tmp_path / "t.jwt"), "--jwks", str(vectors / "maa/sharedeus2-jwks.json")
    )
    assert status == 1 and not doc["verified"]


def test_nvidia_report(capsys, vectors: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    nvidia = vectors / "nvidia"
    args = ["nvidia", str(nvidia / "h100.report.hex"), "--chain", str(nvidia / "h100.chain.pem")]
    status, doc, _ = verify(capsys, *args, "--root", str(nvidia / "device-identity-root.pem"))
    # Genuine, but offline no RIM can be had: the default policy refuses an unappraised GPU.
    assert status == 1 and doc["verified"] and not doc["passed"]
    assert any(r.startswith("gpu[0].rim: ") for r in doc["reasons"])
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("[gpu]\nallow_unverified_rim = true\n")
    args += ["--policy", str(lenient)]
    status, doc, _ = verify(capsys, *args)
    assert status == 0 and doc["passed"], doc
    claims = doc["claims"]
    assert claims["measurements"] == 64
    assert len(claims["fwid"]) == 96
    nonce = claims["nonce"]
    assert run_status(capsys, *args, "--nonce", nonce) == 0
    assert run_status(capsys, *args, "--nonce", "00" * 32) == 1


def test_gpu_required_policy_refuses_cpu_evidence_alone(capsys, vectors: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "gpu.toml"
    # Unchecked revocation allowed (no AMD CRL in the vectors): the GPU rule is what is judged.
    policy.write_text(
        'name = "gpu"\n[collateral]\nallow_unchecked_revocation = true\n[gpu]\nrequired = true\n'
    )
    status, doc, _ = verify(
        capsys,
        "snp",
        str(vectors / "snp/milan-v2.report.hex"),
        "--vcek",
        str(vectors / "snp/milan-v2.vcek.der"),
        "--chain",
        str(vectors / "amd/ask_ark_milan.pem"),
        "--at",
        "2024-06-01T00:00:00Z",
        "--policy",
        str(policy),
    )
    assert status == 1 and doc["verified"] and not doc["passed"]
    assert doc["reasons"] == ["gpu.required: expected a verified confidential GPU, observed no GPU evidence"]


def run_status(capsys, *argv: str) -> int:  # type: ignore[no-untyped-def]
    status = main(["verify", *argv])
    capsys.readouterr()
    return status


@pytest.mark.parametrize("kind", ["tdx", "az-snp-vtpm", "az-tdx-vtpm", "nvidia", "sim-snp", "snp"])
def test_garbage_input_for_each_kind_fails_cleanly(capsys, vectors: Path, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 3)
    extra = {
        "az-snp-vtpm": ["--vcek", str(vectors / "azure/snp-vtpm.vcek-chain.pem")],
        "az-tdx-vtpm": ["--quote", str(vectors / "tdx/spr-e4-v4.quote.bin")],
        "nvidia": ["--chain", str(vectors / "nvidia/h100.chain.pem")],
        "snp": [
            "--vcek",
            str(vectors / "snp/milan-v2.vcek.der"),
            "--chain",
            str(vectors / "amd/ask_ark_milan.pem"),
        ],
    }.get(kind, [])
    status = main(["verify", kind, str(junk), *extra])
    _, err = capsys.readouterr()
    assert status == 1
    assert err.startswith("jupyter-cc: format check failed: ")
    assert err.count("\n") == 1
