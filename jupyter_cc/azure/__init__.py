"""Confidential VMs on demand in Azure: create, start, deallocate and delete them from a profile.

The modules, from pure to acting (only :mod:`.client` imports the Azure SDK, and only when it
first talks to Azure, so ``import jupyter_cc.azure`` works without the ``jupyter-cc[azure]``
extra):

- :mod:`.settings`: the ``[profiles.NAME.azure]`` table, parsed and checked.
- :mod:`.requests`: the ARM request bodies (VM, NIC, VNet, NSG, public IP), checked to be a
  confidential, encrypted VM before they are sent; what ``--dry-run`` prints.
- :mod:`.cloudinit`: the user data that installs jupyter-cc and its guest agent on the CVM.
- :mod:`.culling`: when ``idle_minutes`` and ``max_hours`` deallocate a CVM.
- :mod:`.client`: the real azure-mgmt-compute/network/resource clients with azure-identity.
- :mod:`.hostkey`: attest a new CVM over SSH, then pin its host key.
- :mod:`.lifecycle`: :class:`~jupyter_cc.azure.lifecycle.Cvm`, what ``jupyter-cc cvm`` calls.
- :mod:`.connect`: start a deallocated CVM for ``%cc connect`` and the kernel provisioner.
- :mod:`.hub`: a CVM per JupyterHub user, as ``AttestedSSHSpawner.remote_host_selector``.
- :mod:`.errors`: one sentence per failure, naming the resource and what to do.
"""

from __future__ import annotations
