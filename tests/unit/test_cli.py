"""``jupyter-cc verify`` as the contract says: kinds, flags, --json shape, exit codes, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.evidence import serialize_bundle
from jupyter_cc.cli import main
from jupyter_cc.decoding import b64url_encode

AT = "2024-06-01T00:00:00Z"


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def snp_args(vectors: Path, report: str = "snp/milan-v2.report.hex") -> list[str]:
    return [
        "verify",
        "snp",
        str(vectors / report),
        "--vcek",
        str(vectors / "snp/milan-v2.vcek.der"),
        "--chain",
        str(vectors / "amd/ask_ark_milan.pem"),
        "--at",
        AT,
    ]


def unchecked_ok(tmp_path: Path) -> list[str]:
    """A policy allowing unchecked revocation: the vectors hold no AMD CRL for these reports."""
    path = tmp_path / "unchecked-ok.toml"
    path.write_text('name = "unchecked-revocation-ok"\n[collateral]\nallow_unchecked_revocation = true\n')
    return ["--policy", str(path)]


def test_snp_json_has_the_contract_shape(capsys, vectors, tmp_path) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = run(capsys, *snp_args(vectors), "--json")
    assert status == 1  # the default policy: no CRL was given, so revocation is unchecked
    assert json.loads(out)["reasons"][0].startswith("collateral.revocation: expected revocation checked")
    assert json.loads(out)["claims"]["revocation"] == "unchecked"
    status, out, _ = run(capsys, *snp_args(vectors), "--json", *unchecked_ok(tmp_path))
    assert status == 0
    doc = json.loads(out)
    assert set(doc) >= {"kind", "verified", "passed", "claims", "reasons", "errors"}
    assert doc["kind"] == "snp"
    assert doc["verified"]
    assert doc["passed"]
    claims = doc["claims"]
    for key in ("tee", "simulated", "debug", "report_data", "measurement", "host_data", "chip_id", "vmpl"):
        assert key in claims
    for key in ("policy", "reported_tcb", "product", "report_version", "signing_key"):
        assert key in claims
    assert claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims["signing_key"] == "vcek"


def test_report_data_flag(capsys, vectors, tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = unchecked_ok(tmp_path)
    assert run(capsys, *snp_args(vectors), "--report-data", "d447b55d197491bf", *policy)[0] == 0
    status, _, err = run(capsys, *snp_args(vectors), "--report-data", "00" * 64, *policy)
    assert status == 1
    assert "binding check failed" in err


def test_debug_report_is_rejected_by_the_default_policy(capsys, vectors) -> None:  # type: ignore[no-untyped-def]
    args = snp_args(vectors, "snp/milan-v2-debug.report.bin")
    args[4] = str(vectors / "snp/milan-v2-debug.vcek.der")
    status, out, _ = run(capsys, *args, "--json")
    doc = json.loads(out)
    assert status == 1
    assert doc["verified"]
    assert not doc["passed"]
    assert doc["reasons"][0].startswith("allow_debug")


def test_invalid_evidence_exits_1_with_one_sentence(capsys, vectors, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tampered = tmp_path / "tampered.bin"
    data = bytearray(bytes.fromhex((vectors / "snp/milan-v2.report.hex").read_text()))
    data[0x90] ^= 1
    tampered.write_bytes(bytes(data))
    args = snp_args(vectors)
    args[2] = str(tampered)
    status, out, err = run(capsys, *args, "--json")
    assert status == 1
    doc = json.loads(out)
    assert doc["verified"] is False
    assert doc["passed"] is False
    assert "signature" in doc["errors"][0]
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_wrong_chain_names_the_product(capsys, vectors) -> None:  # type: ignore[no-untyped-def]
    args = snp_args(vectors)
    args[6] = str(vectors / "amd/ask_ark_genoa.pem")
    status, _, err = run(capsys, *args)
    assert status == 1
    assert "chain check failed" in err


def test_expired_certificates_without_at(capsys, vectors) -> None:  # type: ignore[no-untyped-def]
    # The public TCB signing and VLEK samples expire; the Milan VCEK is fine today, so use a
    # time far ahead to show what an expired certificate looks like without --at.
    args = snp_args(vectors)
    args[-1] = "2099-01-01T00:00:00Z"
    status, _, err = run(capsys, *args)
    assert status == 1
    assert "expired" in err
    assert "--at" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify", "snp", "/nonexistent/report.bin", "--vcek", "x"], "does not exist"),
        (["verify", "snp", "REPORT", "--vcek", "VCEK"], "no ASK/ARK chain"),
        (["verify", "snp", "REPORT", "--vcek", "GARBAGE", "--chain", "CHAIN"], "readable X.509"),
        (["verify", "snp", "REPORT", "--at", "yesterday"], "ISO 8601"),
        (["verify", "snp", "REPORT", "--policy", "/nonexistent.toml"], "cannot read policy file"),
        (["verify", "snp", "TEXT"], "neither hex nor base64"),
    ],
)
def test_unreadable_input_exits_2(capsys, vectors, tmp_path, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "GARBAGE").write_bytes(b"not a certificate")
    (tmp_path / "TEXT").write_text("hello world, this is not evidence")
    subst = {
        "REPORT": str(vectors / "snp/milan-v2.report.hex"),
        "VCEK": str(vectors / "snp/milan-v2.vcek.der"),
        "CHAIN": str(vectors / "amd/ask_ark_milan.pem"),
        "GARBAGE": str(tmp_path / "GARBAGE"),
        "TEXT": str(tmp_path / "TEXT"),
    }
    status, _, err = run(capsys, *[subst.get(a, a) for a in argv])
    assert status == 2
    assert message in err
    assert err.startswith("jupyter-cc: error: ")
    assert "Traceback" not in err


def test_wrong_kind_is_a_format_failure(capsys, vectors) -> None:  # type: ignore[no-untyped-def]
    args = snp_args(vectors)
    args[2] = str(vectors / "tdx/spr-e4-v4.quote.bin")
    status, _, err = run(capsys, *args)
    assert status == 1
    assert "1184 bytes" in err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["verify", "sgx", "file"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["verify"])
    assert info.value.code == 2


def test_sim_mint_then_verify_under_each_policy(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "sim.bin"
    assert run(capsys, "sim", "mint", "-o", str(report), "--report-data", "ab" * 64)[0] == 0
    status, out, _ = run(capsys, "verify", "sim-snp", str(report), "--json")
    doc = json.loads(out)
    assert status == 1
    assert doc["verified"]
    assert not doc["passed"]
    assert doc["claims"]["simulated"] is True
    policy = tmp_path / "sim.toml"
    policy.write_text('name = "demo"\nallow_simulated = true\n')
    status, out, _ = run(capsys, "verify", "sim-snp", str(report), "--policy", str(policy))
    assert status == 0
    assert "SIMULATED — not a hardware TEE" in out
    assert "policy demo: PASSED" in out


def test_sim_mint_refuses_a_missing_folder_and_leaves_nothing(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run(capsys, "sim", "mint", "-o", str(tmp_path / "no" / "x.bin"))
    assert status == 2
    assert "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def _bundle(sim_tee, nonce: bytes, host_key: bytes, bound_nonce: bytes | None = None) -> bytes:  # type: ignore[no-untyped-def]
    report = sim_tee.mint(expected_report_data(bound_nonce or nonce, host_key))
    return serialize_bundle(
        "sim-snp",
        {"report": b64url_encode(report)},
        nonce=nonce,
        host_key_sha256=host_key,
        source="simulated",
        collected_at="2026-01-01T00:00:00Z",
    )


def test_bundle_verifies_its_binding(capsys, tmp_path, sim_tee) -> None:  # type: ignore[no-untyped-def]
    nonce, host_key = os.urandom(32), os.urandom(32)
    path = tmp_path / "bundle.json"
    path.write_bytes(_bundle(sim_tee, nonce, host_key))
    policy = tmp_path / "p.toml"
    policy.write_text("allow_simulated = true\n")
    base = ["verify", "bundle", str(path), "--policy", str(policy)]
    assert run(capsys, *base, "--nonce", nonce.hex(), "--host-key-sha256", host_key.hex())[0] == 0
    status, _, err = run(capsys, *base, "--nonce", os.urandom(32).hex())
    assert status == 1
    assert "nonce" in err
    status, _, err = run(capsys, *base, "--host-key-sha256", os.urandom(32).hex())
    assert status == 1
    assert "host key" in err
    # A report bound to another nonce than the bundle claims.
    path.write_bytes(_bundle(sim_tee, nonce, host_key, bound_nonce=os.urandom(32)))
    status, _, err = run(capsys, *base)
    assert status == 1
    assert "REPORT_DATA" in err


@pytest.mark.parametrize(
    "content",
    [b"{}", b"not json", b'{"format": "jupyter-cc-evidence", "version": 2}', b"[1,2]"],
)
def test_malformed_bundles_exit_1(capsys, tmp_path, content: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bundle.json"
    path.write_bytes(content)
    status, _, err = run(capsys, "verify", "bundle", str(path))
    assert status == 1
    assert "bundle" in err


def test_console_script_never_prints_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(700))
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_cc", "verify", "snp", str(junk), "--vcek", str(junk)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (1, 2)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("jupyter-cc:")


def test_snp_without_crl_looks_for_amds_crl_and_says_why_revocation_went_unchecked(  # type: ignore[no-untyped-def]
    capsys, vectors, tmp_path, monkeypatch
) -> None:
    """A VCEK given on the command line is not a CRL: verify looks for AMD's CRL in the cache
    (and at KDS unless offline). Offline with none cached, revocation stays unchecked, the
    default policy refuses, and a note names what was missing and how to bring it."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))  # an empty collateral cache
    status, out, err = run(capsys, *snp_args(vectors), "--offline")
    assert status == 1
    assert "failed collateral.revocation" in out
    assert "note: revocation not checked: offline" in err and "Milan VCEK cert_chain" in err
    assert "jupyter-cc collateral import" in err and "Traceback" not in err
    # Unreachable KDS (online): the same refusal, the note names the service that failed.
    monkeypatch.setenv("JUPYTER_CC_OFFLINE", "0")
    monkeypatch.setenv("JUPYTER_CC_AMD_KDS_URL", "http://127.0.0.1:9")
    status, out, err = run(capsys, *snp_args(vectors))
    assert status == 1 and "failed collateral.revocation" in out
    assert "note: revocation not checked:" in err and "127.0.0.1:9" in err
