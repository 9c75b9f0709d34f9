"""``jupyter-cc audit show`` and ``jupyter-cc audit verify``: read and check the audit log.

:func:`add_commands` adds ``audit`` to the CLI's subparsers. ``verify`` exits 0 when the chain is
intact, 1 when it is broken (one sentence naming the first broken line, from
:class:`~jupyter_cc.audit.AuditError`), and 2 when the log cannot be read (``InputError``)::

    jupyter-cc audit show --limit 20
    jupyter-cc audit verify
    jupyter-cc audit verify --log ~/.local/share/jupyter/jupyter_cc/kbs/audit.jsonl
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from jupyter_cc.audit import AuditError, audit_path, read, verify

__all__ = ["add_commands"]

_HEAD = ("seq", "time", "event", "prev")


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``audit show`` and ``audit verify`` to the CLI's subparsers (``parser_class`` for the nesting)."""
    audit_p = sub.add_parser("audit", help="show and verify the hash-chained audit log")
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True, parser_class=parser_class)
    log_help = "the log file (default: $JUPYTER_CC_AUDIT_LOG, else audit.jsonl in the data dir)"

    show = audit_sub.add_parser("show", help="print the log's entries, oldest first")
    show.add_argument("--limit", metavar="N", type=_count, help="only the last N entries")
    show.add_argument("--json", action="store_true", help="print one JSON array of the entries")
    show.add_argument("--log", metavar="PATH", help=log_help)
    show.set_defaults(func=_cmd_show)

    check = audit_sub.add_parser(
        "verify",
        help="check every link of the chain; exit 1 naming the first broken line",
        description="Exit 0 when the chain is intact, 1 when it is broken, 2 when the log is unreadable.",
    )
    check.add_argument("--log", metavar="PATH", help=log_help)
    check.set_defaults(func=_cmd_verify)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _line(entry: dict[str, Any]) -> str:
    rest = " ".join(
        f"{key}={value if isinstance(value, str) and value and ' ' not in value else json.dumps(value)}"
        for key, value in entry.items()
        if key not in _HEAD
    )
    head = f"{entry.get('seq', '?'):>5}  {entry.get('time', '?')}  {entry.get('event', '?')}"
    return f"{head}  {rest}" if rest else head


def _cmd_show(args: argparse.Namespace) -> int:
    log = audit_path(args.log)
    entries = read(log, limit=args.limit)
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"no audit entries in {log}")
    else:
        for entry in entries:
            print(_line(entry))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    log = audit_path(args.log)
    result = verify(log)
    if not result.ok:
        raise AuditError(f"audit log {log} is broken at line {result.first_broken}: {result.reason}")
    if result.entries == 0:
        print(f"audit log {log}: no entries yet, nothing to verify")
    else:
        print(f"audit log {log}: {result.entries} entries, chain intact; head sha256 {result.head}")
    return 0
