"""The resident guest agent (``jupyter-cc guest serve``) behind a real sshd, reached over
``direct-streamlocal`` channels; and the fallback to the per-connection agent without it."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.cli import main
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.paths import data_dir
from tests.integration.test_remote_kernel import (
    execute,
    install_spec,
    kernel_dir,
    provisioner_config,
    runtime_dir_of,
)
from tests.support import procs
from tests.support.resident import descendants, resident_agent
from tests.support.sshd import Sshd, sim_guest_options

__all__ = ["kernel_dir"]  # the fixture, shared with test_remote_kernel

pytestmark = pytest.mark.timeout(150)


def per_connection_agents() -> set[int]:
    """This test session's per-connection agents (``python -m jupyter_cc.guest`` under sshd)."""
    return set(procs.guest_agents(str(data_dir() / "sim").encode()))


def wait_gone(pids: set[int], timeout: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if procs.alive(p)}
        if not left:
            return set()
        time.sleep(0.1)
    return {p for p in pids if procs.alive(p)}


def raw_request(sock: Path, *messages: dict[str, object]) -> list[dict[str, object]]:
    """Requests straight on the socket, one answer each."""
    answers = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        stream = s.makefile("rwb")
        for message in messages:
            stream.write(json.dumps(message).encode() + b"\n")
            stream.flush()
            answers.append(json.loads(stream.readline()))
    return answers


async def test_kernel_runs_in_the_resident_agent_with_no_python_started_per_connection(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(sshd, tmp_path) as agent:
        assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(agent.socket.stat().st_mode)
        assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o700
        name = install_spec(kernel_dir, "cc-res", provisioner_config(sshd, agent_socket=str(agent.socket)))
        before = per_connection_agents()
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            prov = km.provisioner
            assert prov._link.resident
            state = prov.attestation_state()
            assert state["verdict"]["passed"] and state["agent"]["resident"] is True
            assert state["agent"]["pool"]["size"] == 1 and state["agent"]["warm"] is True
            # The kernel is the service's child: no agent was started for this connection.
            assert prov._pid in descendants(agent.process.pid)
            assert per_connection_agents() - before == set()
            reply = await execute(km, "import os; assert os.environ['JUPYTER_CC_CONFIDENTIAL'] == '1'")
            assert reply["status"] == "ok"
            pid = prov._pid
        finally:
            await km.shutdown_kernel()
        assert wait_gone({pid}) == set(), "the kernel outlived its shutdown"
        hello = agent.hello()
        assert hello["resident"] is True and hello["kernels"] == 0
        assert agent.process.poll() is None  # the service stays for the next kernel


async def test_without_a_service_the_per_connection_agent_is_used(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    config = provisioner_config(sshd, agent_socket=str(tmp_path / "nothing" / "agent.sock"))
    name = install_spec(kernel_dir, "cc-fallback", config)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        assert not km.provisioner._link.resident
        assert km.provisioner.attestation_state()["agent"]["resident"] is False
        assert (await execute(km, "1 + 1"))["status"] == "ok"
    finally:
        await km.shutdown_kernel()


def test_start_and_reattach_need_an_attestation_on_the_connection(sshd: Sshd, tmp_path: Path) -> None:
    with resident_agent(sshd, tmp_path, pool=0) as agent:
        start, reattach = raw_request(
            agent.socket,
            {"op": "start", "env": {"A": "b"}},
            {"op": "reattach", "kernel_id": "0" * 32},
        )
        assert start["ok"] is False and "needs a fresh attestation" in str(start["error"])
        assert reattach["ok"] is False and "needs a fresh attestation" in str(reattach["error"])
        assert agent.hello()["kernels"] == 0


def test_attest_cli_reports_the_resident_agent_and_its_pool(sshd: Sshd, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with resident_agent(sshd, tmp_path) as agent:
        argv = ["attest", "127.0.0.1", *sim_guest_options(sshd), "--policy", str(simulated_policy_path())]
        assert main([*argv, "--agent-socket", str(agent.socket), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["passed"] is True
        assert doc["agent"]["resident"] is True
        assert doc["agent"]["pool"]["size"] == 1 and doc["agent"]["pool"]["ready"] == 1
        assert doc["agent"]["pool"]["idle_rss_bytes"] > 1_000_000
        assert main([*argv, "--agent-socket", str(agent.socket)]) == 0
        assert "guest agent: resident, warm pool 1 of 1 ready" in capsys.readouterr().out
        assert main([*argv, "--agent-socket", ""]) == 0
        assert "started for this connection" in capsys.readouterr().out


async def test_stopping_the_service_stops_its_kernels_and_pool_and_removes_the_socket(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(sshd, tmp_path) as agent:
        name = install_spec(
            kernel_dir, "cc-res-stop", provisioner_config(sshd, agent_socket=str(agent.socket))
        )
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            agent.wait_pool(1)
            runtime = runtime_dir_of(km.provisioner._pid)
            below = descendants(agent.process.pid)
            assert km.provisioner._pid in below and len(below) >= 2  # the kernel and a pool process
            agent.process.send_signal(signal.SIGTERM)
            assert agent.process.wait(timeout=30) == 0
            assert wait_gone(below) == set(), "the service left processes behind"
            assert not agent.socket.exists()
            assert not runtime.exists(), "the connection file outlived the service"
        finally:
            await km.shutdown_kernel(now=True)


def test_a_socket_folder_others_can_enter_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_cc.cli.guest",
            "serve",
            "--socket",
            str(folder / "a.sock"),
            "--pool",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is not a private folder of this user" in result.stderr
    assert not (folder / "a.sock").exists()


def test_a_second_service_on_a_live_socket_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    with resident_agent(sshd, tmp_path, pool=0) as agent:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "jupyter_cc.cli.guest",
                "serve",
                "--socket",
                str(agent.socket),
                "--pool",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1 and "another agent already listens" in result.stderr
        assert agent.hello()["resident"] is True


def test_install_service_writes_a_unit_with_every_word_quoted(tmp_path: Path) -> None:
    hostile = f"/tmp/a b\"c'$HOME%h;$(touch {tmp_path / 'pwned'})"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_cc.cli.guest",
            "install-service",
            "--unit-dir",
            str(tmp_path / "units"),
            "--user-unit",
            "--tee",
            "sim",
            "--sim-dir",
            hostile,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "USER": "alice"},
    )
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "units" / "jupyter-cc-agent.service").read_text()
    uid = os.geteuid()
    assert f"wrote {tmp_path / 'units' / 'jupyter-cc-agent.service'} (user unit)" in result.stdout
    assert "systemctl --user enable --now jupyter-cc-agent.service" in result.stdout
    assert f'"agent_socket": "/run/user/{uid}/jupyter-cc/agent.sock"' in result.stdout
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert '"/tmp/a b\\"c\'$$HOME%%h;$$(touch ' in exec_start  # systemd expands neither $ nor %
    assert f'"--socket" "/run/user/{uid}/jupyter-cc/agent.sock"' in exec_start
    assert "RuntimeDirectory=jupyter-cc\n" in unit and "User=" not in unit
    assert not (tmp_path / "pwned").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_cc.cli.guest",
            "install-service",
            "--unit-dir",
            str(tmp_path),
            "--sim-dir",
            "a\nb",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "newline" in bad.stderr


def test_system_unit_runs_as_the_user_in_its_runtime_directory(tmp_path: Path) -> None:
    from jupyter_cc.guest.unit import unit_file

    unit = unit_file(
        ["/usr/bin/python3", "-m", "jupyter_cc.cli.guest", "serve"],
        user="alice",
        system=True,
        socket="/run/jupyter-cc/alice/agent.sock",
        uid=1000,
    )
    assert unit.name == "jupyter-cc-agent-alice.service"
    assert "User=alice\n" in unit.text and "RuntimeDirectory=jupyter-cc/alice\n" in unit.text
    assert "RuntimeDirectoryMode=0700" in unit.text and "UMask=0077" in unit.text
    with pytest.raises(Exception, match="not a user name"):
        unit_file([], user="x; rm -rf /", system=True, socket="/s", uid=0)


async def test_a_hostile_socket_path_is_not_executed(sshd: Sshd, kernel_dir: Path, tmp_path: Path) -> None:
    # The path travels in the SSH channel request, never through a shell; it is simply not found.
    marker = tmp_path / "pwned"
    hostile = f"/tmp/x; touch {marker}; $(touch {marker}) `touch {marker}`/{{user}}.sock"
    name = install_spec(kernel_dir, "cc-hostile-sock", provisioner_config(sshd, agent_socket=hostile))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        assert not km.provisioner._link.resident
    finally:
        await km.shutdown_kernel()
    assert not marker.exists()
