"""``jupyter-cc policy new|check|explain``: write a policy from verified evidence, try it, read it.

::

    jupyter-cc policy new --from EVIDENCE.json -o prod.toml            # a guest agent's bundle
    jupyter-cc policy new --from report.bin --kind snp --vcek vcek.der --chain ask_ark.pem -o prod.toml
    jupyter-cc policy check prod.toml EVIDENCE.json other.json         # each rule: pass or FAIL
    jupyter-cc policy explain prod.toml                                # in plain words

``new`` verifies the evidence exactly as ``jupyter-cc verify`` does (the same options) and
refuses to write from evidence that does not verify, or that has debug enabled unless
``--allow-debug``; it pins what the evidence shows (kind, measurement, HOST_DATA, VMPL, product,
TCB floor, TDX MRTD and RTMRs, Azure claims) with a comment per rule, checks that the written
policy loads and accepts that evidence, then writes it atomically (never a partial file).
``check`` exits 0 when every evidence file verified and passed, 1 otherwise; ``explain``
exits 0 (1 with ``--strict`` when it warns). Bad input is one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import SIMULATED_BANNER, TCB_STATUSES, kind
from jupyter_cc.cli.verify import add_evidence_options, verified_claims
from jupyter_cc.errors import CCError, EvidenceError, InputError
from jupyter_cc.files import write_atomic
from jupyter_cc.policy import Policy, appraise, judge

__all__ = ["add_commands"]

_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
_NO_MEASUREMENT = (
    "WARNING: this policy pins no measurement for {kinds}: any genuine, non-debug VM of that kind "
    "passes, whatever firmware, kernel or software it booted"
)


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``policy new``, ``policy check`` and ``policy explain`` to the CLI's subparsers."""
    policy_p = sub.add_parser("policy", help="write a policy from verified evidence, check it, explain it")
    policy_sub = policy_p.add_subparsers(dest="policy_command", required=True, parser_class=parser_class)

    new = policy_sub.add_parser("new", help="write a policy pinning what verified evidence shows")
    new.add_argument("--from", dest="source", required=True, metavar="EVIDENCE_OR_BUNDLE")
    new.add_argument("-o", "--output", required=True, metavar="POLICY.toml")
    new.add_argument("--name", help="the policy's name (default: pinned-<kind>)")
    new.add_argument("--force", action="store_true", help="replace the output file if it exists")
    new.add_argument("--allow-debug", action="store_true", help="write a policy for debug-enabled evidence")
    add_evidence_options(new)
    new.set_defaults(func=_cmd_new)

    check = policy_sub.add_parser("check", help="show each rule's outcome for each evidence file")
    check.add_argument("policy", metavar="POLICY")
    check.add_argument("evidence", nargs="+", metavar="EVIDENCE")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    add_evidence_options(check)
    check.set_defaults(func=_cmd_check)

    explain = policy_sub.add_parser("explain", help="say in plain words what a policy accepts")
    explain.add_argument("policy", metavar="POLICY")
    explain.add_argument("--strict", action="store_true", help="exit 1 when the explanation warns")
    explain.set_defaults(func=_cmd_explain)


# --- new -------------------------------------------------------------------------------------


def _rule(table: Any, key: str, value: Any, comment: str) -> None:
    table.add(tomlkit.comment(comment))
    table.add(key, value)


def _inline(values: dict[str, int]) -> Any:
    item = tomlkit.inline_table()
    item.update(values)
    return item


def _snp_rules(claims: Claims) -> Table:
    snp = tomlkit.table()
    measurement = claims.get("measurement")
    if isinstance(measurement, str):
        _rule(
            snp, "measurement", [measurement], "launch measurement (MEASUREMENT): firmware and initial guest"
        )
    host_data = claims.get("host_data")
    if isinstance(host_data, str):
        _rule(snp, "host_data", host_data, "HOST_DATA the host set at launch (e.g. the ACI CCE policy hash)")
    vmpl = claims.get("vmpl")
    if isinstance(vmpl, int):
        _rule(snp, "vmpl", vmpl, "the VM privilege level that requested the report (0: most privileged)")
    tcb = claims.get("reported_tcb") or {}
    floor = {k: tcb[k] for k in _TCB_FIELDS if isinstance(tcb.get(k), int)}
    if floor:
        _rule(snp, "min_tcb", _inline(floor), "TCB floor: the reported SVNs, lower ones refused")
    product = claims.get("product")
    if isinstance(product, str):
        _rule(snp, "product", [product], "the AMD EPYC product the VCEK names")
    return snp


def _tdx_rules(claims: Claims) -> Table:
    tdx = tomlkit.table()
    mrtd = claims.get("mrtd")
    if isinstance(mrtd, str):
        _rule(tdx, "mrtd", [mrtd], "MRTD: the TD's initial contents (its virtual firmware)")
    rtmr = claims.get("rtmr")
    if rtmr is not None and len(rtmr) == 4:
        values = tomlkit.array()
        values.extend(list(rtmr))
        values.multiline(True)
        sets = tomlkit.array()
        sets.append(values)
        _rule(
            tdx, "rtmr", sets, "RTMR0-3 as measured: they change with firmware, kernel, command line, events"
        )
    status = claims.get("tcb_status")
    if isinstance(status, str) and status in TCB_STATUSES:
        floor = [s for s in TCB_STATUSES[: TCB_STATUSES.index(status) + 1] if s != "Revoked"]
        _rule(tdx, "tcb_status", floor, f"TCB floor: Intel's status {status} or better")
    return tdx


def _azure_rules(claims: Claims) -> Table:
    azure = tomlkit.table()
    compliance = claims.get("compliance_status")
    if isinstance(compliance, str):
        _rule(azure, "compliance_status", compliance, "MAA's verdict on the confidential VM")
    secure_boot = claims.get("secure_boot")
    if isinstance(secure_boot, bool):
        _rule(azure, "secure_boot", secure_boot, "UEFI secure boot as the VM configuration reports it")
    return azure


def policy_text(claims: Claims, name: str, source: str) -> str:
    """The TOML of a policy pinning what ``claims`` show, a comment above each rule."""
    doc = tomlkit.document()
    doc.add(
        tomlkit.comment(f"Written by jupyter-cc policy new from {source} ({claims.kind} evidence, verified).")
    )
    doc.add(tomlkit.comment("Every rule below pins what that evidence showed; absent keys are not checked."))
    doc.add("name", name)
    _rule(doc, "tee", [claims.kind], "the evidence kind accepted")
    _rule(
        doc,
        "allow_debug",
        claims.debug,
        "debug access to the TEE (the evidence: " + ("on" if claims.debug else "off") + ")",
    )
    if claims.simulated:
        _rule(doc, "allow_simulated", True, f"the simulated TEE: {SIMULATED_BANNER}")
    family = claims.cpu_family
    sections = {"snp": _snp_rules(claims) if family == "snp" else None}
    sections["tdx"] = _tdx_rules(claims) if family == "tdx" else None
    sections["azure"] = _azure_rules(claims)
    for section, table in sections.items():
        if table is not None and len(table):
            doc.add(tomlkit.nl())
            doc.add(section, table)
    if claims.gpu is not None:
        gpu = tomlkit.table()
        _rule(gpu, "required", True, "a verified confidential GPU must come with the CPU evidence")
        doc.add(tomlkit.nl())
        doc.add("gpu", gpu)
    return tomlkit.dumps(doc)


def _cmd_new(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists", hint="pass --force to replace it, or choose another -o")
    name_, claims = verified_claims(args, args.source)
    if claims.debug and not args.allow_debug:
        raise EvidenceError(
            f"the evidence in {args.source} has debug enabled, so a policy pinning it would accept a "
            "VM whose memory the host can read",
            hint="pass --allow-debug if that is what you want (never for production)",
        )
    if claims.get("tcb_status") == "Revoked":
        raise EvidenceError(f"the evidence in {args.source} runs on a TCB that Intel has revoked")
    text = policy_text(claims, args.name or f"pinned-{name_}", Path(args.source).name)
    policy = Policy.from_toml(text)
    # Sample evidence verified without CRLs says revocation: unchecked, which every policy
    # refuses; the written policy is for evidence judged where CRLs are fetched.
    reasons = [r for r in appraise(claims, policy).reasons if r.rule != "collateral.revocation"]
    if reasons:  # pragma: no cover - a policy written from claims must accept them
        raise CCError(f"the written policy would refuse its own evidence ({reasons[0]}); this is a bug")
    if claims.get("revocation") not in (None, "checked"):
        print(
            f"note: {args.source} was verified without CRLs (revocation: unchecked); every policy "
            "refuses that, so kernels and the broker check revocation with fetched collateral",
            file=sys.stderr,
        )
    try:
        write_atomic(out, text.encode("utf-8"))
    except OSError as exc:
        raise InputError(f"cannot write {out} ({exc.strerror or exc.__class__.__name__})") from None
    print(f"wrote policy {policy.name} to {out}: {len(policy.stated())} rules pinning {name_} evidence")
    for line in _warnings(policy):
        print(line, file=sys.stderr)
    return 0


# --- check -----------------------------------------------------------------------------------


def _check_one(args: argparse.Namespace, policy: Policy, path: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "evidence": path,
        "kind": args.kind or "bundle",
        "verified": False,
        "passed": False,
    }
    try:
        result["kind"], claims = verified_claims(args, path)
    except InputError:
        raise
    except CCError as exc:
        result["errors"] = [exc.sentence()]
        result["rules"] = []
        return result
    outcomes = judge(claims, policy)
    result.update(
        verified=True,
        passed=all(o.passed for o in outcomes),
        simulated=claims.simulated,
        rules=[
            {"rule": o.rule, "passed": o.passed, "expected": o.expected, "observed": o.observed}
            for o in outcomes
        ],
    )
    return result


def _print_check(policy: Policy, result: dict[str, Any]) -> None:
    label = f"{result['kind']} evidence {result['evidence']}"
    if result.get("simulated"):
        label += f" ({SIMULATED_BANNER})"
    if not result["verified"]:
        print(f"{label}: NOT VERIFIED: {result['errors'][0]}")
        return
    print(f"{label}: VERIFIED; policy {policy.name}: {'PASSED' if result['passed'] else 'REJECTED'}")
    for rule in result["rules"]:
        mark = "pass" if rule["passed"] else "FAIL"
        print(f"  {mark}  {rule['rule']}: expected {rule['expected']}, observed {rule['observed']}")


def _cmd_check(args: argparse.Namespace) -> int:
    policy = Policy.load(args.policy)
    results = [_check_one(args, policy, path) for path in args.evidence]
    passed = all(r["passed"] for r in results)
    if args.json:
        print(json.dumps({"policy": policy.name, "passed": passed, "results": results}, indent=2))
    else:
        for result in results:
            _print_check(policy, result)
    return 0 if passed else 1


# --- explain ---------------------------------------------------------------------------------


def _warnings(policy: Policy) -> list[str]:
    unpinned = [k for k in policy.accepted_kinds() if not policy.pins_measurement(k)]
    out = [_NO_MEASUREMENT.format(kinds=", ".join(unpinned))] if unpinned else []
    if policy.collateral_allow_unchecked_revocation:
        out.append(
            "WARNING: allow_unchecked_revocation = true: a TEE whose VCEK or PCK the vendor has "
            "revoked passes whenever its CRLs could not be checked"
        )
    return out


def _hexes(values: Any) -> str:
    return " or ".join(str(v) for v in values)


_SENTENCES: dict[str, Callable[[Any], str]] = {
    "snp.measurement": lambda v: f"its SEV-SNP launch measurement is {_hexes(v)}",
    "snp.host_data": lambda v: f"its HOST_DATA is {v}",
    "snp.vmpl": lambda v: f"the report was requested at VMPL {v}",
    "snp.product": lambda v: f"it runs on an AMD {' or '.join(v)} CPU",
    "tdx.mrtd": lambda v: f"its TDX MRTD is {_hexes(v)}",
    "tdx.rtmr": lambda v: f"its RTMR0-3 are exactly one of {len(v)} pinned set(s)",
    "tdx.tcb_status": lambda v: f"Intel's collateral rates its TCB {' or '.join(v)} (needs collateral)",
    "tdx.deny_advisories": lambda v: (
        f"Intel lists none of the advisories {', '.join(v)} for it (needs collateral)"
    ),
    "azure.compliance_status": lambda v: f"MAA rates the VM {v!r}",
    "azure.secure_boot": lambda v: f"secure boot is {'on' if v else 'off'}",
    "collateral.max_stale_days": lambda v: f"its collateral is at most {v} days past its nextUpdate",
    "gpu.required": lambda v: "a verified confidential GPU (CC mode, no debug) comes with it",
}


def _sentence(rule: str, value: Any) -> str:
    if rule.startswith("snp.min_tcb."):
        return f"its reported {rule.rsplit('.', 1)[1]} SVN is at least {value}"
    return _SENTENCES[rule](value)


def explain_lines(policy: Policy) -> list[str]:
    """The plain-words explanation ``policy explain`` prints, warnings first."""
    lines = _warnings(policy)
    lines.append(
        f"Policy {policy.name!r} accepts evidence that verifies (signatures, chains to the pinned roots) "
        "of these kinds:"
    )
    for name in policy.accepted_kinds():
        entry = kind(name)
        summary = entry.summary if entry is not None else name
        rules = policy.judged_for(name)
        if entry is not None and entry.simulated:
            summary += f", {SIMULATED_BANNER}"
        lines.append(f"- {name} ({summary})" + (", where:" if rules else ": no further rule"))
        stated = policy.stated()
        lines += [f"    {_sentence(rule, stated[rule])}" for rule in rules]
    lines.append(
        "Debug-enabled TEEs are "
        + ("ACCEPTED (allow_debug = true)" if policy.allow_debug else "refused")
        + "; "
        "the simulated TEE is "
        + ("accepted (allow_simulated = true)" if policy.allow_simulated else "refused")
        + "."
    )
    revocation = (
        "NOT required to be checked (allow_unchecked_revocation = true)"
        if policy.collateral_allow_unchecked_revocation
        else "checked against the vendor's CRLs where it can be"
    )
    lines.append(
        f"A TCB Intel rates Revoked is refused; revocation is {revocation}; collateral may be at "
        f"most {policy.max_stale_days} days past its nextUpdate."
    )
    return lines


def _cmd_explain(args: argparse.Namespace) -> int:
    policy = Policy.load(args.policy)
    print("\n".join(explain_lines(policy)))
    warned = bool(_warnings(policy))
    if warned:
        print(_warnings(policy)[0], file=sys.stderr)
    return 1 if warned and args.strict else 0
