"""``python3 -m jupyter_cc.guest``: the guest agent on stdin/stdout.

Options select the evidence source and where the bound host key is read; nothing secret is
accepted here. The protocol stream is the process's original stdout; everything else printed
(imports, warnings, logs) goes to stderr so it cannot corrupt the stream.

The prepared kernel process (:mod:`jupyter_cc.guest.warmkernel`) is started before the agent
imports its attestation stack (~0.2 s), so both import at once on a VM with two cores or more.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m jupyter_cc.guest", description="jupyter-cc guest agent")
    parser.add_argument("--tee", default=os.environ.get("JUPYTER_CC_TEE", "auto"))
    parser.add_argument(
        "--host-key-file", type=Path, help="the sshd public host key to bind (default /etc/ssh)"
    )
    parser.add_argument("--sim-dir", type=Path, help="folder of the simulated TEE (with --tee sim)")
    parser.add_argument("--python", help="the Python that runs ipykernel (default: this one)")
    args = parser.parse_args()
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from jupyter_cc.guest.kernel import GuestKernel

    base_env = {"JUPYTER_CC_TEE": args.tee}
    if args.sim_dir is not None:
        base_env["JUPYTER_CC_SIM_DIR"] = str(args.sim_dir)
    kernel = GuestKernel(args.python or sys.executable, base_env=base_env)
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
