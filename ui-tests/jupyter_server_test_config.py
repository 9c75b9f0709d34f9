"""Jupyter server configuration for the galata UI tests (``jlpm start`` in ui-tests/).

Everything the tests need is set up here, in a temporary folder, so the tests touch neither the
user's kernelspecs nor their audit log:

- ``cc-sim``: the simulated confidential kernel (what ``jupyter-cc kernelspec install-sim``
  installs: local transport, simulated TEE, the shipped policy with ``allow_simulated = true``);
- ``cc-sim-refused``: the same kernel with no policy, so the default policy refuses the
  simulated TEE when the kernel starts;
- ``JUPYTER_DATA_DIR`` (simulated TEE roots, audit log) in the temporary folder.

Never use this configuration outside tests: galata's settings remove all security protections.
"""

import os
import sys
from pathlib import Path
from tempfile import mkdtemp

from jupyterlab.galata import configure_jupyter_server

c = get_config()  # noqa: F821 (defined by the config loader)

configure_jupyter_server(c)

if hasattr(os, "geteuid") and os.geteuid() == 0:
    c.ServerApp.allow_root = True  # CI runs as root; the server refuses to otherwise

_tmp = Path(os.environ.get("JUPYTER_CC_UI_TMP") or mkdtemp(prefix="jupyter-cc-ui-"))
os.environ["JUPYTER_DATA_DIR"] = str(_tmp / "data")
_prefix = _tmp / "prefix"
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    p for p in (str(_prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")) if p
)

from jupyter_cc.kernelspec import install, kernelspec, simulated_policy_path  # noqa: E402

install(
    "cc-sim",
    kernelspec(
        "Confidential Python (simulated)",
        {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())},
    ),
    prefix=str(_prefix),
)
install(
    "cc-sim-refused",
    kernelspec("Confidential Python (refused)", {"transport": "local", "tee": "sim"}),
    prefix=str(_prefix),
)

# The kernels run `python3`-side code from this interpreter's environment.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
c.ServerApp.jpserver_extensions = {"jupyter_cc": True}
