"""A real OpenSSH sshd on a free loopback port, with its own config and keys, for tests.

It stands in for the confidential VM's sshd: the guest agent runs behind it with the simulated
TEE, binding this sshd's host key exactly as a real guest binds its own.

:func:`guest_sshd` starts one; the session fixture ``sshd`` is the one
every test module shares (declared in ``tests/conftest.py``). Tests that stop or break
their sshd start their own with :func:`guest_sshd`; :func:`sim_profile` is how tests reach it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_cc.paths import data_dir
from jupyter_cc.profiles import Profile

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class Sshd:
    """A running sshd and the client-side files to reach it."""

    dir: Path
    port: int
    user: str
    identity_file: Path
    host_pub: Path
    known_hosts: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, directory: Path, *, env: dict[str, str] | None = None) -> Sshd:
        """Keys and config in ``directory``; ``env`` is set for every session (sshd SetEnv)."""
        directory.mkdir(parents=True, exist_ok=True)
        keygen(directory / "host_ed25519")
        keygen(directory / "client_ed25519")
        (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
        port = free_port()
        host_pub = directory / "host_ed25519.pub"
        known = directory / "known_hosts"
        key_type, key_b64 = host_pub.read_text().split()[:2]
        known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
        (directory / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {directory / 'host_ed25519'}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    f"PidFile {directory / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    # The resident guest agent is reached on its Unix socket (direct-streamlocal).
                    "AllowStreamLocalForwarding yes",
                    "LogLevel ERROR",
                    # One SetEnv line: sshd keeps only the first of several.
                    *(["SetEnv " + " ".join(f"{k}={v}" for k, v in env.items())] if env else []),
                    "",
                ]
            )
        )
        user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        )
        return cls(directory, port, user, directory / "client_ed25519", host_pub, known)

    def start(self) -> Sshd:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.dir / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def guest_sshd(folder: Path) -> Sshd:
    """A started sshd standing in for a CVM, whose sessions use this test run's data dir (so
    the guest finds the same simulated TEE) and write their own audit log in ``folder``."""
    if not Path(SSHD).exists():
        from tests.support.env import need_tool

        need_tool("OpenSSH sshd (Debian openssh-server)")
    env = {
        "JUPYTER_DATA_DIR": os.environ["JUPYTER_DATA_DIR"],
        "JUPYTER_CC_AUDIT_LOG": str(folder / "guest-audit.jsonl"),
    }
    return Sshd.create(folder, env=env).start()


def sim_profile(sshd: Sshd, name: str, *, policy: Path | None = None) -> Profile:
    """A profile that reaches the simulated guest behind ``sshd`` with this Python."""
    return Profile(
        name=name,
        transport="ssh",
        host="127.0.0.1",
        port=sshd.port,
        identity_file=str(sshd.identity_file),
        known_hosts=str(sshd.known_hosts),
        host_key_file=str(sshd.host_pub),
        policy=str(policy) if policy is not None else None,
        python=sys.executable,
        tee="sim",
        sim_dir=str(data_dir() / "sim"),
    )


def sim_guest_options(sshd: Sshd) -> list[str]:
    """The command-line options (after the host) that reach the simulated guest behind ``sshd``."""
    return [
        "--port",
        str(sshd.port),
        "--identity-file",
        str(sshd.identity_file),
        "--known-hosts",
        str(sshd.known_hosts),
        "--host-key-file",
        str(sshd.host_pub),
        "--python",
        sys.executable,
        "--tee",
        "sim",
        "--sim-dir",
        str(data_dir() / "sim"),
    ]


def sim_guest_traits(sshd: Sshd) -> dict[str, object]:
    """The settings the provisioner and the Hub spawner share for the simulated guest behind
    ``sshd``, under a policy that allows simulation."""
    from jupyter_cc.kernelspec import simulated_policy_path

    return {
        "identity_file": str(sshd.identity_file),
        "known_hosts": str(sshd.known_hosts),
        "host_key_file": str(sshd.host_pub),
        "remote_python": sys.executable,
        "tee": "sim",
        "sim_dir": str(data_dir() / "sim"),
        "policy": str(simulated_policy_path()),
    }
