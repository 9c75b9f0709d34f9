"""``jupyter-cc verify KIND FILE ...``: read evidence from files, verify it, appraise it.

One subcommand per registered evidence kind (:data:`jupyter_cc.attest.kinds.KINDS`: its name,
summary, operand and inputs) plus ``bundle`` for the guest agent's evidence bundle. The
contract is design section 4: exit 0 when the evidence verified and the policy passed, 1 when
the evidence is invalid or the policy rejected it, 2 for usage errors and unreadable input;
``--json`` prints one object whatever the outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from jupyter_cc.attest.certs import load_certificate, load_certificates, utcnow
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import Evidence, parse_bundle, verify, verify_bundle
from jupyter_cc.attest.kinds import KINDS, SIMULATED_BANNER, Kind, kind
from jupyter_cc.cli.output import failure_line, summary
from jupyter_cc.decoding import decode_blob, decode_hex
from jupyter_cc.errors import CCError, CollateralError, InputError
from jupyter_cc.files import read_input
from jupyter_cc.policy import Policy, Verdict, appraise

__all__ = ["add_commands", "add_evidence_options", "parse_time", "verified_claims"]


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``verify`` with one subcommand per registered kind, and ``bundle``, to the CLI."""
    verify_p = sub.add_parser("verify", help="verify attestation evidence and appraise it under a policy")
    kinds = verify_p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=parser_class)
    for entry in _listed():
        _add_kind(kinds, entry)
    p = kinds.add_parser("bundle", help="an evidence bundle from the guest agent")
    p.add_argument("file", metavar="EVIDENCE.json")
    _add_common(p)
    p.add_argument("--nonce", metavar="HEX", help="the nonce the bundle must carry")
    p.add_argument("--host-key-sha256", metavar="HEX", help="the host key digest the bundle must bind")
    _add_cce_policy(p)
    verify_p.set_defaults(func=_cmd_verify)


def _listed() -> list[Kind]:
    """The kinds in the order ``verify --help`` lists them: a simulated kind beside the one it imitates."""
    listed: list[Kind] = []
    for entry in KINDS:
        if not entry.simulated:
            listed.append(entry)
            listed += [k for k in KINDS if k.simulated and k.family == entry.name]
    return listed + [k for k in KINDS if k not in listed]


def _add_kind(kinds: argparse._SubParsersAction[Any], entry: Kind) -> None:
    p = kinds.add_parser(entry.name, help=entry.summary)
    p.add_argument("file", metavar=entry.operand)
    _add_common(p)
    for item in entry.inputs:
        extra: dict[str, Any] = {"action": "append"} if item.repeat else {}
        if item.required:
            extra["required"] = True
        p.add_argument(item.flag, metavar=item.metavar, help=item.help, **extra)
    if entry.family == "snp":
        _add_cce_policy(p)


def _add_cce_policy(p: argparse.ArgumentParser) -> None:
    from jupyter_cc.attest.pod import CCE_POLICY_FORMS

    p.add_argument(
        "--cce-policy",
        metavar="FILE",
        help=f"Confidential ACI: HOST_DATA must be the SHA-256 of this CCE policy, FILE: {CCE_POLICY_FORMS}",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--at", metavar="ISO8601", help="verify as of this time (sample certificates expire)")
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: valid, no debug, no simulated)")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (or its leading bytes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--offline",
        action="store_true",
        help="collateral not given as files comes from the cache only, never the vendor service",
    )


def _blob(path: str, what: str) -> bytes:
    data = read_input(path, what)
    try:
        return decode_blob(data, what=f"{what} {path}")
    except InputError as exc:
        raise InputError(exc.message, hint=exc.hint) from None


def _certs(path: str, what: str) -> list[Any]:
    return load_certificates(read_input(path, what), what=f"{what} {path}")


def add_evidence_options(p: argparse.ArgumentParser) -> None:
    """The options of every ``verify`` subcommand at once, for commands that take any evidence.

    With them, :func:`verified_claims` reads evidence as ``verify`` does; ``--kind`` absent
    means an evidence bundle.
    """
    p.add_argument(
        "--kind", choices=[k.name for k in _listed()], help="the evidence kind (default: a bundle)"
    )
    p.add_argument("--at", metavar="ISO8601", help="verify as of this time (sample certificates expire)")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (or its leading bytes)")
    p.add_argument("--host-key-sha256", metavar="HEX", help="a bundle: the host key digest it must bind")
    seen = {"--kind", "--at", "--report-data", "--host-key-sha256"}
    for entry in _listed():
        for item in entry.inputs:
            if item.flag not in seen:
                seen.add(item.flag)
                extra: dict[str, Any] = {"action": "append"} if item.repeat else {}
                p.add_argument(item.flag, metavar=item.metavar, help=f"{entry.name}: {item.help}", **extra)


def verified_claims(args: argparse.Namespace, path: str) -> tuple[str, Claims]:
    """Verify the evidence in ``path`` as ``verify`` does, with the options :func:`add_evidence_options` adds.

    Returns the evidence kind (a bundle's inner kind) and its claims; raises the
    :class:`~jupyter_cc.errors.CCError` that ``verify`` reports.
    """
    name = args.kind or "bundle"
    entry = kind(name)
    for item in entry.inputs if entry is not None else ():
        if item.required and not getattr(args, item.flag[2:].replace("-", "_"), None):
            raise InputError(f"{name} evidence needs {item.flag} {item.metavar} ({item.help})")
    ns = argparse.Namespace(**{**vars(args), "kind": name, "file": path})
    for attr in ("nonce", "host_key_sha256", "report_data", "crl"):
        setattr(ns, attr, getattr(args, attr, None))
    out: dict[str, Any] = {"kind": name}
    at = parse_time(args.at) if args.at else utcnow()
    claims = _claims(ns, at, out)
    if args.report_data:
        from jupyter_cc.attest.binding import check_report_data

        check_report_data(claims.report_data, decode_hex(args.report_data, what="--report-data"))
    return str(out["kind"]), claims


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--at {text!r} is not an ISO 8601 time", hint="write it like 2024-06-01T12:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _optional(args: argparse.Namespace, attr: str, what: str, reader: Callable[[str, str], Any]) -> Any:
    path = getattr(args, attr, None)
    return reader(path, what) if path else None


def _report(args: argparse.Namespace) -> bytes | str:
    name = args.kind
    if name == "maa":
        return read_input(args.file, "token file").decode("ascii", "replace").strip()
    if name == "nvidia":
        return _blob(args.file, "GPU report")
    return _blob(args.file, f"{name} evidence")


def _snp_certs(args: argparse.Namespace) -> tuple[Any, list[Any] | None]:
    vek = chain = None
    if getattr(args, "vcek", None):
        certs = _certs(args.vcek, "VCEK file")
        vek, chain = certs[0], certs[1:]
    if getattr(args, "chain", None) and args.kind != "nvidia":
        chain = _certs(args.chain, "chain file")
    entry = kind(args.kind)
    if entry is not None and entry.family == "snp" and vek is not None and not chain:
        raise InputError(
            "no ASK/ARK chain was given",
            hint="pass --chain with AMD KDS vcek/v1/<product>/cert_chain (VLEK: vlek/v1/.../cert_chain)",
        )
    return vek, chain


def _gpu_chain(args: argparse.Namespace) -> bytes | None:
    if args.kind != "nvidia":
        return None
    chain_pem = read_input(args.chain, "chain file")
    if args.root:
        chain_pem = chain_pem.rstrip(b"\x00\n") + b"\n" + read_input(args.root, "root certificate")
    return chain_pem


def _evidence(args: argparse.Namespace) -> Evidence:
    report = _report(args)
    vek, chain = _snp_certs(args)
    nonce = decode_hex(args.nonce, what="--nonce") if getattr(args, "nonce", None) else None
    chain_pem = _gpu_chain(args)
    return Evidence(
        kind=args.kind,
        report=report,
        vek=vek,
        chain=tuple(chain or ()),
        chain_pem=chain_pem,
        td_quote=_optional(args, "quote", "TD quote", _blob),
        tpm_quote=_optional(args, "tpm_quote", "TPM quote", _blob),
        tpm_sig=_optional(args, "tpm_sig", "TPM signature", _blob),
        tcb_info=_optional(args, "tcb_info", "TCB info", read_input),
        qe_identity=_optional(args, "qe_identity", "QE identity", read_input),
        collateral_chain=_optional(args, "collateral_chain", "collateral chain", read_input),
        crls=tuple(read_input(p, "CRL") for p in getattr(args, "crl", None) or ()),
        jwks=_optional(args, "jwks", "JWKS file", read_input),
        issuer=getattr(args, "issuer", None),
        nonce=nonce,
    )


def _with_collateral(args: argparse.Namespace, ev: Evidence, at: datetime, out: dict[str, Any]) -> Evidence:
    """``ev`` with the collateral it lacks from the cache or the vendor (design section 12).

    Files given win: a TD quote with any of --tcb-info/--qe-identity/--collateral-chain, or an
    SNP report with --vcek, is verified with what was given alone.
    """
    from jupyter_cc.cli.collateral import service_for
    from jupyter_cc.collateral.evidence import NEEDS_COLLATERAL

    if ev.kind == "tdx" and ev.tcb_info is None and ev.qe_identity is None and ev.collateral_chain is None:
        files = service_for(bool(getattr(args, "offline", False))).tdx(ev.binary(), at=at)
        out["collateral"] = [item.to_json() for item in files.items]
        return replace(ev, **{**files.inputs(), "crls": (*ev.crls, *files.crls)})  # --crl files kept
    if ev.kind == "snp" and ev.vek is None:
        snp = service_for(bool(getattr(args, "offline", False))).snp(ev.binary(), at=at, crl=False)
        out["collateral"] = [item.to_json() for item in snp.items]
        ev = replace(ev, vek=load_certificate(snp.vcek, what="VCEK"), chain=tuple(_pem_certs(snp.chain)))
    if NEEDS_COLLATERAL.get(ev.kind) == "snp" and not ev.crls:
        ev = _with_amd_crl(args, ev, at, out)
    return ev


def _with_amd_crl(args: argparse.Namespace, ev: Evidence, at: datetime, out: dict[str, Any]) -> Evidence:
    """``ev`` with AMD's CRL for its chain from the cache or KDS; without it (offline with none
    cached, KDS unreachable) the claims say ``revocation: unchecked`` and the policy decides;
    a note says why (printed with the verdict)."""
    from jupyter_cc.cli.collateral import service_for
    from jupyter_cc.collateral.evidence import with_collateral

    try:
        ev, items = with_collateral(ev, at=at, service=service_for(bool(getattr(args, "offline", False))))
    except CollateralError as exc:
        out.setdefault("notes", []).append(f"revocation not checked: {exc.diagnostics()}")
        return ev
    out.setdefault("collateral", []).extend(item.to_json() for item in items)
    return ev


def _pem_certs(pem: bytes) -> list[Any]:
    return load_certificates(pem, what="cached cert_chain")


def _stale_notes(out: dict[str, Any]) -> None:
    for note in out.pop("notes", []):
        print(f"note: {note}", file=sys.stderr)
    for item in out.get("collateral", []):
        if item["stale_days"]:
            print(
                f"note: the cached {item['item']} is {item['stale_days']} day(s) past its nextUpdate "
                f"{item['next_update']} (offline)",
                file=sys.stderr,
            )


def _claims(
    args: argparse.Namespace, at: datetime, out: dict[str, Any], *, fetch: bool = False, stale: int = 0
) -> Claims:
    """Verify what ``args`` names; ``out['kind']`` becomes the bundle's kind for a bundle.

    With ``fetch``, collateral not given as files comes from the cache or the vendor (for a
    bundle, as the kernel path gets it: what the bundle carries is a hint); collateral may be
    ``stale`` days past its nextUpdate (the policy's ``[collateral] max_stale_days``).
    """
    if args.kind != "bundle":
        ev = _evidence(args)
        return verify(_with_collateral(args, ev, at, out) if fetch else ev, at=at, allow_stale_days=stale)
    bundle = parse_bundle(read_input(args.file, "evidence bundle"))
    out["kind"] = bundle.evidence.kind
    nonce = decode_hex(args.nonce, what="--nonce") if args.nonce else None
    host_key = decode_hex(args.host_key_sha256, what="--host-key-sha256") if args.host_key_sha256 else None
    if fetch:
        from jupyter_cc.cli.collateral import service_for
        from jupyter_cc.collateral.evidence import NEEDS_COLLATERAL, with_collateral

        if bundle.evidence.kind in NEEDS_COLLATERAL:
            service = service_for(bool(getattr(args, "offline", False)))
            evidence, items = with_collateral(bundle.evidence, at=at, service=service)
            out["collateral"] = [item.to_json() for item in items]
            bundle = replace(bundle, evidence=evidence)
    return verify_bundle(bundle, at=at, nonce=nonce, host_key_sha256=host_key, allow_stale_days=stale)


def _cmd_verify(args: argparse.Namespace) -> int:
    at = parse_time(args.at) if args.at else utcnow()
    policy = Policy.load(args.policy) if args.policy else Policy()
    expected_rd = decode_hex(args.report_data, what="--report-data") if args.report_data else None
    out: dict[str, Any] = {
        "kind": args.kind,
        "verified": False,
        "passed": False,
        "claims": {},
        "reasons": [],
        "errors": [],
    }
    try:
        claims = _claims(args, at, out, fetch=True, stale=policy.max_stale_days)
        _stale_notes(out)
        if expected_rd is not None:
            from jupyter_cc.attest.binding import check_report_data

            check_report_data(claims.report_data, expected_rd)
        if getattr(args, "cce_policy", None):
            from jupyter_cc.attest.pod import check_cce_policy

            check_cce_policy(claims, read_input(args.cce_policy, "CCE policy"))
    except CCError as exc:
        out.pop("notes", None)  # why revocation went unchecked matters only beside a verdict
        out["errors"].append(exc.diagnostics())
        if args.json:
            print(json.dumps(out, indent=2))
        print(failure_line(exc), file=sys.stderr)
        return exc.exit_status
    verdict: Verdict = appraise(claims, policy)
    out.update(
        verified=True,
        passed=verdict.passed,
        claims=claims.to_json(),
        reasons=[str(r) for r in verdict.reasons],
        policy=policy.name,
    )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_result(args.file, out["kind"], claims, policy, verdict)
    return 0 if verdict.passed else 1


def _print_result(file: str, name: str, claims: Claims, policy: Policy, verdict: Verdict) -> None:
    label = f"{name} evidence {file}"
    if claims.simulated:
        label += f" ({SIMULATED_BANNER})"
    print(f"{label}: VERIFIED")
    print("\n".join(summary(claims)))
    print(f"policy {policy.name}: {'PASSED' if verdict.passed else 'REJECTED'}")
    for reason in verdict.reasons:
        print(f"  failed {reason}")
