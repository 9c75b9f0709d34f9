"""The ``jupyter-cc`` command (also ``jupyter cc``): verify evidence, attest CVMs, keys and data.

``main`` assembles the parser from one module per command group, each with an
``add_commands(sub, parser_class)``:

- :mod:`~jupyter_cc.cli.verify`: ``verify KIND FILE`` (one subcommand per registered kind).
- :mod:`~jupyter_cc.cli.kernels`: ``attest HOST`` and ``kernelspec install|install-sim``.
- :mod:`~jupyter_cc.cli.kbs`, :mod:`~jupyter_cc.cli.seal`, :mod:`~jupyter_cc.cli.audit`,
  :mod:`~jupyter_cc.cli.profile`: the key broker, sealing, the audit log, saved CVM profiles.
- :mod:`~jupyter_cc.cli.sim`: ``sim mint`` for the simulated TEE.

``jupyter-cc verify KIND FILE ...`` follows the contract in design section 4: exit status 0 when
the evidence verified and the policy passed, 1 when the evidence is invalid or the policy
rejected it, 2 for usage errors and unreadable input. Every failure is one sentence on stderr
(or in the ``errors`` list of ``--json``); never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from jupyter_cc.cli.output import failure_line
from jupyter_cc.errors import CCError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one sentence with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"jupyter-cc: error: {message}; see '{self.prog} --help'.\n")


def _build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top, so ``python -m jupyter_cc.cli.kbs`` does not find its own
    # module already imported by this package.
    from jupyter_cc.cli import audit, collateral, cvm, guest, kbs, kernels, policy, profile, seal, sim, verify

    parser = _Parser(prog="jupyter-cc", description="Confidential computing for Jupyter.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in (verify, kernels, kbs, seal, audit, profile, cvm, sim, policy, collateral, guest):
        group.add_commands(sub, _Parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, 1 or 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except CCError as exc:
        print(failure_line(exc), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI promises no traceback; say what happened instead
        print(
            f"jupyter-cc: error: unexpected {exc.__class__.__name__} ({exc}); this is a bug, please report",
            file=sys.stderr,
        )
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
