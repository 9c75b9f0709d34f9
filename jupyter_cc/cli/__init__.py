"""The ``jupyter-cc`` command (also ``jupyter cc``): verify evidence, drive the simulated TEE.

``jupyter-cc verify KIND FILE ...`` follows the contract in design section 4: exit status 0 when
the evidence verified and the policy passed, 1 when the evidence is invalid or the policy
rejected it, 2 for usage errors and unreadable input. Every failure is one sentence on stderr
(or in the ``errors`` list of ``--json``); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from jupyter_cc.attest.certs import load_certificates, utcnow
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import Evidence, parse_bundle, verify, verify_bundle
from jupyter_cc.decoding import decode_blob, decode_hex
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.policy import Policy, Verdict, appraise

__all__ = ["main"]

SIMULATED_BANNER = "SIMULATED — not a hardware TEE"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one sentence with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"jupyter-cc: error: {message}; see '{self.prog} --help'.\n")


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path} ({exc.strerror})") from None
    if not data:
        raise InputError(f"{what} {path} is empty")
    return data


def _blob(path: str, what: str) -> bytes:
    data = _read(path, what)
    try:
        return decode_blob(data, what=f"{what} {path}")
    except InputError as exc:
        raise InputError(exc.message, hint=exc.hint) from None


def _certs(path: str, what: str) -> list[Any]:
    return load_certificates(_read(path, what), what=f"{what} {path}")


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--at {text!r} is not an ISO 8601 time", hint="write it like 2024-06-01T12:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _evidence(args: argparse.Namespace) -> Evidence:
    kind = args.kind
    if kind == "maa":
        report: bytes | str = _read(args.file, "token file").decode("ascii", "replace").strip()
    elif kind == "nvidia":
        report = _blob(args.file, "GPU report")
    else:
        report = _blob(args.file, f"{kind} evidence")
    vek = chain = None
    if getattr(args, "vcek", None):
        certs = _certs(args.vcek, "VCEK file")
        vek, chain = certs[0], certs[1:]
    if getattr(args, "chain", None) and kind != "nvidia":
        chain = _certs(args.chain, "chain file")
    if kind in ("snp", "az-snp-vtpm") and vek is not None and not chain:
        raise InputError(
            "no ASK/ARK chain was given",
            hint="pass --chain with AMD KDS vcek/v1/<product>/cert_chain (VLEK: vlek/v1/.../cert_chain)",
        )
    nonce = decode_hex(args.nonce, what="--nonce") if getattr(args, "nonce", None) else None
    chain_pem = None
    if kind == "nvidia":
        chain_pem = _read(args.chain, "chain file")
        if args.root:
            chain_pem = chain_pem.rstrip(b"\x00\n") + b"\n" + _read(args.root, "root certificate")
    return Evidence(
        kind=kind,
        report=report,
        vek=vek,
        chain=tuple(chain or ()),
        chain_pem=chain_pem,
        td_quote=_blob(args.quote, "TD quote") if getattr(args, "quote", None) else None,
        tpm_quote=_blob(args.tpm_quote, "TPM quote") if getattr(args, "tpm_quote", None) else None,
        tpm_sig=_blob(args.tpm_sig, "TPM signature") if getattr(args, "tpm_sig", None) else None,
        tcb_info=_read(args.tcb_info, "TCB info") if getattr(args, "tcb_info", None) else None,
        qe_identity=_read(args.qe_identity, "QE identity") if getattr(args, "qe_identity", None) else None,
        collateral_chain=_read(args.collateral_chain, "collateral chain")
        if getattr(args, "collateral_chain", None)
        else None,
        crls=tuple(_read(p, "CRL") for p in getattr(args, "crl", None) or ()),
        jwks=_read(args.jwks, "JWKS file") if getattr(args, "jwks", None) else None,
        issuer=getattr(args, "issuer", None),
        nonce=nonce,
    )


def _summary(claims: Claims) -> list[str]:
    keys = (
        "product",
        "measurement",
        "mrtd",
        "reported_tcb",
        "tcb_status",
        "vmpl",
        "signing_key",
        "root",
        "attestation_type",
        "compliance_status",
        "measurements",
        "fwid",
    )
    lines = [f"  debug: {'yes' if claims.debug else 'no'}"]
    if claims.report_data:
        lines.append(f"  report_data: {claims.report_data.hex()}")
    for key in keys:
        value = claims.get(key)
        if value is not None:
            if isinstance(value, Mapping):
                value = ", ".join(f"{k} {v}" for k, v in dict(value).items())
            lines.append(f"  {key}: {value}")
    if claims.gpu is not None:
        lines.append(f"  gpu: {claims.gpu.kind}, {claims.gpu.get('measurements')} measurements verified")
    return lines


def _failure_line(exc: CCError) -> str:
    if exc.exit_status == 2:
        return f"jupyter-cc: error: {exc.diagnostics()}"
    return f"jupyter-cc: {exc.check} check failed: {exc.diagnostics()}"


def _cmd_verify(args: argparse.Namespace) -> int:
    at = _parse_time(args.at) if args.at else utcnow()
    policy = Policy.load(args.policy) if args.policy else Policy()
    expected_rd = decode_hex(args.report_data, what="--report-data") if args.report_data else None
    kind = args.kind
    out: dict[str, Any] = {
        "kind": kind,
        "verified": False,
        "passed": False,
        "claims": {},
        "reasons": [],
        "errors": [],
    }
    try:
        if kind == "bundle":
            bundle = parse_bundle(_read(args.file, "evidence bundle"))
            out["kind"] = bundle.evidence.kind
            nonce = decode_hex(args.nonce, what="--nonce") if args.nonce else None
            host_key = (
                decode_hex(args.host_key_sha256, what="--host-key-sha256") if args.host_key_sha256 else None
            )
            claims = verify_bundle(bundle, at=at, nonce=nonce, host_key_sha256=host_key)
        else:
            claims = verify(_evidence(args), at=at)
        if expected_rd is not None:
            from jupyter_cc.attest.binding import check_report_data

            check_report_data(claims.report_data, expected_rd)
    except CCError as exc:
        out["errors"].append(exc.diagnostics())
        status = exc.exit_status
        if args.json:
            print(json.dumps(out, indent=2))
        print(_failure_line(exc), file=sys.stderr)
        return status
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
        label = f"{out['kind']} evidence {args.file}"
        if claims.simulated:
            label += f" ({SIMULATED_BANNER})"
        print(f"{label}: VERIFIED")
        print("\n".join(_summary(claims)))
        print(f"policy {policy.name}: {'PASSED' if verdict.passed else 'REJECTED'}")
        for reason in verdict.reasons:
            print(f"  failed {reason}")
    return 0 if verdict.passed else 1


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _write_atomic(out, report)
    print(f"wrote a simulated SNP report to {out} ({SIMULATED_BANNER})")
    if args.chain:
        _write_atomic(Path(args.chain), tee.chain_pem())
    return 0


def _guest_target(args: argparse.Namespace) -> Any:
    from jupyter_cc.remote.guest import GuestTarget

    local = args.transport == "local"
    return GuestTarget(
        transport=args.transport,
        host="" if local else (args.host or ""),
        port=args.port,
        user=args.ssh_user,
        identity_file=args.identity_file,
        known_hosts=args.known_hosts,
        host_key_file=args.host_key_file,
        python=args.python or "python3",
        tee=args.tee,
        sim_dir=getattr(args, "sim_dir", None),
    )


def _cmd_attest(args: argparse.Namespace) -> int:
    from jupyter_cc.remote.attestation import PolicyRejected

    if args.host == "local":
        args.transport = "local"
    policy = Policy.load(args.policy) if args.policy else Policy()
    target = _guest_target(args)
    out: dict[str, Any] = {"host": args.host, "verified": False, "passed": False, "claims": {}, "reasons": []}
    link = None
    try:
        link = target.open()
        result = link.attest(policy)
    except PolicyRejected as exc:
        out.update(verified=True, claims=exc.claims.to_json(), reasons=[str(r) for r in exc.verdict.reasons])
        out["errors"] = []
        if args.json:
            print(json.dumps(out, indent=2))
        print(_failure_line(exc), file=sys.stderr)
        return 1
    except CCError as exc:
        out["errors"] = [exc.diagnostics()]
        if args.json:
            print(json.dumps(out, indent=2))
        print(_failure_line(exc), file=sys.stderr)
        return exc.exit_status
    finally:
        if link is not None:
            link.close()
    state = result.to_json()
    out.update(verified=True, passed=True, claims=state["claims"], reasons=[], errors=[], attestation=state)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        label = f"{result.claims.kind} TEE at {args.host}"
        if result.claims.simulated:
            label += f" ({SIMULATED_BANNER})"
        print(f"{label}: VERIFIED (evidence from {result.source})")
        print("\n".join(_summary(result.claims)))
        for note in result.notes:
            print(f"  note: {note}")
        print(f"policy {result.verdict.policy}: PASSED")
    return 0


def _cmd_kernelspec_install(args: argparse.Namespace) -> int:
    from jupyter_cc.kernelspec import install, kernelspec

    config: dict[str, Any] = {"transport": args.transport, "tee": args.tee}
    for key, value in (
        ("host", args.host),
        ("port", args.port if args.port != 22 else None),
        ("user", args.ssh_user),
        ("identity_file", args.identity_file),
        ("known_hosts", args.known_hosts),
        ("host_key_file", args.host_key_file),
        ("policy", args.policy),
        ("remote_python", args.python),
        ("sim_dir", args.sim_dir),
    ):
        if value is not None:
            config[key] = value
    if args.transport == "ssh" and not args.host:
        raise InputError(
            "--transport ssh needs --host", hint="pass the CVM's address, or use --transport local"
        )
    if args.tee == "sim" and not args.policy:
        raise InputError(
            "--tee sim needs a --policy with allow_simulated = true",
            hint="use 'jupyter-cc kernelspec install-sim' for the simulated demo kernel",
        )
    display = args.display_name or f"Python 3 (Confidential {args.host or 'local'})"
    where = install(args.name, kernelspec(display, config), user=args.user, prefix=_prefix(args))
    print(f"installed kernelspec {args.name} in {where}")
    return 0


def _cmd_kernelspec_install_sim(args: argparse.Namespace) -> int:
    from jupyter_cc.kernelspec import install, kernelspec, simulated_policy_path

    config = {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())}
    display = "Confidential Python (simulated)"
    where = install(args.name, kernelspec(display, config), user=args.user, prefix=_prefix(args))
    print(f"installed kernelspec {args.name} in {where} ({SIMULATED_BANNER})")
    return 0


def _prefix(args: argparse.Namespace) -> str | None:
    if args.sys_prefix:
        return sys.prefix
    return str(args.prefix) if args.prefix else None


def _add_target_options(p: argparse.ArgumentParser, *, transport: bool = True) -> None:
    if transport:
        p.add_argument("--transport", choices=("ssh", "local"), default="ssh")
    p.add_argument("--port", type=int, default=22, help="sshd port of the CVM")
    p.add_argument("--ssh-user", metavar="USER")
    p.add_argument("--identity-file", metavar="PATH")
    p.add_argument("--known-hosts", metavar="PATH", default=None)
    p.add_argument(
        "--host-key-file", metavar="PATH_ON_CVM", help="sshd public key to bind (default /etc/ssh)"
    )
    p.add_argument("--python", metavar="PATH_ON_CVM", help="Python with jupyter-cc in the CVM")
    p.add_argument(
        "--tee", choices=("auto", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sim"), default="auto"
    )
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: valid, no debug, no simulated)")


def _add_install_location(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (a venv)")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--at", metavar="ISO8601", help="verify as of this time (sample certificates expire)")
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: valid, no debug, no simulated)")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (or its leading bytes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jupyter-cc", description="Confidential computing for Jupyter.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verify_p = sub.add_parser("verify", help="verify attestation evidence and appraise it under a policy")
    kinds = verify_p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)

    def kind(name: str, file_help: str, helptext: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=helptext)
        p.add_argument("file", metavar=file_help)
        _add_common(p)
        return p

    def tdx_collateral(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tcb-info", metavar="FILE", help="PCS TCB info JSON for the platform's FMSPC")
        p.add_argument("--qe-identity", metavar="FILE", help="PCS QE identity JSON")
        p.add_argument(
            "--collateral-chain", metavar="PEM", help="issuer chain of the TCB info and QE identity"
        )
        p.add_argument(
            "--crl", metavar="FILE", action="append", help="a DER CRL (root CA or PCK); repeatable"
        )

    p = kind("snp", "REPORT", "AMD SEV-SNP attestation report")
    p.add_argument("--vcek", metavar="CERT", help="VCEK or VLEK (PEM or DER; may be followed by the chain)")
    p.add_argument("--chain", metavar="PEM", help="ASK (or ASVK) then ARK")
    p = kind("sim-snp", "REPORT", "report from the simulated TEE in this data dir")
    p = kind("tdx", "QUOTE", "Intel TDX quote (v4 or v5)")
    tdx_collateral(p)
    p = kind("az-snp-vtpm", "HCL_REPORT", "Azure SEV-SNP CVM vTPM HCL report")
    p.add_argument(
        "--vcek", metavar="CERT", required=True, help="VCEK (PEM or DER; may be followed by the chain)"
    )
    p.add_argument("--chain", metavar="PEM", help="ASK then ARK")
    p.add_argument("--tpm-quote", metavar="FILE", help="TPMS_ATTEST of a TPM2_Quote")
    p.add_argument("--tpm-sig", metavar="FILE", help="its signature by HCLAkPub")
    p.add_argument("--nonce", metavar="HEX", help="expected TPM quote nonce (extraData)")
    p = kind("az-tdx-vtpm", "HCL_REPORT", "Azure TDX CVM vTPM HCL report")
    p.add_argument(
        "--quote", metavar="TD_QUOTE", required=True, help="the TD quote IMDS made from the report"
    )
    tdx_collateral(p)
    p = kind("maa", "TOKEN", "Microsoft Azure Attestation token (JWT)")
    p.add_argument("--jwks", metavar="FILE", required=True, help="the signing keys the MAA instance serves")
    p.add_argument("--issuer", metavar="URL", help="expected issuer (the MAA instance URL)")
    p = kind("nvidia", "REPORT", "NVIDIA H100 SPDM measurement report")
    p.add_argument("--chain", metavar="PEM", required=True, help="the GPU certificate chain, leaf first")
    p.add_argument("--root", metavar="PEM", help="the root, if the chain file does not end with it")
    p.add_argument("--nonce", metavar="HEX", help="the nonce the report must carry")
    p = kind("bundle", "EVIDENCE.json", "an evidence bundle from the guest agent")
    p.add_argument("--nonce", metavar="HEX", help="the nonce the bundle must carry")
    p.add_argument("--host-key-sha256", metavar="HEX", help="the host key digest the bundle must bind")
    verify_p.set_defaults(func=_cmd_verify)

    attest_p = sub.add_parser("attest", help="attest a CVM through its guest agent and print the verdict")
    attest_p.add_argument("host", metavar="HOST", help="the CVM's address, or 'local' for this machine")
    _add_target_options(attest_p)
    attest_p.add_argument("--sim-dir", metavar="PATH_ON_CVM", help=argparse.SUPPRESS)
    attest_p.add_argument("--json", action="store_true", help="print one JSON object")
    attest_p.set_defaults(func=_cmd_attest)

    ks = sub.add_parser("kernelspec", help="install confidential kernelspecs")
    ks_sub = ks.add_subparsers(dest="ks_command", required=True, parser_class=_Parser)
    inst = ks_sub.add_parser("install", help="install a kernelspec that uses confidential-provisioner")
    inst.add_argument("name", metavar="NAME")
    inst.add_argument("--display-name", metavar="TEXT")
    inst.add_argument("--host", metavar="HOST")
    _add_target_options(inst)
    inst.add_argument("--sim-dir", metavar="PATH_ON_CVM", help=argparse.SUPPRESS)
    _add_install_location(inst)
    inst.set_defaults(func=_cmd_kernelspec_install)
    inst_sim = ks_sub.add_parser(
        "install-sim", help=f"install the local simulated kernel ({SIMULATED_BANNER})"
    )
    inst_sim.add_argument("name", metavar="NAME", nargs="?", default="python3-confidential-sim")
    _add_install_location(inst_sim)
    inst_sim.set_defaults(func=_cmd_kernelspec_install_sim)

    from jupyter_cc.cli.audit import add_commands as add_audit_commands
    from jupyter_cc.cli.kbs import add_commands as add_kbs_commands
    from jupyter_cc.cli.profile import add_commands as add_profile_commands
    from jupyter_cc.cli.seal import add_commands as add_seal_commands

    add_kbs_commands(sub, _Parser)
    add_seal_commands(sub, _Parser)
    add_audit_commands(sub, _Parser)
    add_profile_commands(sub, _Parser)

    sim = sub.add_parser("sim", help=f"the simulated TEE ({SIMULATED_BANNER})")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, parser_class=_Parser)
    mint = sim_sub.add_parser("mint", help="mint a simulated SNP report")
    mint.add_argument("-o", "--output", required=True, metavar="FILE")
    mint.add_argument("--report-data", metavar="HEX", help="up to 64 bytes, zero-padded")
    mint.add_argument("--chain", metavar="FILE", help="also write the simulated ASK/ARK chain here")
    mint.add_argument("--debug", action="store_true", help="set the guest policy's DEBUG bit")
    mint.set_defaults(func=_cmd_sim_mint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, 1 or 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except CCError as exc:
        print(_failure_line(exc), file=sys.stderr)
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
