"""The ``[gpu]`` rules: every confidential GPU beside the CPU evidence, judged one by one.

Keys (design section 5; all optional)::

    [gpu]
    required = true                 # at least one verified confidential GPU
    count = 8                       # exactly 8 GPUs; or count = { min = 2 }
    arch = ["hopper"]               # accepted architectures
    min_driver = "550.54"           # dotted versions, compared number by number
    min_vbios = "96.00.5e.00.01"    # VBIOS versions: hex fields
    ppcie = true                    # multi-GPU protected PCIe mode on
    allow_unverified_rim = false    # default: a GPU whose RIMs or OCSP were not checked fails

Every GPU the evidence carries is judged, by every policy (the defaults are the safe ones), and
each failed rule names the GPU (``gpu[1].rim``). Always, for each GPU: it is in CC mode, it is not
debuggable (``allow_debug``), and unless ``allow_unverified_rim = true`` its measurements were
compared with NVIDIA's signed RIMs and its certificates' revocation was checked by OCSP. A RIM
that was checked and did not match never reaches the policy: the verifier refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_cc.attest.claims import Claims
from jupyter_cc.errors import PolicyError

__all__ = ["GPU_KEYS", "GpuRules", "check_gpus", "gpu_verdicts", "parse_gpu"]

GPU_KEYS = ("required", "count", "arch", "min_driver", "min_vbios", "ppcie", "allow_unverified_rim")
ARCHES = ("hopper",)
_VERSION = re.compile(r"^[0-9A-Fa-f]+(\.[0-9A-Fa-f]+)*$")
# The signed protected-PCIe opaque field: 0xAA on, 0x55 off (NVIDIA's enabled/disabled bytes).
_PPCIE_ON = "aa"

Record = Callable[[str, bool, Any, Any], None]


@dataclass(frozen=True)
class GpuRules:
    """The parsed ``[gpu]`` table (the module docstring); the default states no rule."""

    required: bool = False
    count: int | None = None
    count_is_min: bool = False
    arch: tuple[str, ...] | None = None
    min_driver: str | None = None
    min_vbios: str | None = None
    ppcie: bool | None = None
    allow_unverified_rim: bool = False

    def stated(self) -> dict[str, Any]:
        """The rules stated, by dotted name (``allow_unverified_rim`` only lifts one)."""
        count = None if self.count is None else (f">= {self.count}" if self.count_is_min else self.count)
        values = {
            "gpu.required": True if self.required else None,
            "gpu.count": count,
            "gpu.arch": self.arch,
            "gpu.min_driver": self.min_driver,
            "gpu.min_vbios": self.min_vbios,
            "gpu.ppcie": self.ppcie,
        }
        return {k: v for k, v in values.items() if v is not None}


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where} must be true or false, found {value!r}")
    return value


def _count(value: Any) -> tuple[int, bool]:
    if isinstance(value, dict) and set(value) == {"min"}:
        value, is_min = value["min"], True
    else:
        is_min = False
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PolicyError(f"[gpu] count must be a positive integer or {{ min = N }}, found {value!r}")
    return value, is_min


def _version(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _VERSION.match(value.strip()):
        raise PolicyError(f'{where} must be a dotted version like "550.54", found {value!r}')
    return value.strip().lower()


def _arch(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise PolicyError("[gpu] arch must be a non-empty list of architecture names")
    for v in items:
        if v.lower() not in ARCHES:
            raise PolicyError(f"[gpu] arch has unknown value {v!r} (known: {', '.join(ARCHES)})")
    return tuple(v.lower() for v in items)


def parse_gpu(table: Mapping[str, Any]) -> GpuRules:
    """The ``[gpu]`` table (unknown keys were refused by the caller)."""
    count, is_min = _count(table["count"]) if "count" in table else (None, False)
    return GpuRules(
        required=_bool(table.get("required", False), "[gpu] required"),
        count=count,
        count_is_min=is_min,
        arch=_arch(table["arch"]) if "arch" in table else None,
        min_driver=_version(table["min_driver"], "[gpu] min_driver") if "min_driver" in table else None,
        min_vbios=_version(table["min_vbios"], "[gpu] min_vbios") if "min_vbios" in table else None,
        ppcie=_bool(table["ppcie"], "[gpu] ppcie") if "ppcie" in table else None,
        allow_unverified_rim=_bool(table.get("allow_unverified_rim", False), "[gpu] allow_unverified_rim"),
    )


def _numbers(version: str, base: int) -> tuple[int, ...] | None:
    """``550.54.15`` as (550, 54, 15); VBIOS fields are hex (``96.00.5e.00.01``)."""
    try:
        return tuple(int(part, base) for part in version.strip().split("."))
    except ValueError:
        return None


def _at_least(observed: Any, minimum: str, base: int) -> bool:
    """``observed`` >= ``minimum`` number by number; an absent or unreadable version fails."""
    have = _numbers(str(observed), base) if observed is not None else None
    want = _numbers(minimum, base)
    return have is not None and want is not None and have >= want


def _gpus(claims: Claims) -> tuple[Claims, ...]:
    """The GPUs to judge: GPU evidence itself, or every GPU verified beside CPU evidence."""
    if claims.kind == "nvidia":
        return (claims,)
    return claims.gpus or ((claims.gpu,) if claims.gpu is not None else ())


def _check_collateral(rules: GpuRules, name: str, gpu: Claims, record: Record) -> None:
    """RIMs compared and OCSP checked, unless ``allow_unverified_rim`` waives both (the
    verifier already refused what was checked and wrong; here only "could not be had" is left)."""
    if rules.allow_unverified_rim:
        return
    notes = "; ".join(str(n) for n in gpu.get("collateral_notes") or ())
    rim = gpu.get("rim")
    why = f" ({notes})" if notes else ""
    record(
        f"{name}.rim",
        rim == "verified",
        "measurements compared with NVIDIA's signed RIMs",
        f"{rim or 'unchecked'}{why}",
    )
    rev = gpu.get("revocation")
    record(
        f"{name}.revocation",
        rev == "checked",
        "revocation checked by NVIDIA's OCSP responder",
        rev or "unchecked",
    )


def _check_one(rules: GpuRules, index: int, gpu: Claims, allow_debug: bool, record: Record) -> None:
    """Every rule for GPU ``index``, each recorded under ``gpu[index].<rule>``."""
    name = f"gpu[{index}]"
    cc = gpu.get("cc_mode")
    # Protected PCIe mode replaces per-GPU CC mode (NVIDIA: exclusive); only ppcie = true takes it.
    ok = cc in ("on", True) or (cc == "ppcie" and rules.ppcie is True)
    expected = "a GPU in confidential computing mode" + (" or protected PCIe mode" if rules.ppcie else "")
    record(f"{name}.cc_mode", ok, expected, cc if cc is not None else "unknown")
    compared = gpu.get("rim") == "verified"
    # Without the RIM comparison debug cannot be excluded; allow_unverified_rim accepts that too.
    if gpu.debug and not allow_debug and (compared or not rules.allow_unverified_rim):
        shown = "GPU debug enabled" if compared else "debug not excluded (no RIM comparison)"
        record(f"{name}.debug", False, "a GPU without debug access (allow_debug = false)", shown)
    _check_collateral(rules, name, gpu, record)
    if rules.arch is not None:
        arch = gpu.get("arch")
        record(f"{name}.arch", arch in rules.arch, f"one of {list(rules.arch)}", arch)
    if rules.min_driver is not None:
        driver = gpu.get("driver_version")
        record(
            f"{name}.min_driver", _at_least(driver, rules.min_driver, 10), f">= {rules.min_driver}", driver
        )
    if rules.min_vbios is not None:
        vbios = gpu.get("vbios_version")
        record(f"{name}.min_vbios", _at_least(vbios, rules.min_vbios, 16), f">= {rules.min_vbios}", vbios)
    if rules.ppcie is not None:
        on = gpu.get("ppcie") == _PPCIE_ON
        shown = "on" if on else ("off" if gpu.get("ppcie") is not None else "not reported by the GPU")
        record(
            f"{name}.ppcie", on == rules.ppcie, "protected PCIe " + ("on" if rules.ppcie else "off"), shown
        )


def check_gpus(rules: GpuRules, claims: Claims, allow_debug: bool, record: Record) -> None:
    """Judge every GPU of ``claims`` under ``rules``; GPUs present are judged by every policy."""
    gpus = _gpus(claims)
    if rules.required:
        shown = f"{len(gpus)} verified NVIDIA GPU(s)" if gpus else "no GPU evidence"
        record("gpu.required", bool(gpus), "a verified confidential GPU", shown)
    if rules.count is not None:
        ok = len(gpus) >= rules.count if rules.count_is_min else len(gpus) == rules.count
        expected = f"{'at least ' if rules.count_is_min else 'exactly '}{rules.count} GPUs"
        record("gpu.count", ok, expected, f"{len(gpus)} GPUs")
    for index, gpu in enumerate(gpus):
        _check_one(rules, index, gpu, allow_debug, record)


_SHOWN = ("chip", "arch", "driver_version", "vbios_version", "cc_mode", "rim", "revocation", "debug")


def gpu_verdicts(claims: Mapping[str, Any] | None, reasons: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each GPU of a ``claims`` JSON object with its own verdict, for the card, panel and API.

    ``reasons`` are a verdict's failed rules as text (``gpu[1].rim: expected ...``); a GPU
    passed when none of them names it. GPU-wide rules (``gpu.count``) stay in the verdict.
    """
    if not isinstance(claims, Mapping):
        return []
    if claims.get("tee") == "nvidia":
        gpus: Sequence[Any] = [claims]
    else:
        listed = claims.get("gpus")
        single = claims.get("gpu")
        gpus = (
            listed
            if isinstance(listed, Sequence) and listed
            else ([single] if isinstance(single, Mapping) else [])
        )
    out = []
    for index, gpu in enumerate(g for g in gpus if isinstance(g, Mapping)):
        failed = [str(r) for r in reasons if str(r).startswith(f"gpu[{index}].")]
        entry: dict[str, Any] = {"index": index, **{k: gpu.get(k) for k in _SHOWN}}
        entry["passed"] = not failed
        entry["reasons"] = failed
        out.append(entry)
    return out
