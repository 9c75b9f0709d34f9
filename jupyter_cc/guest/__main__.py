"""``python3 -m jupyter_cc.guest``: the guest agent on stdin/stdout.

Options select the evidence source and where the bound host key is read; nothing secret is
accepted here. The protocol stream is the process's original stdout; everything else printed
(imports, warnings, logs) goes to stderr so it cannot corrupt the stream.

The prepared kernel process (:mod:`jupyter_cc.guest.warmkernel`) is started first, before the
agent parses its options or imports its attestation stack (~0.2 s), so both import at once on a
VM with two cores or more and the kernel's imports (most of its start time) begin as early as
they can. It gets only this process's environment; the agent's TEE choice reaches it with the
start request, after the verdict.
"""

from __future__ import annotations

import os
import sys

from jupyter_cc.guest import warmkernel

TYPE_CHECKING = False  # typing is not imported before the prepared kernel process starts
if TYPE_CHECKING:
    import subprocess


def _prepare_early(argv: list[str]) -> tuple[subprocess.Popen[bytes], str] | None:
    """The prepared kernel process for this interpreter, or None when it must wait for the options.

    ``--python`` names another interpreter and ``--help`` starts no kernel: both are left to
    :meth:`GuestKernel.prewarm` after the options are parsed.
    """
    if any(arg in ("-h", "--help") or arg.startswith("--python") for arg in argv):
        return None
    try:
        return warmkernel.spawn(sys.executable, os.environ)
    except OSError:
        return None


def main() -> int:
    early = _prepare_early(sys.argv[1:])

    import argparse
    import logging
    from pathlib import Path

    from jupyter_cc.guest.kernel import GuestKernel

    kernel = GuestKernel()
    if early is not None:
        kernel.adopt_warm(early[0], Path(early[1]))  # owned from here: stopped with the kernel on any way out
    parser = argparse.ArgumentParser(prog="python3 -m jupyter_cc.guest", description="jupyter-cc guest agent")
    parser.add_argument("--tee", default=os.environ.get("JUPYTER_CC_TEE", "auto"))
    parser.add_argument(
        "--host-key-file", type=Path, help="the sshd public host key to bind (default /etc/ssh)"
    )
    parser.add_argument("--sim-dir", type=Path, help="folder of the simulated TEE (with --tee sim)")
    parser.add_argument("--python", help="the Python that runs ipykernel (default: this one)")
    try:
        args = parser.parse_args()
    except SystemExit:
        kernel.stop(now=True)
        raise
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    kernel.python = args.python or sys.executable
    kernel.base_env["JUPYTER_CC_TEE"] = args.tee
    if args.sim_dir is not None:
        kernel.base_env["JUPYTER_CC_SIM_DIR"] = str(args.sim_dir)
    kernel.prewarm()

    from jupyter_cc.attest.kinds import TEE_CHOICES
    from jupyter_cc.guest.agent import Agent

    if args.tee not in TEE_CHOICES:
        kernel.stop(now=True)
        parser.error(f"--tee (or JUPYTER_CC_TEE) {args.tee!r} is not one of {', '.join(TEE_CHOICES)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="jupyter-cc guest: %(message)s")
    agent = Agent(
        tee=args.tee,
        host_key_file=args.host_key_file,
        sim_dir=args.sim_dir,
        python=args.python,
        kernel=kernel,
    )
    agent.serve(sys.stdin.buffer, protocol_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
