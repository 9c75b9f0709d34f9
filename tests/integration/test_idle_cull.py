"""Idle culling from the guest agent's own report (issue 15): the resident agent says how long
no kernel has run (a running kernel counts as active), ``jupyter-cc cvm cull`` asks it over SSH
and deallocates after the profile's ``idle_minutes``.

Real parts: the local ARM stand-in with the real Azure SDK, the test sshd with the simulated
TEE, a resident agent listening behind it (in this process, so its clock can be moved forward),
a real kernel started through the provisioner.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc import audit
from jupyter_cc.azure.culling import _activity, guest_activity
from jupyter_cc.azure.lifecycle import Cvm
from jupyter_cc.cli import main
from jupyter_cc.guest.resident import ResidentAgent
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.paths import data_dir
from jupyter_cc.policy import Policy
from jupyter_cc.profiles import save_profile
from tests.integration.test_azure_lifecycle import _endpoint, arm
from tests.integration.test_remote_kernel import execute, install_spec, kernel_dir, provisioner_config
from tests.support.fake_arm import FakeArm, lab_profile
from tests.support.sshd import Sshd

__all__ = ["arm", "kernel_dir"]

pytestmark = pytest.mark.timeout(240)


def test_the_report_is_read_as_host_time() -> None:
    assert _activity({"idle_seconds": 0, "kernels": 1}, 1000.0).last_activity == 1000.0
    assert _activity({"idle_seconds": 600.0}, 1000.0).last_activity == 400.0
    bad_reports: list[dict[str, object]] = [
        {},
        {"idle_seconds": -1},
        {"idle_seconds": True},
        {"idle_seconds": "5"},
    ]
    for bad in bad_reports:
        assert _activity(bad, 1000.0).last_activity is None


async def test_cull_asks_the_guest_agent_and_deallocates_after_idle_minutes(
    tmp_path: Path,
    arm: FakeArm,
    sshd: Sshd,
    kernel_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arm.retry_after = 1  # the CLI runs with the production polling settings
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("JUPYTER_CC_ARM_ENDPOINT", arm.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.ca_file))
    profile = lab_profile(sshd, tmp_path, idle_minutes=30)
    save_profile(profile)
    # Created and attested: the host key is pinned, so the guest's report is taken.
    Cvm(profile, endpoint=_endpoint(arm)).create(
        policy=Policy.load(simulated_policy_path()), attest_timeout=30
    )

    clock = [time.monotonic()]
    sock = tmp_path / "agent" / "agent.sock"
    service = ResidentAgent(
        sock,
        tee="sim",
        host_key_file=sshd.host_pub,
        sim_dir=data_dir() / "sim",
        pool_size=0,
        clock=lambda: clock[0],
    )
    serving = threading.Thread(target=service.serve_forever, daemon=True)
    serving.start()
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cull = ["cvm", "cull", "lab", "--agent-socket", str(sock)]

        # A kernel runs for an hour: active, whatever the time since the service started.
        name = install_spec(kernel_dir, "cc-idle", provisioner_config(sshd, agent_socket=str(sock)))
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            assert (await execute(km, "x = 1"))["status"] == "ok"
            clock[0] += 3600
            assert main(cull) == 0
            captured = capsys.readouterr()
            assert captured.out.startswith("keep: "), captured
            assert "kernel(s) running in the guest" in captured.err
        finally:
            await km.shutdown_kernel()

        # Stopped now: 10 minutes later it is still kept; 31 minutes later it is deallocated.
        clock[0] += 10 * 60
        assert main(cull) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("keep: ") and "for 10 min" in captured.err
        clock[0] += 21 * 60
        assert main(cull) == 0
        captured = capsys.readouterr()
        assert "deallocate: no kernel has run for 31 min" in captured.out, captured
        last = audit.read(tmp_path / "audit.jsonl")[-1]
        assert last["event"] == "cvm-deallocate" and "idle_minutes is 30" in last["reason"]
        vm = arm.resource("virtualMachines", "lab")
        assert vm is not None and vm["power"] == "deallocated"
    finally:
        service.shutdown()
        serving.join(timeout=30)
    assert not sock.exists()


def test_without_a_resident_agent_only_max_hours_applies(
    tmp_path: Path,
    arm: FakeArm,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = lab_profile(sshd, tmp_path, idle_minutes=1)
    cvm = Cvm(profile, endpoint=_endpoint(arm), audit_log=tmp_path / "audit.jsonl")
    info = cvm.create(policy=Policy.load(simulated_policy_path()), attest_timeout=30)
    target = cvm.connect_profile(info).to_guest_target()
    activity = guest_activity(dataclasses.replace(target, agent_socket=str(tmp_path / "none.sock")))
    assert activity.last_activity is None and "no resident guest agent" in activity.sentence
    assert cvm.cull(activity.last_activity, judge_idle=activity.known).action == "keep"
