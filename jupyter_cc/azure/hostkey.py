"""A new CVM's SSH host key: never trusted on first use, pinned once attestation binds it.

:func:`attest_and_pin` waits for the CVM's sshd and guest agent, attests over that very
connection (the evidence binds the host key's digest: the provisioner's rule, see
:mod:`jupyter_cc.remote.ssh`), and only then writes the key to the profile's known_hosts, so the
next connection checks it like any known host. :func:`unpin` forgets it when the CVM is deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_cc.azure.errors import NotAttestedError
from jupyter_cc.errors import CCError, EvidenceError
from jupyter_cc.paths import data_dir

if TYPE_CHECKING:
    from jupyter_cc.policy import Policy
    from jupyter_cc.profiles import Profile
    from jupyter_cc.remote.attestation import Attestation

__all__ = ["attest_and_pin", "known_hosts_name", "known_hosts_path", "unpin"]


def known_hosts_path(profile: Profile) -> Path:
    """The profile's known_hosts, or ``<data dir>/azure/NAME.known_hosts`` when it names none."""
    if profile.known_hosts:
        return Path(profile.known_hosts).expanduser()
    return data_dir() / "azure" / f"{profile.name}.known_hosts"


def known_hosts_name(host: str, port: int) -> str:
    """The host as known_hosts writes it (``[host]:port`` unless the port is 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def _pin(path: Path, name: str, key_type: str, key_b64: str) -> None:
    unpin(path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{name} {key_type} {key_b64}\n")


def unpin(path: Path, name: str) -> None:
    """Remove every known_hosts line for ``name`` (a rebuilt CVM has a new key)."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = [line for line in lines if name not in line.split(" ", 1)[0].split(",")]
    if kept != lines:
        path.write_text("".join(kept))


def attest_and_pin(
    profile: Profile,
    address: str,
    policy: Policy,
    *,
    timeout: float,
    interval: float = 5.0,
    on_wait: Callable[[str], None] | None = None,
) -> Attestation:
    """Attest the CVM at ``address`` and pin its host key; retried until ``timeout`` seconds.

    Evidence that does not verify, or that the policy rejects, ends the wait at once.

    Raises:
        NotAttestedError: the CVM did not attest in time (the last failure is in the sentence).
        EvidenceError, PolicyRejectedError: the CVM answered with evidence that fails.
    """
    from jupyter_cc.remote.attestation import PolicyRejectedError

    known = known_hosts_path(profile)
    target = replace(profile, host=address, known_hosts=str(known)).to_guest_target()
    deadline = time.monotonic() + timeout
    while True:
        try:
            link = target.open()
            try:
                result = link.attest(policy)
                ssh = link.ssh
                if ssh is not None and not ssh.host_key_known:
                    key = ssh.host_key
                    _pin(known, known_hosts_name(address, target.port), key.get_name(), key.get_base64())
                return result
            finally:
                link.close()
        except (EvidenceError, PolicyRejectedError):
            raise
        except CCError as exc:
            last = exc.diagnostics()
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAttestedError(
                f"the CVM {profile.name} at {address} is running (and billed) but did not attest "
                f"within {timeout:.0f} s (last: {last.rstrip('.')})",
                hint=f"check its boot diagnostics, then 'jupyter-cc cvm deallocate {profile.name}' "
                f"or 'jupyter-cc cvm delete {profile.name}'",
            )
        if on_wait is not None:
            on_wait(f"waiting for {address} to attest ({last.rstrip('.')})")
        time.sleep(min(interval, left))
