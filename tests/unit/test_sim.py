"""The simulated TEE: same layout and code path as real SNP, never accepted by accident."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone

import pytest

from jupyter_cc.attest import snp
from jupyter_cc.attest.sim import SIM_MEASUREMENT, SimulatedTee
from jupyter_cc.errors import ChainError, InputError
from jupyter_cc.policy import Policy, appraise

NOW = datetime.now(timezone.utc)


def test_created_once_with_a_private_key_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tee = SimulatedTee.load_or_create(tmp_path / "sim")
    mode = stat.S_IMODE(os.stat(tmp_path / "sim" / "vcek.key").st_mode)
    assert mode == 0o600
    again = SimulatedTee.load_or_create(tmp_path / "sim")
    assert again.chip_id == tee.chip_id
    assert again.chain[-1] == tee.chain[-1]
    assert "SIMULATED" in repr(tee)
    assert "PRIVATE" not in repr(tee)
    assert not any(p.name.startswith(".sim-") for p in tmp_path.iterdir())


def test_minted_reports_have_the_exact_snp_layout(sim_tee) -> None:  # type: ignore[no-untyped-def]
    raw = sim_tee.mint(bytes(range(64)), debug=True, vmpl=2)
    report = snp.parse_report(raw)
    assert len(raw) == snp.REPORT_SIZE
    assert report.report_data == bytes(range(64))
    assert report.measurement == SIM_MEASUREMENT
    assert report.debug
    assert report.vmpl == 2
    assert report.chip_id == sim_tee.chip_id


def test_verified_claims_are_labelled_simulated(sim_tee) -> None:  # type: ignore[no-untyped-def]
    claims = sim_tee.verify(sim_tee.mint(bytes(64)), at=NOW)
    assert claims.kind == "sim-snp"
    assert claims.simulated
    assert claims.get("root") == "ARK-Milan (SIMULATED)"
    assert claims.to_json()["simulated"] is True


def test_only_a_policy_that_asks_for_it_accepts_simulated_evidence(sim_tee) -> None:  # type: ignore[no-untyped-def]
    claims = sim_tee.verify(sim_tee.mint(bytes(64)), at=NOW)
    assert not appraise(claims).passed
    assert not appraise(claims, Policy.from_toml('name = "x"\n[snp]\nvmpl = 0')).passed
    assert not appraise(claims, Policy.from_toml("allow_debug = true")).passed
    assert appraise(claims, Policy.from_toml("allow_simulated = true")).passed


def test_simulated_reports_never_verify_as_hardware_snp(sim_tee) -> None:  # type: ignore[no-untyped-def]
    report = snp.parse_report(sim_tee.mint(bytes(64)))
    with pytest.raises(ChainError, match="not pinned"):
        snp.verify_report(report, sim_tee.vcek, list(sim_tee.chain), at=NOW)


def test_another_machines_simulated_tee_is_not_trusted(sim_tee, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = SimulatedTee.load_or_create(tmp_path / "elsewhere")
    report = snp.parse_report(other.mint(bytes(64)))
    with pytest.raises(ChainError, match="not pinned"):
        snp.verify_report(report, other.vcek, list(other.chain), at=NOW, roots=sim_tee.trust_store())


def test_report_data_must_be_64_bytes(sim_tee) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="64 bytes"):
        sim_tee.mint(b"short")


def test_loading_a_missing_simulator_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="no simulated TEE"):
        SimulatedTee.load(tmp_path / "none")


# --- the simulator's CRL ------------------------------------------------------------------------


def test_simulated_evidence_is_checked_against_the_simulators_own_crl(sim_tee) -> None:  # type: ignore[no-untyped-def]
    claims = sim_tee.verify(sim_tee.mint(bytes(64)), at=NOW)
    assert claims.get("revocation") == "checked"
    assert claims.get("collateral_stale_days") == 0
    crl = sim_tee.crl()
    assert crl is not None
    assert crl.issuer == sim_tee.chain[-1].subject
    assert crl.is_signature_valid(sim_tee.chain[-1].public_key())


def test_the_simulators_files_and_modes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    SimulatedTee.load_or_create(tmp_path / "sim")
    names = sorted(p.name for p in (tmp_path / "sim").iterdir())
    assert names == ["ark.key", "ask_ark.pem", "crl.der", "vcek.key", "vcek.pem"]
    for key in ("vcek.key", "ark.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "sim" / key).st_mode) == 0o600


def test_a_simulated_vcek_listed_in_the_simulators_crl_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tee = SimulatedTee.load_or_create(tmp_path / "sim")
    report = tee.mint(bytes(64))
    assert tee.write_crl([tee.vcek.serial_number]) is not None
    with pytest.raises(ChainError, match=f"'SEV-VCEK' \\(serial {tee.vcek.serial_number:x}\\).*revoked"):
        tee.verify(report, at=NOW)
    tee.write_crl([tee.chain[0].serial_number])  # the ASK this time
    with pytest.raises(ChainError, match=r"'SEV-Milan'.*revoked"):
        tee.verify(report, at=NOW)
    tee.write_crl()
    assert tee.verify(report, at=NOW).get("revocation") == "checked"


def test_a_listed_simulated_vcek_is_refused_through_the_registry(sim_tee) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.attest.evidence import Evidence, verify

    report = sim_tee.mint(bytes(64))
    ev = Evidence(kind="sim-snp", report=report)
    assert verify(ev, at=NOW).get("revocation") == "checked"
    sim_tee.write_crl([sim_tee.vcek.serial_number])
    try:
        with pytest.raises(ChainError, match="revoked"):
            verify(ev, at=NOW)
    finally:
        sim_tee.write_crl()
    assert verify(ev, at=NOW).get("revocation") == "checked"


def test_an_expired_simulator_crl_is_renewed_keeping_its_entries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    tee = SimulatedTee.load_or_create(tmp_path / "sim")
    tee.write_crl([4242], next_update=NOW - timedelta(days=1))
    renewed = tee.crl()
    assert renewed is not None
    assert renewed.next_update_utc is not None and renewed.next_update_utc > NOW
    assert [e.serial_number for e in renewed] == [4242]
    assert tee.verify(tee.mint(bytes(64)), at=NOW).get("revocation") == "checked"


def test_a_simulator_without_an_ark_key_is_unchecked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tee = SimulatedTee.load_or_create(tmp_path / "sim")
    (tmp_path / "sim" / "ark.key").unlink()
    (tmp_path / "sim" / "crl.der").unlink()
    claims = tee.verify(tee.mint(bytes(64)), at=NOW)
    assert claims.get("revocation") == "unchecked"
