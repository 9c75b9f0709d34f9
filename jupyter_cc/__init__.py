"""jupyter-cc: confidential computing for Jupyter.

Attested kernels in confidential VMs, key release only to attested TEEs, sealed data. The
evidence core lives in :mod:`jupyter_cc.attest` (parse and verify), :mod:`jupyter_cc.policy`
(appraise) and :mod:`jupyter_cc.cli` (``jupyter-cc verify``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
