"""Pattern 2 of docs/jupyterhub.md: confidential kernels offered in every ordinary user server.

The user's server runs wherever the Hub's spawner puts it; only the kernels run in the CVM.
:func:`confidential_kernels` writes confidential kernelspecs (provisioner config) where user
servers find them, and the provisioner attests before every kernel start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_cc.errors import InputError
from jupyter_cc.kernelspec import kernelspec

__all__ = ["confidential_kernels"]


def confidential_kernels(
    c: Any,
    kernelspecs: Mapping[str, Mapping[str, Any]],
    *,
    spawner: str = "Spawner",
    folder: str = "/usr/local/share/jupyter/jupyter-cc-kernels",
    display_names: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Offer confidential kernels in every ordinary user server; returns the kernel.json by name.

    ``kernelspecs`` maps a kernel name to its provisioner config (what ``jupyter-cc kernelspec
    install`` writes: host, policy, tee, ...; or ``Profile.provisioner_config()``). The specs are
    written under ``folder/kernels/<name>/kernel.json`` on the Hub host, and ``folder`` is
    prepended to ``JUPYTER_PATH`` in ``c.<spawner>.environment``; spawners that run servers
    elsewhere (containers, other hosts) must make ``folder`` available there at the same path
    (an image layer or a volume) — or set ``folder`` to where the image already has them.
    The kernel, not the server, runs in the CVM: the provisioner attests before every start.
    """
    specs: dict[str, dict[str, Any]] = {}
    for name, config in kernelspecs.items():
        title = (display_names or {}).get(name) or f"Confidential Python ({name})"
        specs[name] = kernelspec(title, dict(config))
    root = Path(folder)
    for name, spec in specs.items():
        target = root / "kernels" / name
        try:
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / "kernel.json.tmp"
            tmp.write_text(json.dumps(spec, indent=1) + "\n")
            os.replace(tmp, target / "kernel.json")
        except OSError as exc:
            raise InputError(
                f"cannot write the kernelspec {target} ({exc.strerror or exc})",
                hint="choose a folder the Hub can write and user servers can read",
            ) from None
    section = getattr(c, spawner)
    env = dict(section.environment) if "environment" in section else {}
    path = env.get("JUPYTER_PATH", "")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(root), path) if p)
    section.environment = env
    return specs
