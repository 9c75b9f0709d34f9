"""Appraisal: verified :class:`Claims` and a user's :class:`Policy` give a :class:`Verdict`.

The policy file format is a contract (design section 5). Absent keys are not checked, but the
defaults are the safe ones: debug and simulated TEEs are refused unless the policy says
otherwise, and an unknown key is an error (a typo must not silently turn a rule off). Every
failed rule is reported, each with the expected and the observed value.

Which sections apply: ``[snp]`` to SEV-SNP evidence (``snp``, ``az-snp-vtpm``, ``sim-snp``),
``[tdx]`` to TDX evidence (``tdx``, ``az-tdx-vtpm``), ``[azure]`` and ``[gpu]`` to every kind
(a required claim that the evidence does not carry fails the rule). When ``tee`` is absent, the
accepted kinds are all real kinds, narrowed to the families of the hardware sections that hold
rules: a policy pinning an SNP measurement does not accept TDX evidence by omission.

>>> policy = Policy.from_toml('name = "demo"\\nallow_simulated = true')
>>> policy.allow_simulated
True

This module does no I/O besides reading a policy file in :meth:`Policy.load`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import KIND_NAMES, KINDS, REAL_KINDS, SIMULATED_KINDS, SNP_PRODUCTS, TCB_STATUSES
from jupyter_cc.errors import InputError, PolicyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Policy", "Reason", "Verdict", "appraise"]

_SNP_KINDS = tuple(k.name for k in KINDS if k.family == "snp" and not k.simulated)
_TDX_KINDS = tuple(k.name for k in KINDS if k.family == "tdx" and not k.simulated)
_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")


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


@dataclass(frozen=True)
class Policy:
    """A parsed policy (design section 5). ``Policy()`` is the safe default."""

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
    azure_compliance_status: str | None = None
    azure_secure_boot: bool | None = None
    gpu_required: bool = False

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
        top = ("name", "allow_debug", "allow_simulated", "tee", "snp", "tdx", "azure", "gpu")
        for key in doc:
            if key not in top:
                raise PolicyError(f"unknown top-level key '{key}' (known: {', '.join(top)})")
        snp = _table(doc, "snp", ("measurement", "host_data", "vmpl", "min_tcb", "product"))
        tdx = _table(doc, "tdx", ("mrtd", "rtmr", "tcb_status"))
        azure = _table(doc, "azure", ("compliance_status", "secure_boot"))
        gpu = _table(doc, "gpu", ("required",))
        name = doc.get("name", "unnamed")
        if not isinstance(name, str) or not name:
            raise PolicyError("name must be a non-empty string")
        min_tcb: dict[str, int] = {}
        if "min_tcb" in snp:
            raw = snp["min_tcb"]
            if not isinstance(raw, dict):
                raise PolicyError("[snp] min_tcb must be a table like { bootloader = 3, snp = 8 }")
            for k, v in raw.items():
                if k not in _TCB_FIELDS:
                    raise PolicyError(
                        f"[snp] min_tcb has unknown field '{k}' (known: {', '.join(_TCB_FIELDS)})"
                    )
                min_tcb[k] = _int(v, f"[snp] min_tcb.{k}")
        rtmr = None
        if "rtmr" in tdx:
            sets = tdx["rtmr"]
            if (
                not isinstance(sets, list)
                or not sets
                or not all(isinstance(s, list) and len(s) == 4 for s in sets)
            ):
                raise PolicyError("[tdx] rtmr must be a list of lists of four 96-hex-digit values")
            rtmr = tuple(tuple(_hex(v, 48, "[tdx] rtmr") for v in s) for s in sets)
        compliance = azure.get("compliance_status")
        if compliance is not None and not isinstance(compliance, str):
            raise PolicyError("[azure] compliance_status must be a string")
        return cls(
            name=name,
            allow_debug=_bool(doc.get("allow_debug", False), "allow_debug"),
            allow_simulated=_bool(doc.get("allow_simulated", False), "allow_simulated"),
            tee=_strings(doc["tee"], KIND_NAMES, "tee") if "tee" in doc else None,
            snp_measurement=_hex_list(snp["measurement"], 48, "[snp] measurement")
            if "measurement" in snp
            else None,
            snp_host_data=_hex(snp["host_data"], 32, "[snp] host_data") if "host_data" in snp else None,
            snp_vmpl=_int(snp["vmpl"], "[snp] vmpl") if "vmpl" in snp else None,
            snp_min_tcb=min_tcb,
            snp_product=_strings(snp["product"], SNP_PRODUCTS, "[snp] product") if "product" in snp else None,
            tdx_mrtd=_hex_list(tdx["mrtd"], 48, "[tdx] mrtd") if "mrtd" in tdx else None,
            tdx_rtmr=rtmr,
            tdx_tcb_status=_strings(tdx["tcb_status"], TCB_STATUSES, "[tdx] tcb_status")
            if "tcb_status" in tdx
            else None,
            azure_compliance_status=compliance,
            azure_secure_boot=_bool(azure["secure_boot"], "[azure] secure_boot")
            if "secure_boot" in azure
            else None,
            gpu_required=_bool(gpu.get("required", False), "[gpu] required"),
        )

    def _has_snp_rules(self) -> bool:
        return any(
            v is not None for v in (self.snp_measurement, self.snp_host_data, self.snp_vmpl, self.snp_product)
        ) or bool(self.snp_min_tcb)

    def _has_tdx_rules(self) -> bool:
        return any(v is not None for v in (self.tdx_mrtd, self.tdx_rtmr, self.tdx_tcb_status))

    def accepted_kinds(self) -> tuple[str, ...]:
        """The evidence kinds this policy accepts at all (before any other rule)."""
        if self.tee is not None:
            kinds = list(self.tee)
        else:
            families: list[str] = []
            if self._has_snp_rules():
                families += _SNP_KINDS
            if self._has_tdx_rules():
                families += _TDX_KINDS
            kinds = families or list(REAL_KINDS)
        if self.allow_simulated:
            kinds += [name for name in SIMULATED_KINDS if name not in kinds]
        return tuple(kinds)


def _observed(value: Any) -> str:
    return "absent" if value is None else str(value)


def _check_snp(policy: Policy, claims: Claims, fail: Any) -> None:
    if policy.snp_measurement is not None:
        m = str(claims.get("measurement", "")).lower()
        if m not in policy.snp_measurement:
            fail("snp.measurement", f"one of {list(policy.snp_measurement)}", m or None)
    if policy.snp_host_data is not None:
        hd = str(claims.get("host_data", "")).lower()
        if hd != policy.snp_host_data:
            fail("snp.host_data", policy.snp_host_data, hd or None)
    if policy.snp_vmpl is not None and claims.get("vmpl") != policy.snp_vmpl:
        fail("snp.vmpl", policy.snp_vmpl, claims.get("vmpl"))
    if policy.snp_product is not None and claims.get("product") not in policy.snp_product:
        fail("snp.product", f"one of {list(policy.snp_product)}", claims.get("product"))
    tcb = claims.get("reported_tcb") or {}
    for name, minimum in policy.snp_min_tcb.items():
        value = tcb.get(name)
        if value is None or value < minimum:
            fail(f"snp.min_tcb.{name}", f">= {minimum}", value)


def _check_tdx(policy: Policy, claims: Claims, fail: Any) -> None:
    if policy.tdx_mrtd is not None:
        m = str(claims.get("mrtd", "")).lower()
        if m not in policy.tdx_mrtd:
            fail("tdx.mrtd", f"one of {list(policy.tdx_mrtd)}", m or None)
    if policy.tdx_rtmr is not None:
        observed = tuple(str(v).lower() for v in claims.get("rtmr") or ())
        if observed not in policy.tdx_rtmr:
            fail("tdx.rtmr", f"one of {[list(s) for s in policy.tdx_rtmr]}", list(observed) or None)
    if policy.tdx_tcb_status is not None:
        status = claims.get("tcb_status")
        if status not in policy.tdx_tcb_status:
            fail(
                "tdx.tcb_status",
                f"one of {list(policy.tdx_tcb_status)}",
                status
                if status is not None
                else "not evaluated (pass the TCB info and QE identity collateral)",
            )


def _check_azure(policy: Policy, claims: Claims, fail: Any) -> None:
    if (
        policy.azure_compliance_status is not None
        and claims.get("compliance_status") != policy.azure_compliance_status
    ):
        fail("azure.compliance_status", policy.azure_compliance_status, claims.get("compliance_status"))
    if policy.azure_secure_boot is not None and claims.get("secure_boot") != policy.azure_secure_boot:
        fail("azure.secure_boot", policy.azure_secure_boot, claims.get("secure_boot"))


def _check_gpu(policy: Policy, claims: Claims, fail: Any) -> None:
    gpu = claims if claims.kind == "nvidia" else claims.gpu
    if gpu is None:
        fail("gpu.required", "a verified confidential GPU", "no GPU evidence")
    elif gpu.get("cc_mode") is False:
        fail("gpu.required", "a GPU in confidential computing mode", "CC mode off")
    elif gpu.debug and not policy.allow_debug:
        fail("gpu.required", "a GPU without debug access", "GPU debug enabled")


def appraise(claims: Claims, policy: Policy | None = None) -> Verdict:
    """Judge ``claims`` under ``policy`` (the safe default when None), naming every failed rule."""
    policy = policy or Policy()
    reasons: list[Reason] = []

    def fail(rule: str, expected: Any, observed: Any) -> None:
        reasons.append(Reason(rule, str(expected), _observed(observed)))

    if claims.simulated and not policy.allow_simulated:
        fail(
            "allow_simulated",
            "a hardware TEE (the policy does not set allow_simulated = true)",
            "SIMULATED evidence",
        )
    kinds = policy.accepted_kinds()
    if claims.kind not in kinds:
        fail("tee", f"one of {list(kinds)}", claims.kind)
    if claims.debug and not policy.allow_debug:
        fail("allow_debug", "a TEE without debug access (allow_debug = false)", "debug enabled")
    if claims.family == "snp":
        _check_snp(policy, claims, fail)
    elif claims.family == "tdx":
        _check_tdx(policy, claims, fail)
    _check_azure(policy, claims, fail)
    if policy.gpu_required:
        _check_gpu(policy, claims, fail)
    return Verdict(passed=not reasons, policy=policy.name, reasons=tuple(reasons))
