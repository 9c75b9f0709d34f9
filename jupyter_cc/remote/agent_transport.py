"""The ``agent`` transport's client: SSH to the guest agent itself (no sshd), attested by its key.

The server is :mod:`jupyter_cc.guest.transport` (``jupyter-cc guest serve-transport``), run in a
confidential pod. The connection is an ordinary SSH connection made with paramiko
(:class:`~jupyter_cc.remote.ssh.SshConnection`: AES-GCM first, the client authenticated by its
private key or ssh-agent, never a password), with three differences:

- the server's host key is made in the TEE at each start, so no known_hosts entry can vouch for
  it: it is always only *provisional* (:attr:`host_key_known` is False) until attestation proves
  the TEE holds it;
- the agent is reached on a session channel asking for the subsystem
  :data:`~jupyter_cc.guest.transport.SUBSYSTEM` (no shell, no command line);
- the evidence binds the key under the ``transport-key`` label of the REPORT_DATA input (design
  section 6) and ``ssh-host-key`` is 32 zero bytes. :func:`check_transport_binding` requires the
  bound key to be the one seen in this handshake, so a relay presenting another key, or a bundle
  that binds no transport key at all, is refused before anything of the user's is sent.

Kernel ports are forwarded over the one connection (``direct-tcpip``), as with ``ssh``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import paramiko

from jupyter_cc.attest.binding import host_key_digest
from jupyter_cc.attest.evidence import parse_bundle
from jupyter_cc.guest.transport import SUBSYSTEM, TRANSPORT_KEY_LABEL
from jupyter_cc.policy import Policy
from jupyter_cc.remote.agent_client import AgentClient
from jupyter_cc.remote.attestation import (
    Attestation,
    PolicyRejectedError,
    check_transport_key,
    judge_bundle,
    request_evidence,
)
from jupyter_cc.remote.guest import GuestLink
from jupyter_cc.remote.ssh import SshConnection, SshError

if TYPE_CHECKING:
    from jupyter_cc.collateral.service import CollateralService
    from jupyter_cc.remote.guest import GuestTarget

__all__ = [
    "AgentTransportConnection",
    "AgentTransportLink",
    "attest_transport",
    "check_transport_binding",
    "open_agent_link",
]

log = logging.getLogger("jupyter_cc.remote")


def check_transport_binding(raw: bytes, key_blob: bytes) -> None:
    """The bundle must bind, as ``transport-key``, the key seen in this connection's handshake.

    Only the bundle's claim is read here (to refuse before any collateral is fetched);
    :func:`~jupyter_cc.remote.attestation.judge_bundle`, given the same digest, checks it again
    and proves REPORT_DATA covers it, so together they prove the TEE holds this very key.

    Raises:
        FormatError: the bundle is malformed.
        BindingError: no transport key is bound, or another one (a relay with its own key).
    """
    check_transport_key(parse_bundle(raw).bound.get(TRANSPORT_KEY_LABEL), hashlib.sha256(key_blob).digest())


def attest_transport(
    agent: AgentClient,
    *,
    key_blob: bytes,
    policy: Policy,
    at: datetime | None = None,
    collateral: CollateralService | None = None,
) -> Attestation:
    """Fresh evidence from ``agent``, bound to a new nonce and the transport key, judged.

    Raises:
        EvidenceError: invalid or stale evidence, or not bound to this nonce and key.
        PolicyRejectedError: genuine evidence that ``policy`` does not accept.
    """
    nonce, raw = request_evidence(agent, host_key_type=None)
    check_transport_binding(raw, key_blob)
    attestation = judge_bundle(
        raw,
        nonce=nonce,
        host_key_sha256=host_key_digest(None),
        policy=policy,
        at=at,
        collateral=collateral,
        transport_key_sha256=hashlib.sha256(key_blob).digest(),
    )
    if not attestation.verdict.passed:
        raise PolicyRejectedError(attestation.verdict, attestation.claims)
    return replace(attestation, host_key_sha256=hashlib.sha256(key_blob).digest())


class AgentTransportConnection(SshConnection):
    """An SSH connection to a guest agent transport; the host key is never taken from known_hosts."""

    def __repr__(self) -> str:
        return f"AgentTransportConnection({self.target.host}:{self.target.port})"

    def _check_host_key(self) -> None:
        # Made in the TEE at each start: only the evidence can vouch for it (fail closed).
        self.host_key_known = False

    def open_agent(self, *, timeout: float) -> AgentClient:
        """The guest agent on a new session channel (subsystem :data:`SUBSYSTEM`)."""
        assert self.transport is not None
        try:
            channel = self.transport.open_session(timeout=timeout)
            channel.invoke_subsystem(SUBSYSTEM)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshError(
                f"the agent transport on {self.target.host}:{self.target.port} refused the agent ({exc})"
            ) from None
        return AgentClient._on_channel(self, channel, timeout=timeout, what="pod guest agent")


class AgentTransportLink(GuestLink):
    """A :class:`GuestLink` whose attestation binds the transport key, not an sshd host key."""

    def attest(self, policy: Policy) -> Attestation:
        assert self.ssh is not None
        return attest_transport(self.agent, key_blob=self.ssh.host_key.asbytes(), policy=policy)

    @property
    def transport_key_sha256(self) -> bytes:
        """SHA-256 of the transport key seen in this connection's handshake."""
        assert self.ssh is not None
        return hashlib.sha256(self.ssh.host_key.asbytes()).digest()

    def request_evidence(self) -> tuple[bytes, bytes, bytes]:
        """Unverified evidence whose ``transport-key`` was checked against this connection's key;
        the caller judges it with the 32 zero bytes returned as the host key digest and
        ``transport_key_sha256=`` :attr:`transport_key_sha256` (without it, judge_bundle refuses)."""
        assert self.ssh is not None
        nonce, raw = request_evidence(self.agent, host_key_type=None)
        check_transport_binding(raw, self.ssh.host_key.asbytes())
        return nonce, raw, host_key_digest(None)


def open_agent_link(target: GuestTarget) -> AgentTransportLink:
    """Connect to ``target``'s agent transport and open its agent; nothing is trusted yet.

    Raises:
        InputError: no host, or an unreadable identity file.
        SshError: the port cannot be reached, the key was refused, or no agent channel opens.
    """
    from jupyter_cc.errors import InputError

    if not target.host:
        raise InputError("no host to connect to", hint="set the pod's address")
    conn = AgentTransportConnection(target.ssh_target(known_hosts=False))
    conn.connect()
    try:
        return AgentTransportLink(conn, conn.open_agent(timeout=target.timeout))
    except BaseException:
        conn.close()
        raise
