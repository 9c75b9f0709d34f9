"""Jupyter server configuration for the galata UI tests (``jlpm start`` in ui-tests/).

Everything the tests need is set up here, in a temporary folder, so the tests touch neither the
user's kernelspecs nor their audit log:

- ``cc-sim``: the simulated confidential kernel (what ``jupyter-cc kernelspec install-sim``
  installs: local transport, simulated TEE, the shipped policy with ``allow_simulated = true``);
- ``cc-sim-refused``: the same kernel with no policy, so the default policy refuses the
  simulated TEE when the kernel starts;
- ``cc-sim-ssh``: a kernel in a resident guest agent (``jupyter-cc guest serve``, simulated TEE)
  behind a real OpenSSH sshd on loopback standing in for the CVM, the way the Python tests run
  it (tests/support), so a test can cut the connection; both stop when the server exits;
- ``cc-lab``: an Azure CVM's kernel (``jupyter-cc cvm kernelspec``): a local ARM and managed
  identity endpoint run in this process (tests/support/fake_arm.py, the real Azure SDK talks to
  them), and the VM "lab" they report is the sshd above, created, attested and deallocated
  before the server starts, so the kernel's start starts the CVM first;
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

# The CVM for the network-drop test: an sshd (its listener found by its config path,
# ``guest-sshd/sshd_config``) and the resident agent behind it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import atexit  # noqa: E402
import contextlib  # noqa: E402

from jupyter_cc.attest.sim import SimulatedTee  # noqa: E402
from tests.support.resident import resident_agent  # noqa: E402
from tests.support.sshd import guest_sshd, sim_guest_traits  # noqa: E402

SimulatedTee.load_or_create()  # before the guest's first session, so none races to make it
_guest_stack = contextlib.ExitStack()
atexit.register(_guest_stack.close)
_guest = guest_sshd(_tmp / "guest-sshd")
_guest_stack.callback(_guest.stop)
_agent = _guest_stack.enter_context(resident_agent(_guest, _tmp / "guest-agent"))
install(
    "cc-sim-ssh",
    kernelspec(
        "Confidential Python (simulated CVM over SSH)",
        {
            "transport": "ssh",
            "host": "127.0.0.1",
            "port": _guest.port,
            **sim_guest_traits(_guest),
            "agent_socket": str(_agent.socket),
        },
    ),
    prefix=str(_prefix),
)

# The Azure CVM for the start-step test.
from jupyter_cc.azure.client import ArmEndpoint  # noqa: E402
from jupyter_cc.azure.lifecycle import Cvm  # noqa: E402
from jupyter_cc.policy import Policy  # noqa: E402
from jupyter_cc.profiles import save_profile  # noqa: E402
from tests.support.fake_arm import OTHER_CREDENTIALS, SUBSCRIPTION, FakeArm, TokenEndpoint, lab_profile  # noqa: E402

_arm = _guest_stack.enter_context(FakeArm(_tmp, {SUBSCRIPTION}))
_identity = _guest_stack.enter_context(TokenEndpoint(_arm.token))
for _name in OTHER_CREDENTIALS:
    os.environ.pop(_name, None)
os.environ.update(_identity.env)
os.environ["JUPYTER_CC_ARM_ENDPOINT"] = _arm.base_url
os.environ["REQUESTS_CA_BUNDLE"] = str(_arm.ca_file)
os.environ["JUPYTER_CC_CONFIG"] = str(_tmp / "cc.toml")
_lab = lab_profile(_guest, _tmp)
save_profile(_lab)
_cvm = Cvm(_lab, endpoint=ArmEndpoint(base_url=_arm.base_url, connection_verify=str(_arm.ca_file)))
_cvm.create(policy=Policy.load(simulated_policy_path()), attest_timeout=60)
_cvm.deallocate()
_arm.retry_after = 3  # each ARM operation polled after 3 s: a start long enough to watch
install(
    "cc-lab",
    kernelspec("Confidential Python (Azure CVM lab)", _lab.provisioner_config()),
    prefix=str(_prefix),
)
