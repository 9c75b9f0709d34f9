"""The ``agent`` transport for real: paramiko client and server over loopback TCP, the simulated TEE.

Attacks first: a relay presenting its own key, a guest that binds no transport key, a client with
a key the pod does not list, a password, a shell, a forward to a loopback service that is not
this connection's kernel, hostile authorized-keys input. Then the kernel: attested, started
through the agent, reached over the one SSH connection.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jupyter_client.blocking import BlockingKernelClient

from jupyter_cc.errors import BindingError, InputError
from jupyter_cc.guest import transport as guest_transport
from jupyter_cc.guest.agent import Agent
from jupyter_cc.guest.transport import (
    AUTHORIZED_KEYS_ENV,
    SUBSYSTEM,
    AgentSettings,
    TransportError,
    TransportServer,
    generate_host_key,
    load_authorized_keys,
    parse_authorized_keys,
)
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.paths import data_dir
from jupyter_cc.policy import Policy
from jupyter_cc.remote.agent_transport import AgentTransportConnection, AgentTransportLink
from jupyter_cc.remote.guest import GuestTarget
from jupyter_cc.remote.ssh import PREFERRED_CIPHERS, SshError, SshTarget, relay

pytestmark = pytest.mark.timeout(120)


def make_key(folder: Path, name: str) -> tuple[Path, str]:
    """An Ed25519 key pair: the private key file (0600) and its authorized_keys line."""
    private = Ed25519PrivateKey.generate()
    path = folder / name
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, public.decode() + " test@host"


@pytest.fixture
def client_key(tmp_path: Path) -> tuple[Path, str]:
    return make_key(tmp_path, "client_ed25519")


@pytest.fixture
def server(client_key: tuple[Path, str], sim_tee: Any) -> Iterator[TransportServer]:
    settings = AgentSettings(tee="sim", sim_dir=data_dir() / "sim")
    srv = TransportServer(parse_authorized_keys(client_key[1]), settings=settings).start()
    yield srv
    srv.close()


def target(port: int, identity: Path) -> GuestTarget:
    return GuestTarget.from_options(
        transport="agent", host="127.0.0.1", port=port, identity_file=str(identity), tee="sim", timeout=10
    )


def sim_policy() -> Policy:
    return Policy.load(str(simulated_policy_path()))


# --- attacks -----------------------------------------------------------------------------


class _Relay(paramiko.ServerInterface):
    """A man in the middle with its own host key, whose client key the real pod even accepts."""

    def __init__(self, upstream_port: int, upstream_identity: Path) -> None:
        self.upstream = AgentTransportConnection(
            SshTarget(host="127.0.0.1", port=upstream_port, identity_file=str(upstream_identity), timeout=10)
        )

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        self.upstream.connect()
        assert self.upstream.transport is not None
        up = self.upstream.transport.open_session()
        up.invoke_subsystem(name)
        a, b = socket.socketpair()
        threading.Thread(target=relay, args=(a, channel), daemon=True).start()
        threading.Thread(target=relay, args=(b, up), daemon=True).start()
        return True


def start_relay(upstream_port: int, identity: Path) -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    host_key = generate_host_key()

    def serve() -> None:
        sock, _ = listener.accept()
        t = paramiko.Transport(sock)
        t.add_server_key(host_key)
        t.start_server(server=_Relay(upstream_port, identity))
        kept = []  # paramiko holds channels weakly
        while t.is_active():
            kept.append(t.accept(timeout=1))

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_a_relay_presenting_another_key_is_refused_before_anything_is_sent(
    server: TransportServer, client_key: tuple[Path, str]
) -> None:
    listener, port = start_relay(server.port, client_key[0])
    try:
        link = target(port, client_key[0]).open()
        try:
            assert link.ssh is not None and not link.ssh.host_key_known
            with pytest.raises(BindingError, match="not the key this connection saw"):
                link.attest(sim_policy())
        finally:
            link.close()
    finally:
        listener.close()


def test_a_guest_that_binds_no_transport_key_is_refused(
    server: TransportServer, client_key: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent binding like the per-connection one (no sshd key, nothing else): genuine evidence
    # for this nonce, but it does not say the TEE holds the key of this connection.
    monkeypatch.setattr(guest_transport.TransportAgent, "_attest", Agent._attest)
    link = target(server.port, client_key[0]).open()
    try:
        with pytest.raises(BindingError, match="binds no transport key"):
            link.attest(sim_policy())
    finally:
        link.close()


def test_a_client_key_the_pod_does_not_list_is_refused(server: TransportServer, tmp_path: Path) -> None:
    other, _ = make_key(tmp_path, "stranger")
    with pytest.raises(SshError, match="refused the key"):
        target(server.port, other).open()


def test_passwords_shells_and_exec_are_refused(server: TransportServer, client_key: tuple[Path, str]) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password("root", "hunter2")
        t.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(client_key[0])))
        for ask in (
            lambda c: c.exec_command("id"),
            lambda c: c.invoke_shell(),
            lambda c: c.invoke_subsystem("sftp"),
        ):
            channel = t.open_session(timeout=10)
            with pytest.raises(paramiko.SSHException):
                ask(channel)
            channel.close()
        with pytest.raises(paramiko.SSHException):
            t.request_port_forward("127.0.0.1", 0)
    finally:
        t.close()


def test_forwards_reach_only_this_connections_kernel(
    server: TransportServer, client_key: tuple[Path, str]
) -> None:
    sidecar = socket.create_server(("127.0.0.1", 0))  # another loopback service of the pod
    link = target(server.port, client_key[0]).open()
    try:
        assert link.ssh is not None and link.ssh.transport is not None
        for port in (sidecar.getsockname()[1], server.port):
            with pytest.raises(paramiko.ChannelException):
                link.ssh.transport.open_channel(
                    "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 1), timeout=5
                )
    finally:
        link.close()
        sidecar.close()


def test_hostile_authorized_keys_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="no client key"):
        load_authorized_keys(None, environ={})
    with pytest.raises(InputError, match="options before the key"):
        parse_authorized_keys('command="sh" ssh-ed25519 AAAA x')
    keys = tmp_path / "keys"
    keys.write_text(make_key(tmp_path, "k")[1])
    keys.chmod(0o666)
    with pytest.raises(InputError, match="written by others"):
        load_authorized_keys(keys)
    link = tmp_path / "link"
    link.symlink_to(keys)
    with pytest.raises(InputError, match="not a regular file"):
        load_authorized_keys(link)
    keys.chmod(0o644)
    assert len(load_authorized_keys(keys)) == 1
    assert len(load_authorized_keys(None, environ={AUTHORIZED_KEYS_ENV: keys.read_text()})) == 1


def test_the_transport_key_is_made_at_start_and_shown_only_as_its_digest(server: TransportServer) -> None:
    other = TransportServer(server.authorized)
    try:
        assert other.key_sha256 != server.key_sha256  # a fresh key per start
        assert "PRIVATE" not in repr(server) and server.key_sha256.hex()[:16] in repr(server)
    finally:
        other.close()
    leftovers = [
        p for p in Path(data_dir()).rglob("*") if p.is_file() and b"OPENSSH PRIVATE" in p.read_bytes()
    ]
    assert leftovers == []


# --- the kernel over the attested connection ----------------------------------------------


def test_an_attested_kernel_runs_over_the_one_connection(
    server: TransportServer, client_key: tuple[Path, str]
) -> None:
    link = target(server.port, client_key[0]).open()
    try:
        assert isinstance(link, AgentTransportLink)
        assert link.ssh is not None
        assert link.ssh.transport is not None
        assert link.ssh.transport.remote_cipher in PREFERRED_CIPHERS[:2]
        attestation = link.attest(sim_policy())
        assert attestation.verdict.passed and attestation.claims.simulated
        assert attestation.host_key_sha256 == server.key_sha256
        answer = link.agent.request("start", env={"CC_TEST": "1"}, cwd=None, timeout=60)
        remote = answer["connection"]
        info = dict(remote)
        for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            info[name] = link.ssh.forward(remote[name])
        client = BlockingKernelClient()
        client.load_connection_info(info)
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            reply = client.execute_interactive("import os; print(os.environ['CC_TEST'])", timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            client.stop_channels()
    finally:
        link.close()


def test_the_provisioner_accepts_the_agent_transport() -> None:
    from jupyter_cc.provisioner import ConfidentialProvisioner

    assert "agent" in ConfidentialProvisioner.transport.values  # type: ignore[attr-defined]
    assert os.environ.get(AUTHORIZED_KEYS_ENV) is None  # nothing of the test leaks into the env
    assert SUBSYSTEM == "jupyter-cc-agent"


# --- CoCo: evidence through the pod's Attestation Agent, init-data bound -------------------


def _initdata(tmp_path: Path) -> tuple[str, bytes]:
    """A pod's init-data annotation and its digest (what the hypervisor puts in HOST_DATA)."""
    import hashlib

    from jupyter_cc.attest.pod import init_data_annotation_body
    from jupyter_cc.hub.kubernetes import coco_initdata
    from jupyter_cc.kbs.tls import ensure_identity

    pem = ensure_identity(tmp_path / "broker").cert_path.read_text()
    annotation = coco_initdata("kbs://kbs.example:8085", kbs_cert=pem)
    return annotation, hashlib.sha256(init_data_annotation_body(annotation).encode()).digest()


def test_a_coco_pod_attests_through_its_attestation_agent_and_binds_its_init_data(
    client_key: tuple[Path, str], sim_tee: Any, tmp_path: Path
) -> None:
    from jupyter_cc.attest.pod import check_pod_init_data
    from tests.support.fake_aa import FakeAttestationAgent

    annotation, digest = _initdata(tmp_path)
    aa = FakeAttestationAgent(sim_tee, tee="sample", host_data=digest).start()
    settings = AgentSettings(tee="sim", sim_dir=data_dir() / "sim", aa_url=aa.url)
    srv = TransportServer(parse_authorized_keys(client_key[1]), settings=settings).start()
    try:
        link = target(srv.port, client_key[0]).open()
        try:
            attestation = link.attest(sim_policy())
        finally:
            link.close()
        assert attestation.source == "coco-aa"
        assert any(p.startswith("/aa/evidence?runtime_data=") and "encoding=base64" in p for p in aa.requests)
        assert "aa.toml" in check_pod_init_data(attestation.claims, annotation)["data"]
        other, _ = _initdata(tmp_path / "other")  # another broker certificate: other init-data
        with pytest.raises(BindingError, match="init-data"):
            check_pod_init_data(attestation.claims, other)
    finally:
        srv.close()
        aa.stop()


def test_the_aa_source_refuses_what_is_not_a_tee_or_not_bound(sim_tee: Any) -> None:
    from jupyter_cc.errors import EvidenceError
    from jupyter_cc.guest.coco_aa import collect_coco_aa
    from jupyter_cc.guest.results import SourceUnavailableError
    from jupyter_cc.kbs.upstream import serialize_snp_report
    from tests.support.fake_aa import FakeAttestationAgent

    aa = FakeAttestationAgent(sim_tee, tee="sample").start()
    try:
        with pytest.raises(SourceUnavailableError, match="coco-dev has no TEE"):
            collect_coco_aa(bytes(64), url=aa.url)  # sample evidence without --tee sim
        with pytest.raises(SourceUnavailableError, match="loopback"):
            collect_coco_aa(bytes(64), url="http://10.0.0.5:8006")
        aa.tee = "snp"  # the upstream SNP format, parsed by the broker's reader
        got = collect_coco_aa(bytes(range(64)), url=aa.url)
        assert got.kind == "snp" and got.source == "coco-aa"
        stale = {"attestation_report": serialize_snp_report(sim_tee.mint(bytes(64))), "cert_chain": []}
        aa.evidence = lambda report_data: stale  # type: ignore[method-assign]
        with pytest.raises(EvidenceError, match="REPORT_DATA"):
            collect_coco_aa(bytes(range(64)), url=aa.url)  # an answer for other runtime data
    finally:
        aa.stop()


# --- the kernel provisioner with transport = "agent" --------------------------------------


async def test_a_confidential_kernelspec_runs_over_the_agent_transport(
    server: TransportServer, client_key: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.manager import AsyncKernelManager

    from tests.integration.test_remote_kernel import execute, install_spec

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    (tmp_path / "jupyter" / "kernels").mkdir(parents=True)
    config = {
        "transport": "agent",
        "host": "127.0.0.1",
        "port": server.port,
        "identity_file": str(client_key[0]),
        "tee": "sim",
        "policy": str(simulated_policy_path()),
    }
    name = install_spec(tmp_path / "jupyter" / "kernels", "cc-pod", config)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        state = km.provisioner.attestation_state()  # type: ignore[union-attr]
        assert state["confidential"] and state["verdict"]["passed"]
        reply = await execute(km, "print(6 * 7)")
        assert reply["status"] == "ok"
    finally:
        await km.shutdown_kernel(now=True)


def test_serve_transport_refuses_to_start_without_a_client_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != AUTHORIZED_KEYS_ENV}
    argv = [sys.executable, "-m", "jupyter_cc", "guest", "serve-transport", "--port", "0"]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert b"no client key to accept" in done.stderr and b"Traceback" not in done.stderr


def test_a_bound_transport_key_is_never_left_unchecked(
    server: TransportServer, client_key: tuple[Path, str]
) -> None:
    from jupyter_cc.remote.attestation import judge_bundle

    link = target(server.port, client_key[0]).open()
    try:
        assert isinstance(link, AgentTransportLink)
        nonce, raw, digest = link.request_evidence()
        with pytest.raises(BindingError, match="no way to check"):  # a judge that saw no transport key
            judge_bundle(raw, nonce=nonce, host_key_sha256=digest, policy=sim_policy())
        good = judge_bundle(
            raw,
            nonce=nonce,
            host_key_sha256=digest,
            policy=sim_policy(),
            transport_key_sha256=link.transport_key_sha256,
        )
        assert good.verdict.passed
    finally:
        link.close()
