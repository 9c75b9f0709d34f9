"""``jupyter-cc policy new|check|explain``, and the MAA attack: every stated rule is judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_cc.cli import main

MAA_AT = "2024-12-31T01:00:00Z"
MAA_MEASUREMENT = (
    "036fc22b517981a791f7f8b89d634a00e964f6b0dfabc568090eb4393d6026f96aa6b7cca2759f29e521469f1189c00c"
)


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def maa_args(vectors: Path) -> list[str]:
    return [
        str(vectors / "maa/sevsnpvm-token.jwt"),
        "--jwks",
        str(vectors / "maa/sharedeus2-jwks.json"),
        "--at",
        MAA_AT,
    ]


# --- the attack: SNP rules on an MAA token were skipped -------------------------------------


@pytest.mark.vectors
def test_maa_token_is_refused_by_the_snp_rules_it_does_not_meet(
    capsys, vectors: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "maa.toml"
    policy.write_text(f'tee = ["maa"]\n[snp]\nmeasurement = ["{"00" * 48}"]\nmin_tcb = {{ snp = 250 }}\n')
    status, out, err = run(capsys, "verify", "maa", *maa_args(vectors), "--policy", str(policy), "--json")
    doc = json.loads(out)
    assert status == 1, err
    assert doc["verified"] is True and doc["passed"] is False
    assert f"snp.measurement: expected one of ['{'00' * 48}'], observed {MAA_MEASUREMENT}" in doc["reasons"]
    assert "snp.min_tcb.snp: expected >= 250, observed 21" in doc["reasons"]
    # The same policy with the token's own values passes: the rules are judged, not refused.
    policy.write_text(
        f'tee = ["maa"]\n[snp]\nmeasurement = ["{MAA_MEASUREMENT}"]\nmin_tcb = {{ snp = 21 }}\n'
    )
    status, out, err = run(capsys, "verify", "maa", *maa_args(vectors), "--policy", str(policy))
    assert status == 0, err


@pytest.mark.vectors
def test_a_policy_whose_snp_rules_maa_tokens_cannot_meet_is_refused_at_load(
    capsys, vectors: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "maa.toml"
    policy.write_text('tee = ["maa"]\n[snp]\nproduct = ["Milan"]\n')
    status, _, err = run(capsys, "verify", "maa", *maa_args(vectors), "--policy", str(policy))
    assert status == 2
    assert "[snp] product cannot be judged for evidence kind maa" in err
    assert "Traceback" not in err


# --- policy new / check / explain --------------------------------------------------------------


def _new(capsys, tmp_path: Path, *argv: str) -> tuple[int, Path, str]:  # type: ignore[no-untyped-def]
    out = tmp_path / "p.toml"
    status, _, err = run(capsys, "policy", "new", *argv, "-o", str(out))
    return status, out, err


@pytest.mark.vectors
@pytest.mark.parametrize(
    ("argv", "section", "pinned"),
    [
        (
            [
                "--from",
                "snp/milan-v2.report.hex",
                "--kind",
                "snp",
                "--vcek",
                "snp/milan-v2.vcek.der",
                "--chain",
                "amd/ask_ark_milan.pem",
            ],
            "snp",
            ["measurement", "host_data", "vmpl", "min_tcb", "product"],
        ),
        (
            [
                "--from",
                "tdx/spr-e4-v4.quote.bin",
                "--kind",
                "tdx",
                "--at",
                "2023-07-01T00:00:00Z",
                "--crl",
                "tdx/root-ca-crl.der",
                "--crl",
                "tdx/pck-platform-crl.der",
            ],
            "tdx",
            ["mrtd", "rtmr"],
        ),
        (
            [
                "--from",
                "azure/snp-vtpm.hcl-report.bin",
                "--kind",
                "az-snp-vtpm",
                "--vcek",
                "azure/snp-vtpm.vcek-chain.pem",
            ],
            "snp",
            ["measurement", "host_data", "vmpl", "min_tcb", "product"],
        ),
        (
            [
                "--from",
                "maa/sevsnpvm-token.jwt",
                "--kind",
                "maa",
                "--jwks",
                "maa/sharedeus2-jwks.json",
                "--at",
                MAA_AT,
            ],
            "snp",
            ["measurement", "host_data", "vmpl", "min_tcb"],
        ),
    ],
)
def test_policy_new_pins_real_evidence_and_check_passes_it(
    capsys, vectors: Path, tmp_path: Path, argv: list[str], section: str, pinned: list[str]
) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.policy import Policy

    argv = [str(vectors / a) if "/" in a and not a.startswith("20") else a for a in argv]
    status, out, err = _new(capsys, tmp_path, *argv)
    assert status == 0, err
    text = out.read_text()
    policy = Policy.load(out)
    kind = argv[argv.index("--kind") + 1]
    assert policy.tee == (kind,)
    stated = {k.split(".")[1] for k in policy.stated() if k.startswith(f"{section}.")}
    assert {s.split(".")[0] for s in stated} == set(pinned)
    assert all(f"{p} = " in text for p in pinned)
    assert text.count("\n# ") >= len(pinned)  # a comment per rule
    check = ["policy", "check", str(out), argv[1], *argv[2:]]
    if section == "snp" and kind != "maa":
        # No AMD CRL in the vectors: the evidence says revocation: unchecked, which the written
        # policy (like every policy) refuses; checked here under that policy plus the opt-out.
        assert "revocation: unchecked" in err
        status, stdout, _ = run(capsys, *check)
        assert status == 1 and "FAIL  collateral.revocation" in stdout
        lax = tmp_path / "unchecked-ok.toml"
        lax.write_text(text + "\n[collateral]\nallow_unchecked_revocation = true\n")
        check[2] = str(lax)
    status, stdout, err = run(capsys, *check)
    assert status == 0, err
    assert "PASSED" in stdout and "FAIL" not in stdout
    status, stdout, _ = run(capsys, "policy", "explain", str(out))
    assert status == 0 and "WARNING" not in stdout


@pytest.mark.vectors
def test_policy_check_shows_each_rule_with_expected_and_observed(
    capsys, vectors: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'name = "strict"\ntee = ["maa"]\n[snp]\nmeasurement = ["{"00" * 48}"]\n'
        "vmpl = 0\nmin_tcb = { snp = 250 }\n"
    )
    status, out, _ = run(capsys, "policy", "check", str(policy), "--kind", "maa", *maa_args(vectors))
    assert status == 1
    assert f"  FAIL  snp.measurement: expected one of ['{'00' * 48}'], observed {MAA_MEASUREMENT}" in out
    assert "  pass  snp.vmpl: expected 0, observed 0" in out
    assert "  FAIL  snp.min_tcb.snp: expected >= 250, observed 21" in out
    status, out, _ = run(
        capsys, "policy", "check", str(policy), "--kind", "maa", *maa_args(vectors), "--json"
    )
    doc = json.loads(out)
    assert status == 1 and doc["passed"] is False
    assert {r["rule"]: r["passed"] for r in doc["results"][0]["rules"]}["snp.vmpl"] is True


def test_policy_new_check_explain_on_the_simulated_tee_and_a_bundle(capsys, tmp_path: Path, sim_tee) -> None:  # type: ignore[no-untyped-def]
    import os

    from jupyter_cc.attest.binding import expected_report_data
    from jupyter_cc.attest.evidence import serialize_bundle
    from jupyter_cc.decoding import b64url_encode

    report = tmp_path / "sim.bin"
    assert run(capsys, "sim", "mint", "-o", str(report))[0] == 0
    status, policy, err = _new(capsys, tmp_path, "--from", str(report), "--kind", "sim-snp")
    assert status == 0, err
    text = policy.read_text()
    assert "allow_simulated = true" in text and "SIMULATED" in text
    assert run(capsys, "policy", "check", str(policy), str(report), "--kind", "sim-snp")[0] == 0
    status, out, _ = run(capsys, "policy", "explain", str(policy))
    assert status == 0 and "SIMULATED" in out and "launch measurement is" in out
    # A guest agent's bundle: --kind absent.
    nonce, host_key = os.urandom(32), os.urandom(32)
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(
        serialize_bundle(
            "sim-snp",
            {"report": b64url_encode(sim_tee.mint(expected_report_data(nonce, host_key)))},
            nonce=nonce,
            host_key_sha256=host_key,
            source="simulated",
            collected_at="2026-01-01T00:00:00Z",
        )
    )
    out2 = tmp_path / "b.toml"
    assert (
        run(capsys, "policy", "new", "--from", str(bundle), "-o", str(out2), "--nonce", nonce.hex())[0] == 0
    )
    assert 'tee = ["sim-snp"]' in out2.read_text()
    assert (
        run(capsys, "policy", "check", str(out2), str(bundle), str(report), "--kind", "sim-snp")[0] == 2
    )  # a bundle is not a report: unreadable input
    assert run(capsys, "policy", "check", str(out2), str(bundle))[0] == 0
    # A debug report: refused unless --allow-debug, and nothing is written.
    debug = tmp_path / "debug.bin"
    assert run(capsys, "sim", "mint", "-o", str(debug), "--debug")[0] == 0
    target = tmp_path / "d.toml"
    status, _, err = run(
        capsys, "policy", "new", "--from", str(debug), "--kind", "sim-snp", "-o", str(target)
    )
    assert status == 1 and "debug enabled" in err and not target.exists()


def test_policy_explain_warns_loudly_without_a_measurement(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "weak.toml"
    policy.write_text(
        'name = "weak"\ntee = ["snp", "tdx"]\n[snp]\nvmpl = 0\nmeasurement = ["'
        + "a" * 96
        + '"]\n[tdx]\ntcb_status = ["UpToDate"]\n'
    )
    status, out, err = run(capsys, "policy", "explain", str(policy))
    assert status == 0
    assert "WARNING: this policy pins no measurement for tdx" in out and "WARNING" in err
    assert "launch measurement is " + "a" * 96 in out
    assert run(capsys, "policy", "explain", str(policy), "--strict")[0] == 1
    status, out, _ = run(capsys, "policy", "explain", str(tmp_path / "missing.toml"))
    assert status == 2


def test_policy_commands_refuse_bad_input_in_one_sentence(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"not a report")
    target = tmp_path / "p.toml"
    cases = [
        (["policy", "new", "--from", str(tmp_path / "none"), "--kind", "snp", "-o", str(target)], 2),
        (["policy", "new", "--from", str(garbage), "--kind", "maa", "-o", str(target)], 2),  # no --jwks
        (
            ["policy", "new", "--from", str(garbage), "--kind", "snp", "-o", str(tmp_path / "no" / "p.toml")],
            2,
        ),
        (["policy", "new", "--from", str(garbage), "--kind", "sim-snp", "-o", str(target)], 1),
        (["policy", "new", "--from", str(garbage), "-o", str(target)], 1),  # not a bundle
        (["policy", "check", str(tmp_path / "none.toml"), str(garbage)], 2),
    ]
    for argv, expected in cases:
        status, _, err = run(capsys, *argv)
        assert status == expected, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not target.exists()
    target.write_text("x")
    assert (
        run(capsys, "policy", "new", "--from", str(garbage), "--kind", "sim-snp", "-o", str(target))[0] == 2
    )
    assert target.read_text() == "x"
    bad = tmp_path / "bad.toml"
    bad.write_text('tee = ["snp"]\n[tdx]\nmrtd = ["' + "a" * 96 + '"]\n')
    status, _, err = run(capsys, "policy", "explain", str(bad))
    assert status == 2 and "[tdx] mrtd is not judged for evidence kind snp" in err
