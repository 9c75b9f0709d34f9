"""``jupyter-cc guest serve-transport``: the guest agent on one TCP port, over SSH, without sshd.

Run inside a confidential pod (the ``agent`` transport, :mod:`jupyter_cc.guest.transport`)::

    jupyter-cc guest serve-transport --bind 0.0.0.0 --port 2222 --tee snp

The client keys come from ``--authorized-keys FILE`` or ``JUPYTER_CC_AUTHORIZED_KEYS`` in the
pod's spec or init-data; with none the command refuses to start. paramiko is imported only when
the command runs, so the rest of the CLI starts without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_cc.attest.kinds import TEE_CHOICES

__all__ = ["add_serve_transport"]

AUTHORIZED_KEYS_ENV = "JUPYTER_CC_AUTHORIZED_KEYS"  # as jupyter_cc.guest.transport (not imported here)


def add_serve_transport(guest_sub: Any) -> None:
    """Add ``serve-transport`` to the ``guest`` subcommands."""
    p = guest_sub.add_parser(
        "serve-transport",
        help="run the guest agent on one TCP port over SSH, without sshd (the 'agent' transport, for pods)",
    )
    p.add_argument("--port", type=int, default=2222, help="TCP port to listen on (default 2222)")
    p.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1; in a pod: 0.0.0.0)"
    )
    p.add_argument(
        "--authorized-keys",
        type=Path,
        metavar="FILE",
        help=f"client public keys allowed, authorized_keys lines (default: ${AUTHORIZED_KEYS_ENV})",
    )
    p.add_argument("--tee", choices=TEE_CHOICES, default=os.environ.get("JUPYTER_CC_TEE", "auto"))
    p.add_argument("--sim-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--python", help="the Python that runs ipykernel (default: this one)")
    p.add_argument(
        "--aa-url",
        metavar="URL",
        help="CoCo: take evidence from the pod's Attestation Agent REST API (e.g. http://127.0.0.1:8006)",
    )
    p.set_defaults(func=_cmd_serve_transport)


def _cmd_serve_transport(args: argparse.Namespace) -> int:
    """Listen until interrupted; each connection's kernels stop with it."""
    from jupyter_cc.guest.transport import AgentSettings, TransportServer, load_authorized_keys

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="jupyter-cc transport: %(message)s")
    keys = load_authorized_keys(args.authorized_keys)
    settings = AgentSettings(tee=args.tee, sim_dir=args.sim_dir, python=args.python, aa_url=args.aa_url)
    server = TransportServer(keys, bind=args.bind, port=args.port, settings=settings)
    print(f"jupyter-cc agent transport listening on {args.bind}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
