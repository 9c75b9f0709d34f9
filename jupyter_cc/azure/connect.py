"""What ``%cc connect NAME`` does first when NAME's profile is an Azure CVM: make sure it runs.

:func:`running_profile` starts a stopped or deallocated CVM (telling ``progress`` each step, for
a notebook message), waits for ARM to report it running, and returns the profile that reaches
it: its address, the known_hosts its host key was pinned to, and the guest's Python. The
caller then connects and attests as for any profile, so the attestation rules are the usual
ones: a pinned key must match, an unknown key is accepted only when the evidence binds it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from jupyter_cc.azure.client import ArmEndpoint
from jupyter_cc.azure.lifecycle import Cvm, Progress

if TYPE_CHECKING:
    from jupyter_cc.profiles import Profile

__all__ = ["ENDPOINT_VAR", "endpoint_from_env", "running_profile"]

ENDPOINT_VAR = "JUPYTER_CC_ARM_ENDPOINT"
"""Names another Resource Manager (a sovereign cloud, a private endpoint); ``REQUESTS_CA_BUNDLE``
names the CA of its certificate."""


def endpoint_from_env() -> ArmEndpoint:
    """The ARM endpoint: ``$JUPYTER_CC_ARM_ENDPOINT``, else Azure's public cloud."""
    url = os.environ.get(ENDPOINT_VAR)
    return ArmEndpoint(base_url=url) if url else ArmEndpoint()


def running_profile(profile: Profile, *, progress: Progress | None = None) -> Profile:
    """``profile`` reaching its running CVM, started first if it was stopped or deallocated.

    Raises:
        CloudError: ARM refused or timed out (the sentence names the VM and what to do).
    """
    tell = progress or (lambda _line: None)
    cvm = Cvm(profile, endpoint=endpoint_from_env(), progress=tell)
    info = cvm.show()
    if info.power_state != "running":
        tell(f"starting the CVM {info.name} ({info.power_state}); this takes a minute or two")
        info = cvm.start(policy=None)  # the caller attests, over the connection it will use
        tell(f"the CVM {info.name} is running at {info.address}")
    return cvm.connect_profile(info)
