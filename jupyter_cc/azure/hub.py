"""A CVM per JupyterHub user, from one profile's azure table, for :class:`AttestedSSHSpawner`.

Set the spawner's ``remote_host_selector`` (a hook it already has) to :func:`cvm_per_user`::

    from jupyter_cc.azure.hub import cvm_per_user
    c.AttestedSSHSpawner.remote_host_selector = cvm_per_user("lab")
    c.AttestedSSHSpawner.ssh_user = "azureuser"           # the profile's admin user
    c.AttestedSSHSpawner.identity_file = "/srv/hub/id_ed25519"

On each spawn the user's CVM (the profile's VM name plus ``-<username>``) is created if it does
not exist, or started if it is deallocated; a new one is attested and its host key pinned in a
known_hosts file of its own, which the spawner then checks when it attests again on its own
connection. Deallocating idle CVMs is :meth:`~jupyter_cc.azure.lifecycle.Cvm.cull`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jupyter_cc.azure.connect import endpoint_from_env
from jupyter_cc.azure.errors import ArmError
from jupyter_cc.azure.hostkey import known_hosts_path
from jupyter_cc.azure.lifecycle import Cvm
from jupyter_cc.paths import data_dir

if TYPE_CHECKING:
    from jupyter_cc.profiles import Profile

__all__ = ["cvm_per_user", "user_profile"]

USER_TAG = "jupyterhub-user"


def user_profile(profile: Profile, username: str) -> Profile:
    """``profile`` with the user's own VM name, tag and known_hosts file."""
    assert profile.azure is not None
    slug = re.sub(r"[^a-z0-9-]+", "-", username.lower()).strip("-") or "user"
    base = profile.azure.vm_name(profile.name)
    name = f"{base}-{slug}"[:64].rstrip("-")
    azure = replace(profile.azure, name=name, tags=(*profile.azure.tags, (USER_TAG, username)))
    known = data_dir() / "azure" / f"{profile.name}--{slug}.known_hosts"
    return replace(profile, host=None, known_hosts=str(known), azure=azure)


def _ensure(profile_name: str, spawner: Any) -> str:
    """Create or start the spawning user's CVM; returns its address."""
    from jupyter_cc.policy import Policy
    from jupyter_cc.profiles import get_profile

    profile = user_profile(get_profile(profile_name), spawner.user.name)
    cvm = Cvm(profile, endpoint=endpoint_from_env(), progress=lambda line: spawner.log.info("%s", line))
    policy = Policy.load(profile.policy) if profile.policy else Policy()
    if cvm.arm.get("virtualMachine", cvm.names.vm) is None:
        info = cvm.create(policy=policy)
    else:
        info = cvm.show()
        if info.power_state != "running":
            info = cvm.start(policy=policy)
    spawner.known_hosts = str(known_hosts_path(profile))
    if profile.python:
        spawner.remote_python = profile.python
    if profile.port is not None:
        spawner.ssh_port = profile.port
    if info.address is None:
        raise ArmError(
            f"the CVM {info.name} has no address", hint="check its network interface in the portal"
        )
    return info.address


def cvm_per_user(profile_name: str) -> Callable[[Any, list[str]], Awaitable[str]]:
    """A ``remote_host_selector`` giving each Hub user a CVM of their own (see the module doc)."""

    async def select(spawner: Any, hosts: list[str]) -> str:
        return await asyncio.to_thread(_ensure, profile_name, spawner)

    return select
