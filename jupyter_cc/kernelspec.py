"""Kernelspecs that name ``confidential-provisioner``: build them and install them.

A confidential kernelspec is an ordinary kernel.json whose ``metadata.kernel_provisioner``
names our provisioner and carries its configuration (host, policy, TEE choice...), with
``interrupt_mode: message`` so interrupts travel through the tunnel. ``argv`` is informational:
the provisioner starts ipykernel in the guest itself.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from jupyter_cc.errors import InputError
from jupyter_cc.policy import Policy

__all__ = ["POD_PROVISIONER_NAME", "PROVISIONER_NAME", "install", "kernelspec", "simulated_policy_path"]

PROVISIONER_NAME = "confidential-provisioner"
#: A kernel per confidential pod (:mod:`jupyter_cc.pod_provisioner`).
POD_PROVISIONER_NAME = "confidential-pod"
_NAME = re.compile(r"\A[a-zA-Z0-9._-]+\Z")


def simulated_policy_path() -> Path:
    """The shipped policy that accepts the simulated TEE (and only it)."""
    return Path(str(resources.files("jupyter_cc") / "policies" / "simulated.toml"))


def provisioner_config(transport: str, tee: str, **traits: Any) -> dict[str, Any]:
    """A kernelspec's ``metadata.kernel_provisioner.config``: ``transport``, ``tee``, then each
    of ``traits`` (the provisioner's, ``user``, ``remote_python``, ...) that is not None; unset
    ones are left out so the provisioner's defaults apply."""
    config: dict[str, Any] = {"transport": transport, "tee": tee}
    config.update((key, value) for key, value in traits.items() if value is not None)
    return config


def kernelspec(
    display_name: str, config: dict[str, Any], provisioner: str = PROVISIONER_NAME
) -> dict[str, Any]:
    """kernel.json content for a confidential kernel with ``provisioner`` and its ``config``."""
    if config.get("policy"):
        policy_path = Path(str(config["policy"])).expanduser().resolve()
        Policy.load(policy_path)  # refuse a broken policy now, not at the first kernel start
        config = {**config, "policy": str(policy_path)}
    return {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "message",
        "env": {},
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": provisioner, "config": config},
        },
    }


def install(
    name: str,
    spec: dict[str, Any],
    *,
    user: bool = False,
    prefix: str | None = None,
) -> str:
    """Install ``spec`` as kernel ``name``; returns the folder it was installed in."""
    if not _NAME.match(name):
        raise InputError(
            f"kernel name {name!r} may only hold letters, digits, '.', '_' and '-'",
            hint="choose a name like cc-prod-snp",
        )
    tmp = Path(tempfile.mkdtemp(prefix="jupyter-cc-spec-"))
    try:
        (tmp / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        try:
            return str(KernelSpecManager().install_kernel_spec(str(tmp), name, user=user, prefix=prefix))
        except OSError as exc:
            raise InputError(
                f"cannot install the kernelspec {name} ({exc.strerror or exc})",
                hint="use --user, or --prefix with a folder you can write",
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
