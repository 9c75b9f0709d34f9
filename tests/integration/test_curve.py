"""CurveZMQ bound to the attestation: the kernel's key pair is made in the TEE, its public key
bound into REPORT_DATA, and only a process holding its secret can answer on the kernel's ports.

Real parts: the test sshd, the per-connection and the resident guest agent, ipykernel, and
plain ZeroMQ clients and servers on this machine's loopback.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import zmq
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import Session
from zmq.utils import z85

from jupyter_cc.provisioner import ConfidentialProvisioner
from tests.integration.test_remote_kernel import execute, install_spec, kernel_dir, provisioner_config
from tests.support.resident import resident_agent
from tests.support.sshd import Sshd

__all__ = ["kernel_dir"]

pytestmark = pytest.mark.timeout(150)


def kernel_info_answered(
    url: str, key: bytes, *, curve: tuple[bytes, bytes, bytes] | None, wait_ms: int
) -> bool:
    """Whether a signed kernel_info_request on a DEALER at ``url`` gets any answer in ``wait_ms``.

    ``curve``: (client public, client secret, server key) to use, or None for a plain socket.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        if curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
        sock.connect(url)
        Session(key=key).send(sock, "kernel_info_request", {})
        return bool(sock.poll(wait_ms))
    finally:
        sock.close()
        ctx.term()


async def test_curve_key_made_in_the_guest_is_bound_and_a_plain_client_gets_no_answer(
    sshd: Sshd, kernel_dir: Path
) -> None:
    name = install_spec(kernel_dir, "cc-curve", provisioner_config(sshd, transport_encryption="required"))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        info = km.get_connection_info()
        raw: object = info["curve_publickey"]
        public = raw if isinstance(raw, bytes) else str(raw).encode()
        # The key the kernel serves with is the one the accepted evidence bound.
        prov = km.provisioner
        assert isinstance(prov, ConfidentialProvisioner) and prov.attestation is not None
        assert prov.attestation.curve_server_key == z85.decode(public)
        assert stat.S_IMODE(os.stat(km.connection_file).st_mode) == 0o600
        assert (await execute(km, "x = 41 + 1; print(x)"))["status"] == "ok"
        shell = f"tcp://127.0.0.1:{info['shell_port']}"
        key = km.session.key
        # A plain client, even one holding the HMAC key, gets nothing: no CURVE handshake.
        assert not kernel_info_answered(shell, key, curve=None, wait_ms=1500)
        # Nor a CURVE client that does not know the attested server key.
        other_pub, other_sec = zmq.curve_keypair()
        assert not kernel_info_answered(shell, key, curve=(other_pub, other_sec, other_pub), wait_ms=1500)
        # With the attested server key (any client key pair) the kernel answers.
        assert kernel_info_answered(shell, key, curve=(other_pub, other_sec, public), wait_ms=10000)
        assert "curve_secretkey" not in repr(km.provisioner)
    finally:
        await km.shutdown_kernel()


def fake_kernel(ctx: zmq.Context[zmq.Socket[bytes]], *, curve: bool) -> tuple[zmq.Socket[bytes], int]:
    """A "kernel" that took a loopback port: a ROUTER that answers whatever arrives, as a CURVE
    server with its own key pair (it lacks the attested secret) or a plain socket."""
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    if curve:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_server = True
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, port


def test_client_side_curve_refuses_a_fake_kernel_without_the_secret() -> None:
    """jupyter_client's sockets with the attested key pair (what the provisioner returns) never
    complete a handshake with a server that lacks the secret, so the fake gets no request."""
    public, secret = zmq.curve_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        for curve in (True, False):
            fake, port = fake_kernel(ctx, curve=curve)
            client = ctx.socket(zmq.DEALER)
            client.linger = 0
            # As jupyter_client.connect._create_connected_socket sets them from the connection info.
            client.curve_secretkey, client.curve_publickey, client.curve_serverkey = secret, public, public
            client.connect(f"tcp://127.0.0.1:{port}")
            client.send(b"kernel_info_request")
            assert not fake.poll(1500), "the fake kernel received a request without the secret"
            client.close()
            fake.close()
        # Control: a server holding the attested secret gets the request.
        real = ctx.socket(zmq.ROUTER)
        real.linger = 0
        real.curve_publickey, real.curve_secretkey, real.curve_server = public, secret, True
        port = real.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        client.curve_secretkey, client.curve_publickey, client.curve_serverkey = secret, public, public
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"kernel_info_request")
        assert real.poll(10000)
        client.close()
        real.close()
    finally:
        ctx.term()


async def test_resident_agent_warm_kernel_serves_with_the_bound_key_and_a_fake_cannot_answer(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(sshd, tmp_path) as agent:
        config = provisioner_config(sshd, agent_socket=str(agent.socket), transport_encryption="auto")
        name = install_spec(kernel_dir, "cc-curve-res", config)
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            prov = km.provisioner
            assert isinstance(prov, ConfidentialProvisioner) and prov.attestation is not None
            state = prov.attestation_state()
            assert state["agent"]["resident"] is True and state["agent"]["warm"] is True
            info = km.get_connection_info()
            assert prov.attestation.curve_server_key == z85.decode(str(info["curve_publickey"]).encode())
            assert (await execute(km, "print('curve ok')"))["status"] == "ok"
            # The real client, pointed at a fake kernel on another loopback port, gets no reply.
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            fake, port = fake_kernel(ctx, curve=True)
            try:
                kc = km.client(shell_port=port)
                kc.start_channels()
                try:
                    kc.kernel_info()
                    assert not fake.poll(1500)
                finally:
                    kc.stop_channels()
            finally:
                fake.close()
                ctx.term()
        finally:
            await km.shutdown_kernel()


async def test_required_refuses_a_guest_that_binds_no_key_before_any_kernel_starts(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest whose libzmq has no CURVE (simulated in a real resident agent run in this process)
    binds no key: ``required`` refuses before ``start``, ``auto`` runs the kernel without Curve."""
    import threading

    from jupyter_cc.guest import agent as guest_agent
    from jupyter_cc.guest.resident import ResidentAgent
    from jupyter_cc.paths import data_dir
    from jupyter_cc.provisioner import KernelRefusedError

    monkeypatch.setattr(guest_agent, "_curve_keypair", lambda: None)
    sock = tmp_path / "agent" / "agent.sock"
    service = ResidentAgent(
        sock, tee="sim", host_key_file=sshd.host_pub, sim_dir=data_dir() / "sim", pool_size=0
    )
    serving = threading.Thread(target=service.serve_forever, daemon=True)
    serving.start()
    try:
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        required = install_spec(
            kernel_dir,
            "cc-curve-req",
            provisioner_config(sshd, agent_socket=str(sock), transport_encryption="required"),
        )
        km = AsyncKernelManager(kernel_name=required)
        with pytest.raises(KernelRefusedError, match="binds no CurveZMQ server key"):
            await km.start_kernel()
        assert service.status()["kernels"] == 0  # refused before start: no kernel was made
        auto = install_spec(
            kernel_dir,
            "cc-curve-auto",
            provisioner_config(sshd, agent_socket=str(sock), transport_encryption="auto"),
        )
        km = AsyncKernelManager(kernel_name=auto)
        await km.start_kernel()
        try:
            assert "curve_publickey" not in km.get_connection_info()
            assert (await execute(km, "1"))["status"] == "ok"
        finally:
            await km.shutdown_kernel()
    finally:
        service.shutdown()
        serving.join(timeout=30)
