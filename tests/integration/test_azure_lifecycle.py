"""A CVM's whole life against a local ARM endpoint with the real Azure SDK and credential.

The ARM stand-in (:mod:`tests.support.fake_arm`) answers the real azure-mgmt-compute/network/
resource clients; ``DefaultAzureCredential`` gets its token from the local managed identity
endpoint it finds in the environment. The "VM" the fake creates is reached at 127.0.0.1 on the
session's sshd with the simulated TEE behind it, so create -> attest -> pin -> deallocate ->
start -> attest again -> delete runs the same code a real CVM does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc import audit
from jupyter_cc.azure.client import ArmEndpoint
from jupyter_cc.azure.errors import ArmError, ArmTimeoutError, CredentialError, NotAttestedError
from jupyter_cc.azure.hostkey import known_hosts_path
from jupyter_cc.azure.lifecycle import Cvm
from jupyter_cc.cli import main
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.policy import Policy
from jupyter_cc.profiles import Profile, get_profile, save_profile
from tests.support.fake_arm import OTHER_CREDENTIALS, SUBSCRIPTION, FakeArm, TokenEndpoint, lab_profile
from tests.support.sshd import Sshd, free_port


@pytest.fixture
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArm]:
    """The local ARM and the managed identity endpoint DefaultAzureCredential finds in the env."""
    for name in OTHER_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no user's Azure CLI or token cache
    with FakeArm(tmp_path, {SUBSCRIPTION}) as fake, TokenEndpoint(fake.token) as token:
        for name, value in token.env.items():
            monkeypatch.setenv(name, value)
        yield fake


def _endpoint(arm: FakeArm, **change: Any) -> ArmEndpoint:
    return ArmEndpoint(
        base_url=arm.base_url, connection_verify=str(arm.ca_file), polling_interval=0.02, **change
    )


def _cvm(tmp_path: Path, arm: FakeArm, profile: Profile, **endpoint: Any) -> tuple[Cvm, list[str]]:
    lines: list[str] = []
    return Cvm(
        profile,
        endpoint=_endpoint(arm, **endpoint),
        progress=lines.append,
        audit_log=tmp_path / "audit.jsonl",
    ), lines


def test_create_attest_deallocate_start_delete(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    profile = lab_profile(sshd, tmp_path)
    cvm, progress = _cvm(tmp_path, arm, profile)
    policy = Policy.load(simulated_policy_path())

    info = cvm.create(policy=policy, attest_timeout=30)
    assert (info.power_state, info.address, info.size) == ("running", "127.0.0.1", "Standard_DC4as_v5")
    # What reached ARM is a confidential VM with an encrypted guest state, sent with the token.
    (put,) = arm.sent("PUT", "virtualMachines")
    props = put.body["properties"]
    assert props["securityProfile"]["securityType"] == "ConfidentialVM"
    assert props["securityProfile"]["uefiSettings"] == {"secureBootEnabled": True, "vTpmEnabled": True}
    assert props["storageProfile"]["osDisk"]["managedDisk"]["securityProfile"]["securityEncryptionType"] == (
        "DiskWithVMGuestState"
    )
    assert props["storageProfile"]["imageReference"]["sku"] == "cvm"
    assert put.query["api-version"]
    assert [r.path.rsplit("/", 1)[1] for r in arm.requests if r.method == "PUT"] == [
        "rg1",
        "lab-vnet",
        "lab-nic",
        "lab",
    ]
    assert any(line.startswith("attesting lab") for line in progress)
    # The host key was unknown, accepted only because the evidence bound it, and is now pinned.
    pinned = known_hosts_path(profile).read_text()
    assert pinned.split()[2] == sshd.host_pub.read_text().split()[1]
    assert pinned.startswith(f"[127.0.0.1]:{sshd.port} ")

    assert cvm.deallocate().power_state == "deallocated"
    assert arm.sent("POST", "virtualMachines")[-1].path.endswith("/lab/deallocate")
    assert cvm.start(policy=policy, attest_timeout=30).power_state == "running"  # attests against the pin
    assert known_hosts_path(profile).read_text() == pinned

    (listed,) = cvm.list()
    assert (listed.name, listed.profile, listed.power_state) == ("lab", "lab", "running")
    assert listed.hours_running is not None

    assert cvm.delete() == ["virtualMachine lab", "networkInterface lab-nic", "virtualNetwork lab-vnet"]
    assert arm.resources == {}
    assert known_hosts_path(profile).read_text() == ""  # a rebuilt CVM has a new key: forget this one
    events = [e["event"] for e in audit.read(tmp_path / "audit.jsonl")]
    assert events == ["cvm-create", "cvm-deallocate", "cvm-start", "cvm-delete"]
    assert audit.verify(tmp_path / "audit.jsonl").ok
    assert arm.token not in (tmp_path / "audit.jsonl").read_text()


def test_an_existing_subnet_and_a_public_ip(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    vnet = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub"
    subnet = f"{vnet}/subnets/cvms"
    profile = lab_profile(sshd, tmp_path, subnet_id=subnet, public_ip=True, ssh_allowed_from="203.0.113.7/32")
    cvm, _ = _cvm(tmp_path, arm, profile)
    info = cvm.create(policy=None)
    assert info.address == "127.0.0.1"  # the public IP's address
    kinds = [r.path.split("/")[-2] for r in arm.requests if r.method == "PUT"][1:]
    assert kinds == ["networkSecurityGroups", "publicIPAddresses", "networkInterfaces", "virtualMachines"]
    (nsg,) = arm.sent("PUT", "networkSecurityGroups")
    assert nsg.body["properties"]["securityRules"][0]["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    assert "virtualNetwork lab-vnet" not in cvm.delete()  # not ours: left alone


def test_no_credential_is_one_sentence_naming_what_to_do(
    tmp_path: Path, arm: FakeArm, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IDENTITY_ENDPOINT")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")
    monkeypatch.setenv("IMDS_ENDPOINT", "http://127.0.0.1:9")  # no IMDS here: fail fast
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{free_port()}/msi/token")
    cvm, _ = _cvm(tmp_path, arm, lab_profile(sshd, tmp_path))
    with pytest.raises(CredentialError) as caught:
        cvm.show()
    text = str(caught.value)
    assert (
        "no Azure credential" in text
        and "virtualMachine lab in resource group rg1" in text
        and "az login" in text
    )
    assert arm.requests == []


def test_an_unknown_subscription(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    profile = lab_profile(sshd, tmp_path, subscription="99999999-2222-3333-4444-555555555555")
    cvm, _ = _cvm(tmp_path, arm, profile)
    with pytest.raises(ArmError) as caught:
        cvm.create(policy=None)
    assert caught.value.code == "SubscriptionNotFound"
    assert "subscription 99999999-2222-3333-4444-555555555555" in str(caught.value)
    assert "check the profile's subscription id" in str(caught.value)


def test_a_size_not_offered_in_the_region_leaves_what_was_made_and_offers_delete(
    tmp_path: Path, arm: FakeArm, sshd: Sshd
) -> None:
    cvm, _ = _cvm(tmp_path, arm, lab_profile(sshd, tmp_path, size="Standard_DC96as_v5"))
    with pytest.raises(ArmError) as caught:
        cvm.create(policy=None)
    text = str(caught.value)
    assert caught.value.code == "SkuNotAvailable" and "virtualMachine lab" in text
    assert "pick another size or region" in text
    assert "left behind: resourceGroup rg1, virtualNetwork lab-vnet, networkInterface lab-nic" in text
    assert "jupyter-cc cvm delete lab" in text
    assert cvm.delete() == ["networkInterface lab-nic", "virtualNetwork lab-vnet"]


@pytest.mark.parametrize(
    ("kind", "status", "code", "remedy"),
    [
        ("virtualMachines", 409, "QuotaExceeded", "quota"),
        ("virtualNetworks", 403, "AuthorizationFailed", "Network Contributor"),
    ],
)
def test_quota_and_authorization_refusals(
    tmp_path: Path, arm: FakeArm, sshd: Sshd, kind: str, status: int, code: str, remedy: str
) -> None:
    arm.fail(kind, status, code, f"Operation could not be completed ({code}).")
    cvm, _ = _cvm(tmp_path, arm, lab_profile(sshd, tmp_path))
    with pytest.raises(ArmError) as caught:
        cvm.create(policy=None)
    assert caught.value.code == code and remedy in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_an_arm_operation_that_never_finishes_times_out(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    arm.hang = True
    cvm, _ = _cvm(tmp_path, arm, lab_profile(sshd, tmp_path), operation_timeout=0.5)
    with pytest.raises(ArmTimeoutError) as caught:
        cvm.create(policy=None)
    text = str(caught.value)
    assert (
        "creating virtualNetwork lab-vnet did not finish" in text and "left behind: resourceGroup rg1" in text
    )


def test_a_cvm_that_boots_but_never_attests(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    unreached = lab_profile(sshd, tmp_path, port=free_port())  # nothing listens there
    cvm, progress = _cvm(tmp_path, arm, unreached)
    with pytest.raises(NotAttestedError) as caught:
        cvm.create(policy=Policy.load(simulated_policy_path()), attest_timeout=1.0)
    assert any("waiting for 127.0.0.1 to attest" in line for line in progress)
    text = str(caught.value)
    assert "is running (and billed) but did not attest" in text and "jupyter-cc cvm deallocate lab" in text
    assert not known_hosts_path(cvm.profile).exists()  # nothing pinned


def test_idle_culling_deallocates(tmp_path: Path, arm: FakeArm, sshd: Sshd) -> None:
    now = [1_000_000.0]
    profile = lab_profile(sshd, tmp_path, idle_minutes=30)
    cvm = Cvm(profile, endpoint=_endpoint(arm), audit_log=tmp_path / "audit.jsonl", clock=lambda: now[0])
    cvm.create(policy=None)
    now[0] += 10 * 60
    assert cvm.cull(last_activity=now[0] - 60).action == "keep"
    now[0] += 40 * 60
    decision = cvm.cull(last_activity=now[0] - 31 * 60)
    assert decision.action == "deallocate"
    assert cvm.show().power_state == "deallocated"
    last = audit.read(tmp_path / "audit.jsonl")[-1]
    assert last["event"] == "cvm-deallocate" and "idle_minutes is 30" in last["reason"]
    assert cvm.cull(last_activity=None).action == "keep"  # deallocated: nothing to do


def test_the_cli_creates_shows_lists_and_remembers_the_address(
    tmp_path: Path,
    arm: FakeArm,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arm.retry_after = 1  # the CLI runs with the production polling settings
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("JUPYTER_CC_ARM_ENDPOINT", arm.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.ca_file))
    save_profile(lab_profile(sshd, tmp_path))
    assert main(["cvm", "create", "lab", "--no-attest", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["power_state"] == "running"
    assert "profile lab now reaches the CVM at 127.0.0.1" in captured.err
    assert get_profile("lab").host == "127.0.0.1"  # so %attest lab and kernelspecs reach it

    assert main(["cvm", "show", "lab", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["power_state"], shown["address"]) == ("running", "127.0.0.1")
    assert main(["cvm", "list", "lab"]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "Standard_DC4as_v5" in out

    assert main(["cvm", "cull", "lab"]) == 0  # just started, and no activity report: keep
    assert capsys.readouterr().out.startswith("keep: ")
    two_hours_ago = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 7200))
    assert main(["cvm", "cull", "lab", "--last-activity", two_hours_ago]) == 0
    assert "deallocate: no kernel has run for 120 min" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):  # a usage error, before any request
        main(["cvm", "cull", "lab", "--last-activity", "yesterday"])
    assert "not an ISO 8601 time" in capsys.readouterr().err
    assert main(["cvm", "show", "lab", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["power_state"] == "deallocated"
    arm.fail("virtualMachines", 403, "AuthorizationFailed", "The client does not have authorization.")
    assert main(["cvm", "show", "lab"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "AuthorizationFailed" in err and arm.token not in err


def test_idle_cvm_is_deallocated_and_cc_connect_starts_it_again(
    tmp_path: Path,
    arm: FakeArm,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_cc.notebook.session_magics import SessionMagics

    arm.retry_after = 1  # the notebook path uses the production polling settings
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("JUPYTER_CC_ARM_ENDPOINT", arm.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.ca_file))
    profile = lab_profile(sshd, tmp_path)
    save_profile(profile)
    policy = Policy.load(simulated_policy_path())
    Cvm(profile, endpoint=_endpoint(arm)).create(policy=policy, attest_timeout=30)

    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("jupyter_cc")
    magics = ip.magics_manager.registry["SessionMagics"]
    assert isinstance(magics, SessionMagics)
    try:
        ip.run_line_magic("cc", "connect lab")  # running: no start, straight to attestation
        assert "connected to lab: sim-snp" in capsys.readouterr().out
        ip.run_cell_magic("confidential", "", "answer = 6 * 7\nprint('inside', answer)")
        assert "inside 42" in capsys.readouterr().out
        ip.run_line_magic("cc", "disconnect")

        # No kernel for two hours: the host side deallocates it.
        later = Cvm(profile, endpoint=_endpoint(arm), clock=lambda: time.time() + 2 * 3600)
        assert later.cull(last_activity=time.time()).action == "deallocate"
        assert later.show().power_state == "deallocated"

        ip.run_line_magic("cc", "connect lab")  # starts it, waits, then attests against the pin
        out = capsys.readouterr().out
        assert "starting the CVM lab (deallocated)" in out and "is running at 127.0.0.1" in out
        assert "connected to lab: sim-snp" in out
        ip.run_cell_magic("confidential", "", "print('again', 6 * 7)")
        assert "again 42" in capsys.readouterr().out
    finally:
        if magics.session is not None:
            magics.session.close()
            magics.session = None
    events = [e["event"] for e in audit.read(tmp_path / "audit.jsonl") if e["event"].startswith("cvm-")]
    assert events == ["cvm-create", "cvm-deallocate", "cvm-start"]


async def test_a_kernelspec_for_the_profile_starts_the_deallocated_cvm_then_attests(
    tmp_path: Path, arm: FakeArm, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.manager import AsyncKernelManager

    arm.retry_after = 1
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("JUPYTER_CC_ARM_ENDPOINT", arm.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.ca_file))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    profile = lab_profile(sshd, tmp_path)
    save_profile(profile)
    cvm = Cvm(profile, endpoint=_endpoint(arm))
    cvm.create(policy=Policy.load(simulated_policy_path()), attest_timeout=30)
    cvm.deallocate()
    assert main(["cvm", "kernelspec", "lab", "--prefix", str(tmp_path / "prefix")]) == 0

    import threading

    from jupyter_cc.provisioner import on_start_step

    steps: list[tuple[str, ...]] = []

    def step(*told: str) -> None:
        assert threading.current_thread() is threading.main_thread()  # on the event loop
        steps.append(told)

    undo = on_start_step(step)
    km = AsyncKernelManager(kernel_name="cc-lab")
    try:
        await km.start_kernel(env={"JPY_SESSION_NAME": "work/lab.ipynb"})
    finally:
        undo()
    try:
        assert cvm.show().power_state == "running"  # the provisioner started it first
        # Each step of the start was told, for JupyterLab, with the notebook it is for.
        assert [s[:3] for s in steps] == [(km.kernel_id, "cc-lab", "work/lab.ipynb")] * len(steps)
        lines = [s[3] for s in steps]
        assert lines[0] == "starting the CVM lab (deallocated); this takes a minute or two", lines
        assert lines[-1] == "the CVM lab is running at 127.0.0.1", lines
        state = km.provisioner.attestation_state()  # type: ignore[union-attr]
        assert state["confidential"] and state["verdict"]["passed"]
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        reply = await kc.execute_interactive("print(6 * 7)", timeout=30)
        assert reply["content"]["status"] == "ok"
        kc.stop_channels()
    finally:
        await km.shutdown_kernel(now=True)


async def test_the_hub_gives_each_user_a_cvm_of_their_own(
    tmp_path: Path, arm: FakeArm, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    from types import SimpleNamespace

    from jupyter_cc.azure.hub import cvm_per_user
    from jupyter_cc.hub.spawner import AttestedSSHSpawner
    from tests.support.sshd import sim_guest_traits

    arm.retry_after = 1
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("JUPYTER_CC_ARM_ENDPOINT", arm.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.ca_file))
    save_profile(lab_profile(sshd, tmp_path))
    user = SimpleNamespace(name="Alice", url="/user/Alice/", id=1, escaped_name="Alice", admin=False)
    spawner = AttestedSSHSpawner(
        user=user, log=logging.getLogger("test"), ssh_user=sshd.user, **sim_guest_traits(sshd)
    )
    select = cvm_per_user("lab")

    assert await select(spawner, []) == "127.0.0.1"  # created, attested, key pinned
    vm = arm.resource("virtualMachines", "lab-alice")
    assert vm is not None and vm["tags"]["jupyterhub-user"] == "Alice"
    assert spawner.known_hosts.endswith("lab--alice.known_hosts") and spawner.ssh_port == sshd.port
    link = spawner._target("127.0.0.1").open()  # the spawner's own connection checks the pin
    try:
        assert link.ssh is not None and link.ssh.host_key_known
        assert link.attest(Policy.load(simulated_policy_path())).claims.simulated
    finally:
        link.close()

    arm.resource("virtualMachines", "lab-alice")["power"] = "deallocated"  # culled overnight
    assert await select(spawner, []) == "127.0.0.1"
    assert arm.sent("POST", "virtualMachines")[-1].path.endswith("/lab-alice/start")
    assert len(arm.sent("PUT", "virtualMachines")) == 1  # started, not created again
