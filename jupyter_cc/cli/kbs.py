"""``jupyter-cc kbs ...``: run the key broker and manage its resources.

The main CLI calls :func:`add_commands` with its subparsers; each command's ``func`` returns
the exit status and raises :class:`~jupyter_cc.errors.CCError` for failures (the main CLI prints
its one sentence). Key material is never printed: commands show sizes and fingerprints.

::

    jupyter-cc kbs add-key default/key/demo --generate 32 --policy jupyter_cc/policies/simulated.toml
    jupyter-cc kbs serve                      # https://127.0.0.1:8085, foreground; prints its pin
    jupyter-cc kbs info                       # the certificate fingerprint TEEs pin, again
    jupyter-cc kbs list
    jupyter-cc kbs rotate default/key/demo
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_cc.errors import InputError
from jupyter_cc.files import read_input
from jupyter_cc.kbs.store import MAX_MATERIAL, KeyStore, ResourceInfo, default_db_path
from jupyter_cc.kbs.tls import TlsIdentity
from jupyter_cc.keys import fingerprint

__all__ = ["add_commands"]

_DEFAULT_KEY_BYTES = 32
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - bind-all names, kept out of the certificate


def _policy_text(path: str) -> str:
    try:
        return read_input(path, "policy file", 256 * 1024).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"policy file {path} is not UTF-8 text") from None


def _material(args: argparse.Namespace) -> bytes:
    if getattr(args, "from_file", None):
        return read_input(args.from_file, "key file", MAX_MATERIAL)
    size = args.generate if args.generate is not None else _DEFAULT_KEY_BYTES
    if not 16 <= size <= 4096:
        raise InputError(f"--generate takes 16 to 4096 bytes, not {size}")
    return os.urandom(size)


def _store(args: argparse.Namespace) -> KeyStore:
    return _store_at(Path(args.db) if args.db else default_db_path())


def _store_at(db: Path) -> KeyStore:
    return KeyStore(db)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(info: ResourceInfo) -> str:
    return f"{info.id} (version {info.version}, {info.size} bytes, policy '{info.policy_name}')"


def _fingerprint(store: KeyStore, rid: str) -> str:
    return fingerprint(store.get(rid).material)


def _identity(args: argparse.Namespace, folder: Path) -> TlsIdentity:
    """The operator's ``--cert``/``--key``, or the broker's own (made on first use in ``folder``)."""
    from jupyter_cc.kbs.tls import ensure_identity, load_identity

    if bool(args.cert) != bool(args.key):
        raise InputError("--cert and --key go together")
    if args.cert:
        return load_identity(args.cert, args.key)
    host = args.host if args.host not in _WILDCARDS else None
    return ensure_identity(folder, (host,) if host else ())


def _show_identity(identity: TlsIdentity) -> None:
    made = " (generated now)" if identity.generated else ""
    print(f"certificate: {identity.cert_path}{made}", flush=True)
    print(f"certificate SHA-256 fingerprint: {identity.fingerprint}", flush=True)


def _cmd_serve(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric import ec

    from jupyter_cc.kbs.broker import AUDIT_NAME, Broker
    from jupyter_cc.kbs.server import serve
    from jupyter_cc.kbs.sessions import SESSIONS_NAME, SessionStore

    if args.attest_rate <= 0:
        raise InputError(f"--attest-rate must be positive, not {args.attest_rate:g}")
    db = Path(args.db) if args.db else default_db_path()
    _store_at(db).close()  # made (or checked) here, before any worker starts
    if args.insecure_http and (args.cert or args.key):
        raise InputError("--insecure-http serves no certificate; drop --cert/--key or --insecure-http")
    identity = None if args.insecure_http else _identity(args, db.parent)
    workers = args.workers
    sessions_path = db.parent / SESSIONS_NAME if workers > 1 else None
    if sessions_path is not None:
        reset = SessionStore(sessions_path)
        reset.reset()  # sessions never outlive the broker that opened them
        reset.close()
    signing_key = ec.generate_private_key(ec.SECP256R1())  # one for all workers: tokens work anywhere

    def make_broker() -> Broker:
        return Broker(
            _store_at(db),
            sessions_path=sessions_path,
            signing_key=signing_key,
            attest_rate=args.attest_rate,
            attest_burst=max(1, int(2 * args.attest_rate)),
        )

    def ready(url: str) -> None:
        count = f"{workers} workers" if workers > 1 else "1 worker"
        print(f"jupyter-cc key broker listening on {url}/kbs/v0 (database {db}, {count})", flush=True)
        if identity is not None:
            _show_identity(identity)
            where = url.split("://", 1)[1]
            print(
                f"clients pin it: kbs://{where}/REPO/TYPE/TAG?cert-sha256={identity.fingerprint}", flush=True
            )
        else:
            print("WARNING: plain HTTP on loopback (--insecure-http); clients use kbs+http://", flush=True)
        print(f"audit log: {db.parent / AUDIT_NAME}; press Ctrl-C to stop", flush=True)

    serve(make_broker, host=args.host, port=args.port, identity=identity, workers=workers, ready=ready)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    db = Path(args.db) if args.db else default_db_path()
    _show_identity(_identity(args, db.parent))
    print(f"database: {db}")
    return 0


def _cmd_add_key(args: argparse.Namespace) -> int:
    store = _store(args)
    policy = _policy_text(args.policy) if args.policy else None
    info = store.add(args.resource, _material(args), policy_text=policy)
    print(f"added {_describe(info)}, fingerprint {_fingerprint(store, info.id)}")
    if policy is None:
        print("note: the default policy accepts only hardware TEEs without debug; use --policy to change it")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = _store(args).list()
    if not rows:
        print("no resources")
        return 0
    header = ("RESOURCE", "VERSION", "BYTES", "POLICY", "CREATED", "ROTATED", "STATE")
    table = [header] + [
        (
            r.id,
            str(r.version),
            str(r.size),
            r.policy_name,
            _when(r.created),
            _when(r.rotated),
            "revoked" if r.revoked else "active",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_set_policy(args: argparse.Namespace) -> int:
    info = _store(args).set_policy(args.resource, _policy_text(args.policy_file))
    print(f"policy of {info.id} is now '{info.policy_name}'")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    info = _store(args).revoke(args.resource)
    print(f"revoked {info.id}: the broker refuses to release it until it is rotated")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    store = _store(args)
    info = store.rotate(args.resource, _material(args))
    print(f"rotated {_describe(info)}, fingerprint {_fingerprint(store, info.id)}")
    return 0


def add_commands(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``kbs`` and its subcommands to the main CLI's subparsers ``sub``."""
    kbs = sub.add_parser("kbs", help="the embedded key broker (Trustee KBS protocol)")
    cmds = kbs.add_subparsers(dest="kbs_command", required=True, parser_class=parser_class)

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=helptext)
        p.add_argument("--db", metavar="PATH", help=f"the broker's database (default {default_db_path()})")
        return p

    def material_options(p: argparse.ArgumentParser, *, from_file: bool = True) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            "--generate",
            metavar="BYTES",
            type=int,
            help=f"random key of BYTES bytes (default {_DEFAULT_KEY_BYTES})",
        )
        if from_file:
            group.add_argument("--from-file", metavar="F", help="the key's raw bytes from file F")

    def tls_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cert",
            metavar="FILE",
            help="PEM certificate (chain) to serve; default: one made on first start beside the database",
        )
        p.add_argument("--key", metavar="FILE", help="the certificate's PEM private key")

    p = command("serve", "serve the broker over HTTPS in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8085, help="port (default 8085)")
    tls_options(p)
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP (refused unless --host is a loopback address; clients use kbs+http://)",
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes serving together (default 1)"
    )
    p.add_argument(
        "--attest-rate",
        type=float,
        default=10.0,
        metavar="PER_S",
        help="/attest calls allowed per client per second, bursts of twice that (default 10)",
    )
    p.set_defaults(func=_cmd_serve)

    p = command("info", "print the broker's certificate fingerprint (what TEEs pin)")
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    tls_options(p)
    p.set_defaults(func=_cmd_info)

    p = command("add-key", "store a new key and the policy that guards it")
    p.add_argument("resource", metavar="REPO/TYPE/TAG")
    material_options(p)
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: hardware TEEs only, no debug)")
    p.set_defaults(func=_cmd_add_key)

    p = command("list", "list resources (never their key material)")
    p.set_defaults(func=_cmd_list)

    p = command("set-policy", "replace a resource's policy")
    p.add_argument("resource", metavar="REPO/TYPE/TAG")
    p.add_argument("policy_file", metavar="FILE")
    p.set_defaults(func=_cmd_set_policy)

    p = command("revoke", "refuse all further releases of a resource")
    p.add_argument("resource", metavar="REPO/TYPE/TAG")
    p.set_defaults(func=_cmd_revoke)

    p = command("rotate", "replace a resource's key (new version; clears a revocation)")
    p.add_argument("resource", metavar="REPO/TYPE/TAG")
    material_options(p)
    p.set_defaults(func=_cmd_rotate)


if __name__ == "__main__":  # pragma: no cover - `python -m jupyter_cc.cli.kbs ...` for tests
    from jupyter_cc.errors import CCError

    parser = argparse.ArgumentParser(prog="jupyter-cc")
    add_commands(parser.add_subparsers(dest="command", required=True), argparse.ArgumentParser)
    ns = parser.parse_args(sys.argv[1:])
    try:
        sys.exit(ns.func(ns))
    except CCError as exc:
        print(f"jupyter-cc: {exc.diagnostics()}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
