"""jupyter-cc: confidential computing for Jupyter.

Attested kernels in confidential VMs, key release only to attested TEEs, sealed data. The
evidence core lives in :mod:`jupyter_cc.attest` (parse and verify), :mod:`jupyter_cc.policy`
(appraise) and :mod:`jupyter_cc.cli` (``jupyter-cc verify``).
"""

from __future__ import annotations

# typing costs ~8 ms to import, and this package is imported before the guest agent starts its
# prepared kernel process (jupyter_cc.guest.__main__); the annotations need it only when checked.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_ipython_extension"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server's entry point: this package is the server extension (jupyter_cc.server)."""
    return [{"module": "jupyter_cc"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """jupyter_server's loader: register the attestation REST API (jupyter_cc.server.load)."""
    from jupyter_cc.server import load

    load(serverapp)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_cc``: the confidential-computing magics (loaded in confidential kernels)."""
    from jupyter_cc.notebook import register

    register(ipython)
