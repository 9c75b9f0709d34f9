"""%attest in an IPython shell: this kernel's simulated TEE, a remote one over a real sshd, refusals."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_cc.attest.binding import NONCE_SIZE, host_key_digest
from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.cli import main
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.notebook.attest_magic import (
    _host_target,
    _judge,
    _resolve,
    attest_here,
    attest_target,
    register,
    save_bundle,
)
from jupyter_cc.notebook.card import AttestationCard
from jupyter_cc.policy import Policy
from jupyter_cc.remote.guest import GuestTarget
from tests.support.sshd import Sshd, sim_profile

SIM_POLICY = str(simulated_policy_path())
AMBER, RED = "#9a6700", "#cf222e"


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(path))
    return path


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, audit_log: Path, sim_tee: Any, tmp_path: Path) -> InteractiveShell:
    """A shell that is a confidential kernel on the simulated TEE (as the guest kernel's env says)."""
    monkeypatch.setenv("JUPYTER_CC_CONFIDENTIAL", "1")
    monkeypatch.setenv("JUPYTER_CC_TEE", "sim")
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.delenv("JUPYTER_CC_POLICY", raising=False)
    monkeypatch.delenv("JUPYTER_CC_SIM_DIR", raising=False)
    ip = InteractiveShell.instance()
    register(ip)
    return ip


def audit_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_simulated_kernel_passes_the_shipped_policy_as_an_amber_card(
    shell: InteractiveShell, audit_log: Path
) -> None:
    card = shell.run_line_magic("attest", f"--policy {SIM_POLICY}")
    assert isinstance(card, AttestationCard)
    assert card.passed and card.simulated
    assert f"border:2px solid {AMBER}" in card.html and SIMULATED_BANNER in card.html
    assert "sim-snp (Milan)" in card.text and "simulated-demo: passed" in card.text
    assert card.state["target"] == "this kernel"
    [entry] = audit_entries(audit_log)
    assert entry["event"] == "attest" and entry["passed"] is True and entry["policy"] == "simulated-demo"
    assert entry["evidence_sha256"] == card.state["evidence_sha256"]


def test_each_attest_uses_a_fresh_nonce(shell: InteractiveShell) -> None:
    first = shell.run_line_magic("attest", f"--policy {SIM_POLICY} --json")
    second = shell.run_line_magic("attest", f"--policy {SIM_POLICY} --json")
    assert first["claims"]["report_data"] != second["claims"]["report_data"]


def test_default_policy_gives_a_red_card_naming_allow_simulated(
    shell: InteractiveShell, audit_log: Path
) -> None:
    card = shell.run_line_magic("attest", "")
    assert isinstance(card, AttestationCard)
    assert not card.passed and not card.state["confidential"]
    assert f"border:2px solid {RED}" in card.html
    assert "allow_simulated: expected a hardware TEE" in card.html
    assert SIMULATED_BANNER in card.html
    # Every failed rule, not only the first.
    assert any(r.startswith("tee:") for r in card.state["reasons"])
    assert audit_entries(audit_log)[-1]["passed"] is False


def test_policy_comes_from_the_environment_when_not_given(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_CC_POLICY", SIM_POLICY)
    assert shell.run_line_magic("attest", "").passed


def test_json_returns_the_claims_and_verdict(shell: InteractiveShell) -> None:
    state = shell.run_line_magic("attest", f"--policy {SIM_POLICY} --json")
    assert isinstance(state, dict)
    assert state["passed"] is True and state["verified"] is True
    assert state["claims"]["tee"] == "sim-snp" and state["claims"]["simulated"] is True
    assert state["verdict"] == {"passed": True, "policy": "simulated-demo", "reasons": []}
    json.dumps(state)  # plain JSON data, ready to store
    refused = shell.run_line_magic("attest", "--json")
    assert refused["passed"] is False and refused["verdict"]["reasons"] == refused["reasons"]


def test_saved_bundle_reverifies_with_the_cli(shell: InteractiveShell, tmp_path: Path) -> None:
    path = tmp_path / "evidence.json"
    card = shell.run_line_magic("attest", f"--policy {SIM_POLICY} --save {path}")
    assert card.state["saved_to"] == str(path) and str(path) in card.text
    doc = json.loads(path.read_text())
    assert doc["verdict"]["passed"] is True and doc["verdict"]["policy"] == "simulated-demo"
    assert doc["verdict"]["evidence_sha256"] == card.state["evidence_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "evidence.json"]  # no temp left
    nonce = doc["nonce"]
    assert main(["verify", "bundle", str(path), "--policy", SIM_POLICY, "--nonce", nonce]) == 0
    assert main(["verify", "bundle", str(path)]) == 1  # the default policy refuses the simulated TEE
    # A refused attestation is saved too, with its verdict: the evidence itself still verifies.
    shell.run_line_magic("attest", f"--save {path}")
    assert json.loads(path.read_text())["verdict"]["passed"] is False
    assert main(["verify", "bundle", str(path), "--policy", SIM_POLICY]) == 0


def test_save_to_an_unwritable_place_is_one_sentence(shell: InteractiveShell, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^%attest: cannot write .*missing"):
        shell.run_line_magic("attest", f"--save {tmp_path / 'missing' / 'e.json'}")


def test_invalid_evidence_is_a_red_card_with_one_sentence(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JUPYTER_CC_TEE", "snp")  # no SEV-SNP hardware here: no evidence source works
    card = shell.run_line_magic("attest", f"--policy {SIM_POLICY} --save {tmp_path / 'unused.json'}")
    assert not card.passed and f"border:2px solid {RED}" in card.html
    error = card.state["error"]
    assert error.startswith("evidence check failed: no source gives snp evidence") and "\n" not in error
    assert "nothing was saved" in card.text
    assert not (tmp_path / "unused.json").exists()


def test_evidence_for_another_nonce_is_refused(sim_tee: Any) -> None:
    outcome = attest_here(Policy.from_toml('allow_simulated = true\ntee = ["sim-snp"]'), tee="sim")
    assert outcome.passed and outcome.bundle is not None
    replayed = _judge(
        outcome.bundle,
        nonce=b"\x01" * NONCE_SIZE,
        host_key_sha256=host_key_digest(None),
        policy=Policy(allow_simulated=True),
        target="replay",
    )
    assert not replayed.passed
    assert replayed.state["error"].startswith("binding check failed: the bundle's nonce")
    assert not AttestationCard(replayed.state).passed


def test_outside_a_confidential_kernel_a_target_is_required(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUPYTER_CC_CONFIDENTIAL")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("attest", "")
    message = str(info.value)
    assert message.startswith("%attest: this is not a confidential kernel, so give the PROFILE or HOST")
    assert "\n" not in message and message.count(". ") == 0


def test_usage_errors_are_one_sentence(shell: InteractiveShell, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="usage: %attest "):
        shell.run_line_magic("attest", "--bogus")
    with pytest.raises(UsageError, match=r"^%attest: cannot read policy file"):
        shell.run_line_magic("attest", f"--policy {tmp_path / 'nope.toml'}")
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_everything = true\n")
    with pytest.raises(UsageError, match="unknown top-level key 'allow_everything'"):
        shell.run_line_magic("attest", f"--policy {bad}")


def test_host_names_parse_user_and_port() -> None:
    assert _host_target("alice@cvm.example:2222") == GuestTarget(
        transport="ssh", host="cvm.example", port=2222, user="alice"
    )
    assert _host_target("cvm") == GuestTarget(transport="ssh", host="cvm")
    assert _host_target("::1").host == "::1"
    with pytest.raises(UsageError):
        _host_target("alice@")


def test_unreachable_host_is_a_red_card(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTER_CC_CONFIDENTIAL")
    from tests.support.sshd import free_port

    card = shell.run_line_magic("attest", f"127.0.0.1:{free_port()}")
    assert not card.passed and f"border:2px solid {RED}" in card.html
    assert card.state["target"].startswith("127.0.0.1:") and card.state["error"]


# --- a remote CVM: the guest agent behind a real sshd, with the simulated TEE -----------------


def guest_target(sshd: Sshd) -> GuestTarget:
    return sim_profile(sshd, "cvm-test").to_guest_target()


def host_key_sha256(sshd: Sshd) -> str:
    import base64

    blob = base64.b64decode(sshd.host_pub.read_text().split()[1])
    return hashlib.sha256(blob).hexdigest()


@pytest.mark.timeout(120)
def test_remote_cvm_attests_over_ssh_bound_to_its_host_key(sshd: Sshd, sim_tee: Any, tmp_path: Path) -> None:
    outcome = attest_target(guest_target(sshd), Policy.load(SIM_POLICY), label="cvm-test")
    assert outcome.passed, outcome.state.get("error")
    assert outcome.state["target"] == "cvm-test" and outcome.state["source"] == "simulated"
    assert outcome.bundle is not None
    assert json.loads(outcome.bundle)["host_key_sha256"] == host_key_sha256(sshd)
    path = tmp_path / "remote.json"
    save_bundle(outcome, path)
    argv = ["verify", "bundle", str(path), "--policy", SIM_POLICY, "--host-key-sha256", host_key_sha256(sshd)]
    assert main(argv) == 0
    assert main([*argv[:-1], "00" * 32]) == 1  # another host key: the binding fails

    refused = attest_target(guest_target(sshd), Policy(), label="cvm-test")
    assert not refused.passed and "allow_simulated" in " ".join(refused.state["reasons"])


@pytest.mark.timeout(120)
def test_attest_profile_from_an_ordinary_kernel(
    sshd: Sshd, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, audit_log: Path
) -> None:
    """A PROFILE in the user config names the CVM and the policy that appraises it."""
    monkeypatch.delenv("JUPYTER_CC_CONFIDENTIAL")
    target = guest_target(sshd)
    config = tmp_path / "jupyter_cc.toml"
    table = {
        "host": target.host,
        "port": target.port,
        "identity_file": target.identity_file,
        "known_hosts": target.known_hosts,
        "host_key_file": target.host_key_file,
        "python": target.python,
        "tee": target.tee,
        "sim_dir": target.sim_dir,
        "policy": SIM_POLICY,
    }
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    config.write_text(f"[profiles.cvm-test]\n{body}")
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(config))
    card = shell.run_line_magic("attest", f"cvm-test --save {tmp_path / 'e.json'}")
    assert card.passed and card.simulated, card.state.get("error")
    assert "cvm-test" in card.text and (tmp_path / "e.json").exists()
    assert audit_entries(audit_log)[-1]["target"] == "cvm-test"
    # --policy overrides the profile's (an empty policy file is the safe default).
    assert not shell.run_line_magic("attest", "cvm-test --json --policy /dev/null")["passed"]


def test_targets_are_hosts_unless_a_profile_names_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "jupyter_cc.toml"
    config.write_text('[profiles.lab]\nhost = "cvm.example.org"\nssh_user = "azureuser"\n')
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(config))
    assert _resolve("lab") == (GuestTarget(host="cvm.example.org", user="azureuser"), None)
    assert _resolve("cvm.example.org")[0] == GuestTarget(host="cvm.example.org")
    config.write_text("[profiles\n")
    with pytest.raises(UsageError, match=r"^%attest: config .* is not valid TOML"):
        _resolve("lab")  # a broken config is reported, not taken for a host name
    monkeypatch.setitem(sys.modules, "jupyter_cc.profiles", None)  # a build without profiles
    assert _resolve("lab")[0] == GuestTarget(host="lab")


def test_nothing_to_save_is_said_not_written(tmp_path: Path) -> None:
    policy = Policy()
    garbage = _judge(b"<html>", nonce=b"\0" * 32, host_key_sha256=b"\0" * 32, policy=policy, target="t")
    assert garbage.state["error"].startswith("format check failed: evidence bundle is not JSON")
    with pytest.raises(ValueError, match="not an evidence bundle"):
        save_bundle(garbage, tmp_path / "e.json")
    assert list(tmp_path.iterdir()) == []
