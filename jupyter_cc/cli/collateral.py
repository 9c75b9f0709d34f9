"""``jupyter-cc collateral fetch|show|export|import|prune``: the collateral cache by hand.

Design section 12. ``fetch EVIDENCE...`` reads TD quotes, SNP reports or evidence bundles and
gets (into the cache) what verifying each needs, the RIMs and OCSP answers of a bundle's NVIDIA
GPUs included (what could not be had is listed, and the status is 1); ``export FILE`` and
``import FILE`` carry the cache to a machine without network (import verifies every item to the
pinned roots first, and imports nothing when one fails); ``prune`` removes damaged files and
stale entries. Bad input is one sentence and exit status 2; a vendor or cache failure is one
sentence and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_cc.attest.certs import utcnow
from jupyter_cc.collateral.fetch import offline_hint
from jupyter_cc.collateral.service import CollateralService, Item
from jupyter_cc.collateral.settings import load_settings
from jupyter_cc.collateral.transfer import export_file, import_file, prune
from jupyter_cc.decoding import decode_blob
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import read_input

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence

__all__ = ["add_commands", "service_for"]


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``collateral fetch|show|export|import|prune`` to the CLI's subparsers."""
    top = sub.add_parser("collateral", help="fetch, show, export, import and prune cached collateral")
    group = top.add_subparsers(dest="collateral_command", required=True, parser_class=parser_class)
    at_help = "judge freshness and validity as of this time (default: now)"

    fetch = group.add_parser("fetch", help="fetch what verifying the evidence needs into the cache")
    fetch.add_argument("files", nargs="+", metavar="EVIDENCE")
    fetch.add_argument("--kind", choices=["tdx", "snp"], help="the evidence kind (default: detected)")
    fetch.add_argument("--product", choices=["Milan", "Genoa", "Turin"], help="SNP v2 reports: the processor")
    fetch.add_argument("--at", metavar="ISO8601", help=at_help)
    fetch.add_argument("--offline", action="store_true", help="use the cache only (check what it holds)")
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(func=_cmd_fetch)

    show = group.add_parser("show", help="list the cached items and how fresh they are")
    show.add_argument("--at", metavar="ISO8601", help=at_help)
    show.add_argument("--json", action="store_true", help="print one JSON array")
    show.set_defaults(func=_cmd_show)

    export = group.add_parser("export", help="write every cached item to FILE (for air-gapped machines)")
    export.add_argument("file", metavar="FILE")
    export.set_defaults(func=_cmd_export)

    imp = group.add_parser("import", help="verify every item in FILE to the pinned roots, then cache them")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--at", metavar="ISO8601", help=at_help)
    imp.set_defaults(func=_cmd_import)

    pr = group.add_parser("prune", help="remove damaged files and entries past their nextUpdate")
    pr.add_argument(
        "--older-than-days", metavar="N", type=int, default=0, help="keep entries stale fewer days"
    )
    pr.add_argument("--all", action="store_true", help="empty the cache")
    pr.add_argument("--at", metavar="ISO8601", help=at_help)
    pr.set_defaults(func=_cmd_prune)


def service_for(offline: bool = False) -> CollateralService:
    """The service with the settings in force (``offline`` adds offline mode)."""
    return CollateralService(load_settings().with_offline(offline))


def _at(args: argparse.Namespace) -> Any:
    from jupyter_cc.cli.verify import parse_time

    return parse_time(args.at) if getattr(args, "at", None) else utcnow()


def _evidence(data: bytes, path: str) -> tuple[str | None, bytes, tuple[Evidence, ...]]:
    """(``tdx``, ``snp`` or None, the CPU evidence, the NVIDIA GPU evidence) of a file's bytes.

    Raises:
        InputError: an unreadable bundle, or one that holds nothing with collateral to fetch.
    """
    if data.lstrip().startswith(b"{"):
        from jupyter_cc.attest.evidence import parse_bundle

        try:
            bundle = parse_bundle(data)
        except CCError as exc:
            raise InputError(f"evidence bundle {path} is unreadable ({exc.message.rstrip('.')})") from None
        ev = bundle.evidence
        gpus = (ev,) if ev.kind == "nvidia" else tuple(g for g in ev.gpus if g.kind == "nvidia")
        family = {"tdx": "tdx", "snp": "snp"}.get(ev.kind)
        if family is None and not gpus:
            raise InputError(
                f"evidence bundle {path} holds {ev.kind} evidence, "
                "for which there is no collateral to fetch (only tdx, snp and NVIDIA GPUs)"
            )
        return family, ev.binary() if family else b"", gpus
    raw = decode_blob(data, what=f"evidence {path}")
    if len(raw) >= 8 and raw[0:2] in (b"\x04\x00", b"\x05\x00") and raw[4:8] == b"\x81\x00\x00\x00":
        return "tdx", raw, ()
    if len(raw) >= 0x4A0:
        return "snp", raw, ()
    return None, raw, ()


def _fetch_one(
    service: CollateralService, path: str, args: argparse.Namespace
) -> tuple[list[Item], list[str]]:
    """The items fetched or found for one evidence file, and what could not be had."""
    found, raw, gpus = _evidence(read_input(path, "evidence file"), path)
    if found is None and not gpus:
        raise InputError(f"evidence {path} is neither a TD quote, an SNP report nor an evidence bundle")
    items: list[Item] = []
    try:
        if found is not None:
            family = args.kind or found
            if family == "tdx":
                items += service.tdx(raw, at=_at(args)).items
            else:
                items += service.snp(raw, at=_at(args), product=args.product).items
        missing: list[str] = []
        if gpus:
            from jupyter_cc.collateral.nvidia import gpu_collateral_items
        for i, gpu in enumerate(gpus):
            collateral, used = gpu_collateral_items(service, gpu, at=_at(args))
            items += used
            where = f"GPU {i}" if len(gpus) > 1 else "the GPU"
            missing += [f"{where}: {note}" for note in collateral.notes]
    except CCError as exc:
        if exc.check in ("format", "chain") and not isinstance(exc, InputError):
            raise InputError(f"evidence {path}: {exc.message.rstrip('.')}", hint=exc.hint) from None
        raise
    return items, missing


def _cmd_fetch(args: argparse.Namespace) -> int:
    service = service_for(args.offline)
    report: dict[str, list[dict[str, Any]]] = {}
    missing: dict[str, list[str]] = {}
    for path in args.files:
        items, lacking = _fetch_one(service, path, args)
        report[path] = [i.to_json() for i in items]
        if lacking:
            missing[path] = lacking
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for path, rows in report.items():
            print(f"{path}:")
            for item in rows:
                stale = f", STALE {item['stale_days']} days past nextUpdate" if item["stale_days"] else ""
                print(f"  {item['item']}: {item['origin']}, next update {item['next_update']}{stale}")
            for line in missing.get(path, []):
                print(f"  missing: {line}")
        print(f"cache: {service.cache.root}")
    if missing:
        count = sum(len(lines) for lines in missing.values())
        where = ", ".join(missing)
        print(
            f"jupyter-cc: error: {count} GPU collateral item(s) for {where} could not be had; "
            f"{offline_hint()}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    service = service_for()
    at = _at(args)
    rows = [
        Item(e, "cache", e.stale_days(at)).to_json() | {"source": e.source} for e in service.cache.entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no collateral cached in {service.cache.root}")
    else:
        for row in rows:
            state = f"STALE {row['stale_days']} days" if row["stale_days"] else "fresh"
            print(
                f"{row['key']}  {state}  next update {row['next_update']}  {row['item']}  ({row['source']})"
            )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    count = export_file(service_for(), Path(args.file))
    print(f"exported {count} collateral item(s) to {args.file}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    service = service_for()
    imported, skipped = import_file(service, Path(args.file), at=_at(args))
    extra = f" ({skipped} older than the cached ones kept out)" if skipped else ""
    print(f"imported {imported} verified collateral item(s) into {service.cache.root}{extra}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than_days < 0:
        raise InputError(f"--older-than-days {args.older_than_days} is negative")
    service = service_for()
    removed = prune(service, at=_at(args), older_than_days=args.older_than_days, everything=args.all)
    print(f"removed {removed} file(s) from {service.cache.root}")
    return 0
