"""JupyterHub integration: single-user servers in attested confidential VMs, and confidential
kernels for ordinary servers. One module per pattern of docs/jupyterhub.md:

- :mod:`jupyter_cc.hub.spawner` (pattern 1, the whole server in the TEE):
  :class:`AttestedSSHSpawner` attests a CVM over SSH, then starts ``jupyterhub-singleuser`` in
  it; :mod:`jupyter_cc.hub.options` is its per-user profile choice and spawn form.
- :mod:`jupyter_cc.hub.kernels` (pattern 2, the kernel in the TEE): :func:`confidential_kernels`
  installs confidential kernelspecs into every ordinary user server.
- :mod:`jupyter_cc.hub.kubernetes` (pattern 3): KubeSpawner profiles for confidential ACI and
  Confidential Containers runtime classes; :mod:`jupyter_cc.hub.kube_spawner`'s
  :class:`AttestedKubeSpawner` attests those pods through the agent transport before routing.

``jupyterhub_config.py`` names them from here (``jupyter_cc.hub.AttestedSSHSpawner``); see
docs/jupyterhub.md for a complete configuration per pattern.
"""

from __future__ import annotations

from jupyter_cc.hub.kernels import confidential_kernels
from jupyter_cc.hub.kube_spawner import AttestedKubeSpawner
from jupyter_cc.hub.spawner import AttestedSSHSpawner, SpawnRefusedError

__all__ = ["AttestedKubeSpawner", "AttestedSSHSpawner", "SpawnRefusedError", "confidential_kernels"]
