"""A guest to attest: how to reach its agent (ssh or local) and the attestation over it.

The kernel provisioner, ``jupyter-cc attest`` and the magics all open guests through
:class:`GuestLink`, so they share one connect-and-attest path (design section 6).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jupyter_cc.attest.binding import host_key_digest
from jupyter_cc.errors import InputError
from jupyter_cc.guest.protocol import DEFAULT_SOCKET
from jupyter_cc.policy import Policy
from jupyter_cc.remote.attestation import Attestation, attest, request_evidence

if TYPE_CHECKING:  # paramiko (~0.2 s of imports) is loaded when a guest is opened, not before
    from jupyter_cc.remote.agent_client import AgentClient
    from jupyter_cc.remote.ssh import SshConnection, SshTarget

__all__ = ["DEFAULT_KNOWN_HOSTS", "GuestLink", "GuestTarget"]

log = logging.getLogger("jupyter_cc.remote")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass(frozen=True)
class GuestTarget:
    """Where the guest agent runs and how it collects evidence. No secrets here."""

    transport: str = "ssh"
    host: str = ""
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = DEFAULT_KNOWN_HOSTS
    host_key_file: str | None = None
    python: str = "python3"
    kernel_python: str | None = None
    tee: str = "auto"
    sim_dir: str | None = None
    timeout: float = 15.0
    #: The resident agent's socket in the guest (``{user}``: the SSH user); "" never tries one.
    agent_socket: str = DEFAULT_SOCKET

    @classmethod
    def from_options(
        cls,
        *,
        transport: str = "ssh",
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        identity_file: str | None = None,
        known_hosts: str | None = None,
        host_key_file: str | None = None,
        python: str | None = None,
        kernel_python: str | None = None,
        tee: str = "auto",
        sim_dir: str | None = None,
        timeout: float | None = None,
        agent_socket: str | None = None,
    ) -> GuestTarget:
        """The target that settings from anywhere describe: profiles, CLI options, the traits of
        :class:`~jupyter_cc.remote.target.CvmTargetTraits`. This is the one place that decides
        what an unset value means, so every face opens the same guest from the same settings.

        ``None`` (or an empty ``python``) means the default; the ``local`` transport has no host.
        ``known_hosts`` is taken as given: ``None`` checks no known_hosts file, so a caller
        that wants ``~/.ssh/known_hosts`` by default passes it.
        """
        return cls(
            transport=transport,
            host="" if transport == "local" else (host or ""),
            port=cls.port if port is None else port,
            user=user,
            identity_file=identity_file,
            known_hosts=known_hosts,
            host_key_file=host_key_file,
            python=python or cls.python,
            kernel_python=kernel_python,
            tee=tee,
            sim_dir=sim_dir,
            timeout=cls.timeout if timeout is None else timeout,
            agent_socket=cls.agent_socket if agent_socket is None else agent_socket,
        )

    def socket_path(self) -> str:
        """The resident agent's socket for this target's SSH user ("" when none is to be tried)."""
        login = self.user or os.environ.get("USER") or "root"  # as SshTarget.login
        return self.agent_socket.replace("{user}", login) if self.agent_socket else ""

    def ssh_target(self, *, known_hosts: bool = True) -> SshTarget:
        """Where and as whom to connect; without ``known_hosts`` every host key is provisional
        (the agent transport, whose key only the evidence can vouch for)."""
        from jupyter_cc.remote.ssh import SshTarget

        return SshTarget(
            host=self.host,
            port=self.port,
            user=self.user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts if known_hosts else None,
            timeout=self.timeout,
        )

    def open(self) -> GuestLink:
        """Connect (SSH, or a local process) and start the agent; nothing is trusted yet."""
        from jupyter_cc.remote.agent_client import AgentClient, agent_argv
        from jupyter_cc.remote.ssh import SshConnection

        python = self.python if self.transport == "ssh" else sys.executable
        argv = agent_argv(
            python,
            tee=self.tee,
            host_key_file=self.host_key_file,
            sim_dir=self.sim_dir,
            kernel_python=self.kernel_python,
        )
        if self.transport == "local":
            return GuestLink(None, AgentClient.local(argv))
        if self.transport == "agent":  # the guest agent's own SSH port in a pod (no sshd)
            from jupyter_cc.remote.agent_transport import open_agent_link

            return open_agent_link(self)
        if self.transport != "ssh":
            raise InputError(f"transport {self.transport!r} is not ssh, agent or local")
        if not self.host:
            raise InputError("no host to connect to", hint="set the CVM's host name or address")
        ssh = SshConnection(self.ssh_target()).connect()
        try:
            return self._agent_link(ssh, argv)
        except BaseException:
            ssh.close()
            raise

    def _agent_link(self, ssh: SshConnection, argv: list[str]) -> GuestLink:
        """The resident agent on its socket if one listens there, else a per-connection agent."""
        from jupyter_cc.remote.agent_client import AgentClient
        from jupyter_cc.remote.ssh import SshError

        path = self.socket_path()
        if path:
            try:
                return GuestLink(
                    ssh, AgentClient.over_streamlocal(ssh, path, timeout=self.timeout), resident=True
                )
            except SshError as exc:
                log.debug("no resident agent (%s): starting one for this connection", exc)
        return GuestLink(ssh, AgentClient.over_ssh(ssh, argv, timeout=self.timeout))


class GuestLink:
    """An open agent connection (and its SSH connection, for the ``ssh`` transport)."""

    def __init__(self, ssh: SshConnection | None, agent: AgentClient, *, resident: bool = False) -> None:
        self.ssh = ssh
        self.agent = agent
        #: Whether the agent is the resident service (kernels outlive this connection).
        self.resident = resident
        #: Whether :meth:`attest` asks the agent to make and bind the next kernel's CurveZMQ key
        #: pair (the provisioner's ``transport_encryption``; links of other transports ignore it).
        self.curve = False

    def __repr__(self) -> str:
        return f"GuestLink({self.ssh!r}, {self.agent!r}, resident={self.resident})"

    @property
    def alive(self) -> bool:
        """Whether the agent connection (and its SSH transport) still works, as far as is known."""
        return not self.agent.closed and (self.ssh is None or self.ssh.alive)

    def attest(self, policy: Policy) -> Attestation:
        """Fresh evidence bound to this connection's host key, verified and appraised; with
        :attr:`curve` set, also binding the next kernel's CurveZMQ server key, made in the TEE."""
        key = self.ssh.host_key if self.ssh is not None else None
        return attest(
            self.agent,
            host_key_blob=key.asbytes() if key is not None else None,
            host_key_type=key.get_name() if key is not None else None,
            policy=policy,
            curve=self.curve,
        )

    def request_evidence(self) -> tuple[bytes, bytes, bytes]:
        """Unverified evidence for a caller that keeps the raw bundle: (nonce, bundle, host key
        digest the bundle must bind; 32 zero bytes for the local transport)."""
        key = self.ssh.host_key if self.ssh is not None else None
        nonce, raw = request_evidence(self.agent, host_key_type=key.get_name() if key is not None else None)
        return nonce, raw, host_key_digest(key.asbytes() if key is not None else None)

    def close(self) -> None:
        """Say ``bye`` (the agent stops the kernel) and close the connection."""
        self.agent.close()
        if self.ssh is not None:
            self.ssh.close()

    def abandon(self) -> None:
        """Close a lost connection without ``bye``, keeping its forwards' listeners for a new one."""
        self.agent.abandon()
        if self.ssh is not None and self.ssh.transport is not None:
            self.ssh.transport.close()
            self.ssh.transport = None
