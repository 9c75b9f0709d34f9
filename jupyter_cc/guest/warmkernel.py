"""A kernel process started ahead: imports ipykernel, then waits to be told to run.

The agent starts this as soon as it starts, so Python's start-up and ipykernel's imports (most
of a kernel's start time) overlap the attestation round trip instead of following it. It holds
nothing secret while it waits: the connection file (with the HMAC key) and the kernel's
environment arrive on stdin only after the client accepted the attestation, and if they never
come (the client refused, or went away) it exits without having run anything.

:func:`spawn` starts one; the per-connection agent calls it before it parses its options or
imports anything of its own, so the kernel's imports begin about 15 ms after the agent's
interpreter does instead of about 50 ms.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

# Only what the agent needs before it starts this process: typing and pathlib (~13 ms) wait.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

#: What a kernel imports after ``ipykernel.kernelapp`` while it initialises (measured with
#: ``python -X importtime``: about 0.9 s on a 2-core VM, most of it the magics' attestation stack
#: and ipykernel's debugger). Importing them ahead runs no user code and reads no secret; a module
#: that is missing is simply left to the kernel.
PRELOAD = (
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.oinspect",
    "IPython.core.completerlib",
    "sqlite3",
    "psutil",
    "jupyter_cc.notebook",
    "jupyter_cc.notebook.attest_magic",
    "jupyter_cc.notebook.session_magics",
    "jupyter_cc.notebook.key_magics",
)


def spawn(python: str, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a prepared kernel process with ``python``; return it and its private folder (0700).

    Its output goes to ``kernel.log`` in that folder, it runs in its own session (so signals to
    its group reach its children) and waits on a pipe for its start request.

    Raises:
        OSError: ``python`` could not be started (the folder is removed first).
    """
    import shutil
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="jupyter-cc-kernel-")
    try:
        with open(os.path.join(folder, "kernel.log"), "ab") as log:
            process = subprocess.Popen(
                [python, "-m", "jupyter_cc.guest.warmkernel"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return process, folder


def preload() -> None:
    """Import :data:`PRELOAD` (errors ignored: the kernel imports what it needs itself)."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - an optional speed-up; the kernel reports real failures
            continue


def main() -> int:
    from ipykernel import kernelapp  # the expensive part, done while the client attests

    preload()

    line = sys.stdin.readline()
    if not line:
        return 0
    request = json.loads(line)
    os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
    if request.get("cwd"):
        os.chdir(request["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # The confidential-computing magics are loaded in every confidential kernel.
    kernelapp.launch_new_instance(argv=["-f", str(request["connection_file"]), "--ext=jupyter_cc"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
