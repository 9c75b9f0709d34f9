"""The cloud-init user data a new CVM boots with: jupyter-cc and its resident guest agent, nothing else.

The CVM installs the jupyter-cc version this host runs (so host and guest speak the same
protocol) into its own virtual environment, then ``jupyter-cc guest install-service`` sets up
the resident guest agent. There is no secret in it: Azure stores custom data in the clear, and
keys reach the CVM only after attestation, through the key broker.

>>> print(user_data("jupyter-cc==0.1.0").splitlines()[0])
#cloud-config
"""

from __future__ import annotations

import base64
import json

from jupyter_cc import __version__
from jupyter_cc.errors import InputError

__all__ = ["GUEST_PYTHON", "GUEST_VENV", "custom_data", "guest_requirement", "user_data"]

GUEST_VENV = "/opt/jupyter-cc"
GUEST_PYTHON = f"{GUEST_VENV}/bin/python"
"""The Python with jupyter-cc on a CVM this module set up (a profile's ``python`` by default)."""


def guest_requirement(override: str | None = None) -> str:
    """The pip requirement the CVM installs: ``override``, else ``jupyter-cc==<this version>``.

    Raises:
        InputError: this host runs a local build (``+`` in its version), which no index has.
    """
    if override:
        return override
    if "+" in __version__:
        raise InputError(
            f"this host runs a local build of jupyter-cc ({__version__}) that the CVM cannot install",
            hint="set guest_package in the profile's azure table to a requirement or wheel URL "
            "the CVM can reach",
        )
    return f"jupyter-cc=={__version__}"


def user_data(requirement: str) -> str:
    """The ``#cloud-config`` document (YAML, written as JSON values so nothing needs quoting rules)."""
    commands = [
        ["python3", "-m", "venv", GUEST_VENV],
        [f"{GUEST_VENV}/bin/pip", "install", "--no-input", requirement],
        [f"{GUEST_VENV}/bin/jupyter-cc", "guest", "install-service"],
    ]
    lines = [
        "#cloud-config",
        "package_update: true",
        "packages: " + json.dumps(["python3-venv"]),
        "runcmd:",
        *(f"  - {json.dumps(c)}" for c in commands),
    ]
    return "\n".join(lines) + "\n"


def custom_data(requirement: str) -> str:
    """``osProfile.customData``: the user data, base64 as ARM wants it."""
    return base64.b64encode(user_data(requirement).encode()).decode("ascii")
