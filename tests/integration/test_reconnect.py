"""Surviving a network drop: the sshd child serving the session is killed mid-session.

With the resident agent the kernel outlives its connection; the provisioner reconnects,
re-attests with a fresh nonce, takes the kernel back and moves its forwards, so a client
connected before the drop keeps working and ``print(x)`` prints the value set before it. An
orphan nobody comes back for is stopped after its timeout and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.kernelspec import simulated_policy_path
from tests.integration.test_remote_kernel import (
    install_spec,
    kernel_dir,
    listening,
    provisioner_config,
    runtime_dir_of,
)
from tests.support import procs
from tests.support.resident import Resident, resident_agent
from tests.support.sshd import Sshd, guest_sshd

__all__ = ["kernel_dir"]

pytestmark = pytest.mark.timeout(180)


def cut_connections(server: Sshd) -> list[int]:
    """Kill (SIGKILL) the sshd processes serving the open connections; the listener stays."""
    assert server.process is not None
    children = procs.children(server.process.pid)
    assert children, "no sshd child serves a connection"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    return children


async def run_code(kc, code: str, timeout: float = 30) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(status, stdout) of ``code`` on an open client."""
    out: list[str] = []

    def hook(msg):  # type: ignore[no-untyped-def]
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"]["status"], "".join(out)


async def settle(kc, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Wait until a round trip (shell and iopub) works again on ``kc`` after a reconnect."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await run_code(kc, "pass", timeout=3)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def until(predicate, timeout: float = 30, step: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        await asyncio.sleep(step)
    return False


@pytest.fixture
def guest(tmp_path: Path) -> Sshd:
    server = guest_sshd(tmp_path / "sshd")
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("encryption", ["off", "required"])
async def test_a_killed_ssh_connection_is_reconnected_and_the_variables_survive(
    guest: Sshd, kernel_dir: Path, tmp_path: Path, encryption: str
) -> None:
    with resident_agent(guest, tmp_path) as agent:
        config = provisioner_config(guest, agent_socket=str(agent.socket), transport_encryption=encryption)
        name = install_spec(kernel_dir, "cc-survive", config)
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            prov = km.provisioner
            pid, first = prov._pid, prov.attestation
            server_key = km.get_connection_info().get("curve_publickey")
            # With CurveZMQ the client holds the attested kernel's server key.
            assert bool(server_key) is (encryption == "required")
            assert await run_code(kc, "x = 6 * 7") == ("ok", "")

            cut_connections(guest)
            assert await until(lambda: not prov._link.alive, timeout=10), "the drop went unnoticed"
            assert await km.is_alive()  # reconnecting: the kernel is not reported dead
            assert await until(lambda: _reconnected(km), timeout=60), prov.attestation_error
            assert await km.is_alive()
            assert prov._pid == pid  # the same kernel process
            later = prov.attestation
            assert later is not None and first is not None
            assert later.bundle_sha256 != first.bundle_sha256  # fresh evidence, fresh nonce
            assert later.attested_at >= first.attested_at
            # The kernel keeps the key pair bound at its start: the re-attestation binds none,
            # and the clients keep the attested server key (only that kernel can answer them).
            assert later.curve_server_key is None
            assert km.get_connection_info().get("curve_publickey") == server_key
            assert agent.hello()["kernels"] == 1 and agent.hello()["orphans"] == 0

            # The client connected before the drop carries on, on the same local ports, once its
            # ZeroMQ sockets have reconnected (iopub output sent before that is not seen).
            await settle(kc)
            assert await run_code(kc, "print(x)") == ("ok", "42\n")
            # ...and a new one too.
            kc2 = km.client()
            kc2.start_channels()
            await kc2.wait_for_ready(timeout=30)
            assert await run_code(kc2, "x += 1; print(x)") == ("ok", "43\n")
            kc2.stop_channels()
            state = prov.attestation_state()
            assert state["verdict"]["passed"] and state["agent"]["reconnects"] == 1
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        assert await until(lambda: not procs.alive(pid), timeout=15)
        assert agent.hello()["kernels"] == 0


async def test_an_orphan_past_its_timeout_is_stopped_and_leaves_nothing(
    guest: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(guest, tmp_path, orphan_timeout=2) as agent:
        name = install_spec(
            kernel_dir, "cc-orphan", provisioner_config(guest, agent_socket=str(agent.socket))
        )
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            prov = km.provisioner
            pid = prov._pid
            runtime = runtime_dir_of(pid)
            ports = [km.get_connection_info()[p] for p in ("shell_port", "iopub_port", "hb_port")]
            sessions = procs.children(guest.process.pid)  # type: ignore[union-attr]
            guest.stop()  # the CVM becomes unreachable: no reconnect can succeed...
            for session in sessions:  # ...and the open connection drops
                os.kill(session, signal.SIGKILL)
            assert await until(lambda: agent.hello()["orphans"] == 1, timeout=10)
            assert await until(lambda: not procs.alive(pid), timeout=15), "the orphan outlived its timeout"
            assert await until(lambda: not runtime.exists(), timeout=5), "the orphan's files were left behind"
            assert agent.hello()["kernels"] == 0
            assert await until(lambda: _dead(km), timeout=30), "the lost kernel is not reported dead"
            assert prov.attestation is None and "orphan timeout" in (prov.attestation_error or "")
        finally:
            await km.shutdown_kernel(now=True)
        assert not any(listening(p) for p in ports), "a local forward outlived the kernel"


async def _reconnected(km: AsyncKernelManager) -> bool:
    """Poll (as the restarter does) until the reconnect finished."""
    alive = await km.is_alive()
    return bool(alive and km.provisioner.reconnects >= 1 and km.provisioner._reconnect is None)


async def _dead(km: AsyncKernelManager) -> bool:
    return not await km.is_alive()


async def test_orphan_timeout_zero_stops_the_kernel_with_its_connection(
    guest: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(guest, tmp_path) as agent:
        config = provisioner_config(guest, agent_socket=str(agent.socket), orphan_timeout=0)
        km = AsyncKernelManager(kernel_name=install_spec(kernel_dir, "cc-no-orphan", config))
        await km.start_kernel()
        try:
            pid = km.provisioner._pid
            cut_connections(guest)
            assert await until(lambda: not procs.alive(pid), timeout=15)
            assert await until(lambda: _dead(km), timeout=15)
            assert agent.hello()["kernels"] == 0
        finally:
            await km.shutdown_kernel(now=True)


async def test_a_reconnect_whose_attestation_fails_reports_the_kernel_lost(
    guest: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(simulated_policy_path().read_text())
    with resident_agent(guest, tmp_path, orphan_timeout=3) as agent:
        config = provisioner_config(guest, agent_socket=str(agent.socket), policy=str(policy))
        km = AsyncKernelManager(kernel_name=install_spec(kernel_dir, "cc-reconnect-refused", config))
        await km.start_kernel()
        try:
            pid = km.provisioner._pid
            policy.write_text('name = "tightened"\n')  # the operator withdrew acceptance meanwhile
            cut_connections(guest)
            assert await until(lambda: _dead(km), timeout=30)
            assert km.provisioner.attestation is None
            assert "policy 'tightened' refused" in (km.provisioner.attestation_error or "")
            # Nothing was re-attached: the guest stops the orphan at its timeout.
            assert await until(lambda: not procs.alive(pid), timeout=15)
            assert _resident_empty(agent)
        finally:
            await km.shutdown_kernel(now=True)


def _resident_empty(agent: Resident) -> bool:
    hello = agent.hello()
    return hello["kernels"] == 0 and hello["orphans"] == 0
