"""``jupyter-cc sim mint``: mint a report from the simulated TEE in this data dir.

The report has the SNP byte layout and is signed by the locally generated chain of
:class:`~jupyter_cc.attest.sim.SimulatedTee`; ``jupyter-cc verify sim-snp`` verifies it and
only a policy with ``allow_simulated = true`` accepts it (design section 9).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.decoding import decode_hex
from jupyter_cc.errors import InputError
from jupyter_cc.files import write_atomic

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``sim mint`` to the CLI's subparsers (``parser_class`` for the nesting)."""
    sim = sub.add_parser("sim", help=f"the simulated TEE ({SIMULATED_BANNER})")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, parser_class=parser_class)
    mint = sim_sub.add_parser("mint", help="mint a simulated SNP report")
    mint.add_argument("-o", "--output", required=True, metavar="FILE")
    mint.add_argument("--report-data", metavar="HEX", help="up to 64 bytes, zero-padded")
    mint.add_argument("--chain", metavar="FILE", help="also write the simulated ASK/ARK chain here")
    mint.add_argument("--debug", action="store_true", help="set the guest policy's DEBUG bit")
    mint.set_defaults(func=_cmd_sim_mint)


def _cmd_sim_mint(args: argparse.Namespace) -> int:
    from jupyter_cc.attest.sim import SimulatedTee

    report_data = decode_hex(args.report_data, what="--report-data") if args.report_data else bytes(64)
    if len(report_data) > 64:
        raise InputError(f"--report-data is {len(report_data)} bytes; REPORT_DATA holds at most 64")
    report_data = report_data.ljust(64, b"\x00")
    tee = SimulatedTee.load_or_create()
    report = tee.mint(report_data, debug=args.debug)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    write_atomic(out, report)
    print(f"wrote a simulated SNP report to {out} ({SIMULATED_BANNER})")
    if args.chain:
        write_atomic(Path(args.chain), tee.chain_pem())
    return 0
