"""The policy format and its appraisal (see :mod:`jupyter_cc.policy` for the rules in words)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import (
    AZURE_KINDS,
    KIND_NAMES,
    KINDS,
    REAL_KINDS,
    SIMULATED_KINDS,
    SNP_PRODUCTS,
    TCB_STATUSES,
)
from jupyter_cc.errors import InputError, PolicyError
from jupyter_cc.policy.gpu import GPU_KEYS, GpuRules, check_gpus, parse_gpu

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Outcome", "Policy", "Reason", "Verdict", "appraise", "judge"]

_SNP_KINDS = tuple(k.name for k in KINDS if k.family == "snp" and not k.simulated)
_TDX_KINDS = tuple(k.name for k in KINDS if k.family == "tdx" and not k.simulated)
_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
_MEASUREMENT_RULES = ("snp.measurement", "tdx.mrtd", "tdx.rtmr")

# Which kinds each hardware section judges, and which kinds carry each rule's claim (a rule
# absent from _CARRIERS, like gpu.required, is judged for every kind).
_SNP_FAMILY = frozenset(k.name for k in KINDS if k.family == "snp")
_TDX_FAMILY = frozenset(k.name for k in KINDS if k.family == "tdx")
_HARDWARE = {"snp": _SNP_FAMILY | {"maa"}, "tdx": _TDX_FAMILY | {"maa"}}
_FAMILY_NAME = {"snp": "SEV-SNP", "tdx": "TDX"}
_COLLATERAL_KINDS = frozenset(k.name for k in KINDS if k.family in _HARDWARE and not k.simulated)
_CARRIERS: dict[str, tuple[frozenset[str], str]] = {
    "snp.min_tcb.fmc": (_SNP_FAMILY, "only SEV-SNP reports carry the FMC SVN (Turin); MAA tokens do not"),
    "snp.product": (
        _SNP_FAMILY,
        "only evidence signed by a VCEK or VLEK names the AMD product; MAA tokens do not",
    ),
    "tdx.tcb_status": (_TDX_FAMILY, "only TDX quotes judged against Intel's collateral have a TCB status"),
    "tdx.deny_advisories": (_TDX_FAMILY, "only TDX quotes judged against Intel's collateral list advisories"),
    "azure.compliance_status": (frozenset({"maa"}), "only MAA tokens carry Azure's compliance verdict"),
    "azure.secure_boot": (
        frozenset({"maa", *AZURE_KINDS}),
        "only MAA tokens and Azure vTPM reports carry the secure boot state",
    ),
    "collateral.max_stale_days": (
        _COLLATERAL_KINDS,
        "only hardware evidence judged against vendor collateral has a collateral age",
    ),
}


@dataclass(frozen=True)
class Reason:
    """One failed rule: its dotted name, what the policy expects, what the evidence shows."""

    rule: str
    expected: str
    observed: str

    def __str__(self) -> str:
        return f"{self.rule}: expected {self.expected}, observed {self.observed}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of appraisal; ``reasons`` lists every failed rule (empty when passed)."""

    passed: bool
    policy: str
    reasons: tuple[Reason, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "policy": self.policy, "reasons": [str(r) for r in self.reasons]}


def _hex(value: Any, size: int, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]+", value) or len(value) != size * 2:
        raise PolicyError(f"{where} must be {size * 2} hex digits, found {value!r}")
    return value.lower()


def _hex_list(value: Any, size: int, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise PolicyError(f"{where} must be a hex string or a non-empty list of them")
    return tuple(_hex(v, size, where) for v in items)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where} must be true or false, found {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PolicyError(f"{where} must be a non-negative integer, found {value!r}")
    return value


def _strings(value: Any, allowed: Sequence[str], where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise PolicyError(f"{where} must be a non-empty list of strings")
    for v in items:
        if v not in allowed:
            raise PolicyError(f"{where} has unknown value {v!r} (known: {', '.join(allowed)})")
    return tuple(items)


def _table(doc: Mapping[str, Any], name: str, known: Sequence[str]) -> Mapping[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise PolicyError(f"[{name}] must be a table")
    for key in table:
        if key not in known:
            raise PolicyError(f"unknown key '{key}' in [{name}] (known: {', '.join(known)})")
    return table


def _min_tcb(snp: Mapping[str, Any]) -> dict[str, int]:
    if "min_tcb" not in snp:
        return {}
    raw = snp["min_tcb"]
    if not isinstance(raw, dict):
        raise PolicyError("[snp] min_tcb must be a table like { bootloader = 3, snp = 8 }")
    min_tcb: dict[str, int] = {}
    for k, v in raw.items():
        if k not in _TCB_FIELDS:
            raise PolicyError(f"[snp] min_tcb has unknown field '{k}' (known: {', '.join(_TCB_FIELDS)})")
        min_tcb[k] = _int(v, f"[snp] min_tcb.{k}")
    return min_tcb


def _rtmr(tdx: Mapping[str, Any]) -> tuple[tuple[str, ...], ...] | None:
    if "rtmr" not in tdx:
        return None
    sets = tdx["rtmr"]
    if not isinstance(sets, list) or not sets or not all(isinstance(s, list) and len(s) == 4 for s in sets):
        raise PolicyError("[tdx] rtmr must be a list of lists of four 96-hex-digit values")
    return tuple(tuple(_hex(v, 48, "[tdx] rtmr") for v in s) for s in sets)


def _advisories(tdx: Mapping[str, Any]) -> tuple[str, ...] | None:
    if "deny_advisories" not in tdx:
        return None
    items = tdx["deny_advisories"]
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise PolicyError(
            '[tdx] deny_advisories must be a non-empty list of advisory IDs like "INTEL-SA-00837"'
        )
    return tuple(v.strip().upper() for v in items)


def _display(rule: str) -> str:
    """``snp.min_tcb.snp`` as a reader finds it in the file: ``[snp] min_tcb.snp``."""
    section, _, rest = rule.partition(".")
    return f"[{section}] {rest}" if rest else rule


def _unjudged(rules: Sequence[str], kind: str) -> str | None:
    """Why one of ``rules`` would not be judged for evidence of ``kind``, or None."""
    stated = {r.partition(".")[0] for r in rules} & _HARDWARE.keys()
    own = {s for s in stated if kind in _HARDWARE[s]}
    for rule in rules:
        section = rule.partition(".")[0]
        if section in _HARDWARE and kind not in _HARDWARE[section]:
            if own:
                continue  # judged by the section of its own family instead
            family = next((s for s, kinds in _HARDWARE.items() if kind in kinds), None)
            todo = f"add [{family}] rules for it" if family else "set tee without it"
            return (
                f"policy rule {_display(rule)} is not judged for evidence kind {kind}: "
                f"[{section}] rules apply to {_FAMILY_NAME[section]} evidence and the policy states "
                f"no rules for {kind}; remove {kind} from tee or {todo}"
            )
        carriers, why = _CARRIERS.get(rule, (None, ""))
        if carriers is not None and kind not in carriers:
            return f"policy rule {_display(rule)} cannot be judged for evidence kind {kind}: {why}"
    return None


@dataclass(frozen=True)
class Policy:
    """A parsed policy (design section 5). ``Policy()`` is the safe default.

    Construction checks that every stated rule is judged for every accepted kind
    (:class:`PolicyError` naming the rule and the kind otherwise).
    """

    name: str = "default"
    allow_debug: bool = False
    allow_simulated: bool = False
    tee: tuple[str, ...] | None = None
    snp_measurement: tuple[str, ...] | None = None
    snp_host_data: str | None = None
    snp_vmpl: int | None = None
    snp_min_tcb: Mapping[str, int] = field(default_factory=dict)
    snp_product: tuple[str, ...] | None = None
    tdx_mrtd: tuple[str, ...] | None = None
    tdx_rtmr: tuple[tuple[str, ...], ...] | None = None
    tdx_tcb_status: tuple[str, ...] | None = None
    tdx_deny_advisories: tuple[str, ...] | None = None
    azure_compliance_status: str | None = None
    azure_secure_boot: bool | None = None
    collateral_max_stale_days: int | None = None
    collateral_allow_unchecked_revocation: bool = False
    gpu: GpuRules = field(default_factory=GpuRules)
    _kinds: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "Revoked" in (self.tdx_tcb_status or ()):
            raise PolicyError("[tdx] tcb_status cannot accept Revoked: every policy refuses a revoked TCB")
        object.__setattr__(self, "_kinds", self._judged_kinds())

    @property
    def gpu_required(self) -> bool:
        """``[gpu] required``: a verified confidential GPU is needed besides the CPU evidence."""
        return self.gpu.required

    @property
    def max_stale_days(self) -> int:
        return self.collateral_max_stale_days or 0  # [collateral] max_stale_days, default 0

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy file; :class:`PolicyError` names the file and the bad key."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read policy file {path} ({exc.__class__.__name__})") from None
        try:
            return cls.from_toml(text)
        except PolicyError as exc:
            raise PolicyError(exc.message, hint=exc.hint, source=str(path)) from None

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML ({exc})") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Policy:
        top = ("name", "allow_debug", "allow_simulated", "tee", "snp", "tdx", "azure", "collateral", "gpu")
        for key in doc:
            if key not in top:
                raise PolicyError(f"unknown top-level key '{key}' (known: {', '.join(top)})")
        snp = _table(doc, "snp", ("measurement", "host_data", "vmpl", "min_tcb", "product"))
        tdx = _table(doc, "tdx", ("mrtd", "rtmr", "tcb_status", "deny_advisories"))
        azure = _table(doc, "azure", ("compliance_status", "secure_boot"))
        collateral = _table(doc, "collateral", ("max_stale_days", "allow_unchecked_revocation"))
        gpu = _table(doc, "gpu", GPU_KEYS)
        name = doc.get("name", "unnamed")
        if not isinstance(name, str) or not name:
            raise PolicyError("name must be a non-empty string")
        compliance = azure.get("compliance_status")
        if compliance is not None and not isinstance(compliance, str):
            raise PolicyError("[azure] compliance_status must be a string")

        def opt(table: Mapping[str, Any], key: str, parse: Any, *more: Any) -> Any:
            return parse(table[key], *more) if key in table else None

        return cls(
            name=name,
            allow_debug=_bool(doc.get("allow_debug", False), "allow_debug"),
            allow_simulated=_bool(doc.get("allow_simulated", False), "allow_simulated"),
            tee=opt(doc, "tee", _strings, KIND_NAMES, "tee"),
            snp_measurement=opt(snp, "measurement", _hex_list, 48, "[snp] measurement"),
            snp_host_data=opt(snp, "host_data", _hex, 32, "[snp] host_data"),
            snp_vmpl=opt(snp, "vmpl", _int, "[snp] vmpl"),
            snp_min_tcb=_min_tcb(snp),
            snp_product=opt(snp, "product", _strings, SNP_PRODUCTS, "[snp] product"),
            tdx_mrtd=opt(tdx, "mrtd", _hex_list, 48, "[tdx] mrtd"),
            tdx_rtmr=_rtmr(tdx),
            tdx_tcb_status=opt(tdx, "tcb_status", _strings, TCB_STATUSES, "[tdx] tcb_status"),
            tdx_deny_advisories=_advisories(tdx),
            azure_compliance_status=compliance,
            azure_secure_boot=opt(azure, "secure_boot", _bool, "[azure] secure_boot"),
            collateral_max_stale_days=opt(collateral, "max_stale_days", _int, "[collateral] max_stale_days"),
            collateral_allow_unchecked_revocation=_bool(
                collateral.get("allow_unchecked_revocation", False), "[collateral] allow_unchecked_revocation"
            ),
            gpu=parse_gpu(gpu),
        )

    def stated(self) -> dict[str, Any]:
        """The rules this policy states, by dotted name (``snp.min_tcb.snp``), with their values."""
        values: dict[str, Any] = {
            "snp.measurement": self.snp_measurement,
            "snp.host_data": self.snp_host_data,
            "snp.vmpl": self.snp_vmpl,
            **{f"snp.min_tcb.{k}": v for k, v in self.snp_min_tcb.items()},
            "snp.product": self.snp_product,
            "tdx.mrtd": self.tdx_mrtd,
            "tdx.rtmr": self.tdx_rtmr,
            "tdx.tcb_status": self.tdx_tcb_status,
            "tdx.deny_advisories": self.tdx_deny_advisories,
            "azure.compliance_status": self.azure_compliance_status,
            "azure.secure_boot": self.azure_secure_boot,
            "collateral.max_stale_days": self.collateral_max_stale_days,
            **self.gpu.stated(),
        }
        return {rule: value for rule, value in values.items() if value is not None}

    def hardware_sections(self) -> tuple[str, ...]:
        """``snp`` and/or ``tdx``: the hardware sections that hold rules."""
        stated = {rule.partition(".")[0] for rule in self.stated()}
        return tuple(s for s in _HARDWARE if s in stated)

    def _judged_kinds(self) -> tuple[str, ...]:
        rules = tuple(self.stated())
        if self.tee is not None:
            for name in self.tee:
                problem = _unjudged(rules, name)
                if problem is not None:
                    raise PolicyError(problem)
            kinds = list(self.tee)
        else:
            sections = self.hardware_sections()
            base = [k for k in REAL_KINDS if any(k in _HARDWARE[s] and k != "maa" for s in sections)]
            base = base or list(REAL_KINDS)
            kinds = [k for k in base if _unjudged(rules, k) is None]
            if not kinds:
                raise PolicyError(
                    f"{_unjudged(rules, base[0])}; no evidence kind can be judged by every rule of "
                    "this policy",
                    hint='list the kinds the policy is for in tee, e.g. tee = ["maa"]',
                )
        if self.allow_simulated:
            kinds += [k for k in SIMULATED_KINDS if k not in kinds and _unjudged(rules, k) is None]
        for rule in rules:
            section = rule.partition(".")[0]
            if section in _HARDWARE and not _HARDWARE[section] & set(kinds):
                raise PolicyError(
                    f"policy rule {_display(rule)} is not judged for any kind the policy accepts "
                    f"({', '.join(kinds)}): it applies to {_FAMILY_NAME[section]} evidence",
                    hint="remove the rule, or add a kind of that family to tee "
                    f"({', '.join(sorted(_HARDWARE[section]))})",
                )
        return tuple(kinds)

    def accepted_kinds(self) -> tuple[str, ...]:
        """The evidence kinds this policy accepts at all (before any other rule)."""
        return self._kinds

    def judged_for(self, kind: str) -> tuple[str, ...]:
        """The stated rules judged for evidence of ``kind`` (an MAA token: either family's)."""
        sections = self.hardware_sections()
        own = [s for s in sections if kind in _HARDWARE[s]]
        out = []
        for rule in self.stated():
            section = rule.partition(".")[0]
            if section not in _HARDWARE or section in own or not own:
                out.append(rule)
        return tuple(out)

    def pins_measurement(self, kind: str) -> bool:
        """Whether evidence of ``kind`` must match a pinned launch measurement (MRTD or RTMRs for TDX)."""
        sections = [s for s in self.hardware_sections() if kind in _HARDWARE[s]]
        stated = self.stated()
        pinned = [any(r.startswith(f"{s}.") and r in stated for r in _MEASUREMENT_RULES) for s in sections]
        return bool(pinned) and all(pinned)


@dataclass(frozen=True)
class Outcome:
    """One judged rule: its dotted name, what the policy expects, what the evidence shows."""

    rule: str
    expected: str
    observed: str
    passed: bool

    def reason(self) -> Reason:
        return Reason(self.rule, self.expected, self.observed)

    def __str__(self) -> str:
        return f"{self.rule}: expected {self.expected}, observed {self.observed}"


def _observed(value: Any) -> str:
    return "absent" if value is None else str(value)


_NO_COLLATERAL = "not evaluated: the collateral ({}) was not available"
_STALE = "collateral at most {} days past its nextUpdate"


def _check_snp(policy: Policy, claims: Claims, record: Any) -> None:
    if policy.snp_measurement is not None:
        m = str(claims.get("measurement") or "").lower()
        record(
            "snp.measurement",
            m in policy.snp_measurement,
            f"one of {list(policy.snp_measurement)}",
            m or None,
        )
    if policy.snp_host_data is not None:
        hd = str(claims.get("host_data") or "").lower()
        record("snp.host_data", hd == policy.snp_host_data, policy.snp_host_data, hd or None)
    if policy.snp_vmpl is not None:
        vmpl = claims.get("vmpl")
        record("snp.vmpl", vmpl == policy.snp_vmpl and not isinstance(vmpl, bool), policy.snp_vmpl, vmpl)
    if policy.snp_product is not None:
        product = claims.get("product")
        record("snp.product", product in policy.snp_product, f"one of {list(policy.snp_product)}", product)
    tcb = claims.get("reported_tcb") or {}
    for name, minimum in policy.snp_min_tcb.items():
        value = tcb.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        record(f"snp.min_tcb.{name}", ok, f">= {minimum}", value)


def _check_tdx(policy: Policy, claims: Claims, record: Any) -> None:
    if policy.tdx_mrtd is not None:
        m = str(claims.get("mrtd") or "").lower()
        record("tdx.mrtd", m in policy.tdx_mrtd, f"one of {list(policy.tdx_mrtd)}", m or None)
    if policy.tdx_rtmr is not None:
        observed = tuple(str(v).lower() for v in claims.get("rtmr") or ())
        expected = f"one of {[list(s) for s in policy.tdx_rtmr]}"
        record("tdx.rtmr", observed in policy.tdx_rtmr, expected, list(observed) or None)
    if policy.tdx_tcb_status is not None:
        status = claims.get("tcb_status")
        shown = status if status is not None else _NO_COLLATERAL.format("TCB info and QE identity")
        record(
            "tdx.tcb_status", status in policy.tdx_tcb_status, f"one of {list(policy.tdx_tcb_status)}", shown
        )
    if policy.tdx_deny_advisories is not None:
        ids = claims.get("advisory_ids")
        expected = f"none of {list(policy.tdx_deny_advisories)}"
        if ids is None:
            record("tdx.deny_advisories", False, expected, _NO_COLLATERAL.format("TCB info"))
        elif isinstance(ids, (list, tuple)) and all(isinstance(i, str) for i in ids):
            listed = [i.upper() for i in ids]
            ok = not set(listed) & set(policy.tdx_deny_advisories)
            record("tdx.deny_advisories", ok, expected, listed if listed else "no advisories")
        else:
            record("tdx.deny_advisories", False, expected, f"an unreadable advisory list ({ids!r})")


def _check_azure(policy: Policy, claims: Claims, record: Any) -> None:
    if policy.azure_compliance_status is not None:
        status = claims.get("compliance_status")
        record(
            "azure.compliance_status",
            status == policy.azure_compliance_status,
            policy.azure_compliance_status,
            status,
        )
    if policy.azure_secure_boot is not None:
        boot = claims.get("secure_boot")
        record("azure.secure_boot", boot is policy.azure_secure_boot, policy.azure_secure_boot, boot)


def _check_always(policy: Policy, claims: Claims, record: Any) -> None:
    """The rules of every policy (module docstring); recorded only when they fail."""
    if claims.get("tcb_status") == "Revoked" and policy.tdx_tcb_status is None:  # else judged there
        record("tdx.tcb_status", False, "a TCB that is not Revoked (every policy)", "Revoked")
    rev, days = claims.get("revocation"), claims.get("collateral_stale_days")
    # GPU reports: judged as gpu[i].revocation (jupyter_cc.policy.gpu), OCSP rather than CRLs.
    checkable = claims.kind in _COLLATERAL_KINDS or (
        rev is not None and not claims.simulated and claims.kind != "nvidia"
    )
    if rev != "checked" and checkable and not policy.collateral_allow_unchecked_revocation:
        why = "revocation checked against the vendor's CRLs (allow_unchecked_revocation = false)"
        record("collateral.revocation", False, why, rev or "absent: no CRL was checked")
    if policy.collateral_max_stale_days is None and isinstance(days, int) and days > 0:
        record("collateral.max_stale_days", False, _STALE.format(0), f"{days} days past")


def _check_collateral(policy: Policy, claims: Claims, record: Any) -> None:
    _check_always(policy, claims, record)
    limit = policy.collateral_max_stale_days
    if limit is None:
        return
    days = claims.get("collateral_stale_days")
    expected = _STALE.format(limit)
    if days is None:
        record("collateral.max_stale_days", False, expected, _NO_COLLATERAL.format("TCB info, CRLs"))
    elif isinstance(days, int) and not isinstance(days, bool):
        record("collateral.max_stale_days", days <= limit, expected, f"{max(days, 0)} days past")
    else:
        record("collateral.max_stale_days", False, expected, f"an unreadable collateral age ({days!r})")


def _check_top(policy: Policy, claims: Claims, record: Any) -> None:
    if claims.simulated:
        record(
            "allow_simulated",
            policy.allow_simulated,
            "a hardware TEE (the policy does not set allow_simulated = true)"
            if not policy.allow_simulated
            else "a hardware or simulated TEE (allow_simulated = true)",
            "SIMULATED evidence",
        )
    kinds = policy.accepted_kinds()
    record("tee", claims.kind in kinds, f"one of {list(kinds)}", claims.kind)
    if claims.debug and claims.kind != "nvidia":  # a GPU's debug state: gpu[0].debug
        expected = "a TEE without debug access (allow_debug = false)"
        record(
            "allow_debug",
            policy.allow_debug,
            expected if not policy.allow_debug else "any (allow_debug = true)",
            "debug enabled",
        )


def judge(claims: Claims, policy: Policy | None = None) -> tuple[Outcome, ...]:
    """Every rule of ``policy`` judged for ``claims``: passed and failed, in file order."""
    policy = policy or Policy()
    outcomes: list[Outcome] = []

    def record(rule: str, ok: bool, expected: Any, observed: Any) -> None:
        outcomes.append(Outcome(rule, str(expected), _observed(observed), bool(ok)))

    _check_top(policy, claims, record)
    sections = policy.hardware_sections()
    family = claims.cpu_family
    if family in sections:
        judged: tuple[str, ...] = (family,) if family else ()
    elif claims.kind in policy.accepted_kinds():
        judged = sections  # no section for its TEE (an MAA token of the other family): fail closed
    else:
        judged = ()  # refused by tee already
    if "snp" in judged:
        _check_snp(policy, claims, record)
    if "tdx" in judged:
        _check_tdx(policy, claims, record)
    _check_azure(policy, claims, record)
    _check_collateral(policy, claims, record)
    check_gpus(policy.gpu, claims, policy.allow_debug, record)
    return tuple(outcomes)


def appraise(claims: Claims, policy: Policy | None = None) -> Verdict:
    """Judge ``claims`` under ``policy`` (the safe default when None), naming every failed rule."""
    policy = policy or Policy()
    reasons = tuple(o.reason() for o in judge(claims, policy) if not o.passed)
    return Verdict(passed=not reasons, policy=policy.name, reasons=reasons)
