"""How to reach a confidential VM, as configuration: the traits the provisioner and the spawner share.

:class:`CvmTargetTraits` holds what a kernelspec's provisioner ``config`` and a
``c.AttestedSSHSpawner`` section both say about the CVM (key files, the policy, the guest's
Python, the TEE choice...), with one help text each, and :meth:`CvmTargetTraits.guest_target`
turns them into the :class:`~jupyter_cc.remote.guest.GuestTarget` that opens the guest agent.

The SSH user and port are not traits here, because their names differ for a reason:
JupyterHub's ``Spawner`` already owns traits called ``user`` (the Hub user) and ``port`` (the
single-user server's port), so :class:`~jupyter_cc.hub.spawner.AttestedSSHSpawner` names them
``ssh_user`` and ``ssh_port``, while the provisioner keeps ``user`` and ``port`` because they are
kernel.json ``config`` keys that installed kernelspecs already use. Each class declares its two
and passes them to :meth:`~CvmTargetTraits.guest_target`.
"""

from __future__ import annotations

from traitlets import Enum, Float, HasTraits, Unicode

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.guest.protocol import DEFAULT_SOCKET
from jupyter_cc.remote.guest import DEFAULT_KNOWN_HOSTS, GuestTarget

__all__ = ["CvmTargetTraits"]


class CvmTargetTraits(HasTraits):
    """Traits naming a CVM's guest agent and how to judge it; mixed into configurable classes.

    A plain :class:`~traitlets.HasTraits` (not a ``Configurable``), so it adds no config section
    of its own: the traits are set as ``c.AttestedSSHSpawner.<name>`` or as kernel.json keys.
    """

    identity_file = Unicode(
        "", config=True, help="private key file for SSH (default: ssh-agent); the spawner expands {username}"
    )
    known_hosts = Unicode(DEFAULT_KNOWN_HOSTS, config=True, help="known_hosts file checked first")
    host_key_file = Unicode("", config=True, help="path ON THE CVM of the sshd public key to bind")
    policy = Unicode("", config=True, help="TOML policy file (default: the safe default policy)")
    remote_python = Unicode(
        "python3",
        config=True,
        help="Python on the CVM with jupyter-cc installed (and jupyterhub, for the spawner)",
    )
    tee = Enum(
        list(TEE_CHOICES),
        default_value="auto",
        config=True,
        help="evidence source in the guest; sim only when asked",
    )
    sim_dir = Unicode("", config=True, help="simulated TEE folder in the guest (tee sim; tests only)")
    connect_timeout = Float(15.0, config=True, help="seconds for SSH connect and each agent request")
    agent_socket = Unicode(
        DEFAULT_SOCKET,
        config=True,
        help="the resident guest agent's Unix socket on the CVM ({user}: the SSH user; '' never tries one)",
    )

    def _expand(self, value: str) -> str:
        """A user-given value as it applies to this target; the spawner expands ``{username}``."""
        return value

    def guest_target(
        self,
        *,
        host: str,
        port: int,
        user: str,
        transport: str = "ssh",
        kernel_python: str = "",
    ) -> GuestTarget:
        """The target these traits describe, with the SSH ``host``, ``port`` and ``user`` given.

        Empty strings mean "not set", so the guest's or SSH's own default applies.
        """
        return GuestTarget.from_options(
            transport=transport,
            host=host,
            port=port,
            user=self._expand(user) or None,
            identity_file=self._expand(self.identity_file) or None,
            known_hosts=self.known_hosts or None,
            host_key_file=self.host_key_file or None,
            python=self.remote_python,
            kernel_python=kernel_python or None,
            tee=self.tee,
            sim_dir=self.sim_dir or None,
            timeout=self.connect_timeout,
            agent_socket=self.agent_socket,
        )
