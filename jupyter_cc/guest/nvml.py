"""NVIDIA confidential GPUs: attestation reports through NVML (package ``nvidia-ml-py``).

Installed by the guest where GPUs exist (``pip install jupyter-cc[gpu]``). For each GPU, when
the system is in confidential computing (CC) mode, NVML returns an SPDM measurement report
signed by the GPU for the caller's 32-byte nonce and the GPU's attestation certificate chain
(docs/attestation-formats.md section 6). Each becomes a bundle ``gpus`` entry::

    {"kind": "nvidia", "report": <base64>, "chain": <PEM>, "cc_mode": "on" | "devtools" | "ppcie",
     "arch": "hopper", "driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01",
     "ppcie": "on" | "off", "nvml_index": "0"}

Only ``kind``, ``report`` and ``chain`` are evidence (bound into REPORT_DATA and verified); the
other fields are what NVML said, shown to the user beside the verified claims, never trusted
by the verifier, which reads versions, architecture and protected-PCIe state from the signed
report and chain (:mod:`jupyter_cc.attest.nvidia`).

System state comes from ``nvmlSystemGetConfComputeSettings`` where this nvidia-ml-py has it
(CC feature, devtools mode, multi-GPU mode: protected PCIe), else from
``nvmlSystemGetConfComputeState``. NVML has no per-GPU CC switch: every GPU of a CC-mode
system is in CC mode, with the system's devtools setting. Multi-GPU protected PCIe (PPCIE) mode,
which NVIDIA makes exclusive of per-GPU CC mode, is attested too (``cc_mode: "ppcie"``).

A GPU that is *not* in CC mode (an H100 with CC off, or a GPU without CC support) gives **no
entry**, only an :class:`~jupyter_cc.guest.results.Unavailable` such as "GPU 0 (NVIDIA H100 80GB
HBM3) is not in confidential computing mode (NVML ccFeature 0)". That is deliberate: a bundle
entry without a signed report cannot be verified (``parse_bundle`` rejects it), whereas an
absent entry leaves ``Claims.gpus`` empty, which a policy with ``[gpu] required = true`` refuses
by name ("gpu.required: expected a verified confidential GPU, observed no GPU evidence"), while
a policy without that rule still accepts the CPU evidence. The reason travels in the bundle's
notes, so the user also sees *why* there was no GPU evidence. No NVML, no driver, no GPU: a note
saying which, never a crash.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.errors import InputError
from jupyter_cc.guest.results import Unavailable

__all__ = ["SOURCE", "GpuInfo", "SystemState", "collect_nvml", "load_nvml", "system_state"]

SOURCE = "nvml"
NONCE_SIZE = 32
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
DEVTOOLS_ON = 1  # NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
MULTIGPU_PROTECTED_PCIE = 1  # NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE
ARCHITECTURES = {7: "ampere", 8: "ada", 9: "hopper", 10: "blackwell"}  # NVML_DEVICE_ARCH_*
_REQUEST_NONCE = slice(4, 36)  # SPDM GET_MEASUREMENTS request: 11 E0 p1 p2, then the nonce


@dataclass(frozen=True)
class GpuInfo:
    """What NVML says about one GPU (unverified: for notes and the device check)."""

    index: int
    name: str
    arch: str | None = None
    vbios_version: str | None = None


@dataclass(frozen=True)
class SystemState:
    """The system's CC state as NVML reports it; ``cc_feature`` None when NVML cannot say."""

    cc_feature: int | None
    devtools: bool = False
    multi_gpu: str = "none"  # "none", "protected-pcie", "nvle"
    driver_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    why: str = ""
    notes: tuple[Unavailable, ...] = field(default=())

    @property
    def cc_on(self) -> bool:
        return self.cc_feature == CC_FEATURE_ENABLED

    @property
    def attestable(self) -> bool:
        """CC mode, or multi-GPU protected PCIe mode (NVIDIA: the two exclude each other)."""
        return self.cc_on or self.multi_gpu == "protected-pcie"

    @property
    def cc_mode(self) -> str:
        if not self.cc_on:
            return "ppcie" if self.multi_gpu == "protected-pcie" else "off"
        return "devtools" if self.devtools else "on"


def load_nvml() -> ModuleType | Unavailable:
    """The ``pynvml`` module, or an Unavailable saying it is not installed."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return Unavailable(
            SOURCE, "the pynvml module (package nvidia-ml-py) is not installed, so no GPU can be attested"
        )
    return pynvml  # type: ignore[no-any-return,unused-ignore]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _array(values: Any, size: Any) -> bytes:
    """``size`` leading bytes of a ctypes array NVML filled (uint8 or char elements)."""
    n = int(size)
    if n < 0 or n > len(values):
        raise ValueError(f"NVML reported {n} bytes in a {len(values)}-byte buffer")
    head = values[:n]
    return bytes(head) if not isinstance(head, bytes) else head


def _error_types(nvml: Any) -> tuple[type[BaseException], ...]:
    error = getattr(nvml, "NVMLError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else (OSError,)


def _failures(nvml: Any) -> tuple[type[BaseException], ...]:
    """What NVML calls raise when listing GPUs: its own errors, and malformed answers."""
    return (*_error_types(nvml), ValueError, AttributeError)


def _optional(nvml: Any, name: str, errors: tuple[type[BaseException], ...], *args: Any) -> Any:
    """``nvml.name(*args)``, or None when this nvidia-ml-py lacks it or NVML refuses."""
    fn = getattr(nvml, name, None)
    if fn is None:
        return None
    caught: tuple[type[BaseException], ...] = (*errors, ValueError, TypeError, AttributeError)
    try:
        return fn(*args)
    except caught:
        return None


def _settings(nvml: Any, errors: tuple[type[BaseException], ...]) -> Any:
    """``nvmlSystemGetConfComputeSettings`` (CC, devtools, multi-GPU mode), if it answers."""
    struct = getattr(nvml, "c_nvmlSystemConfComputeSettings_v1_t", None)
    if struct is None or getattr(nvml, "nvmlSystemGetConfComputeSettings", None) is None:
        return None
    settings = struct()
    ret = _optional(nvml, "nvmlSystemGetConfComputeSettings", errors, settings)
    return settings if ret == 0 else None


def _cc_state(nvml: Any, errors: tuple[type[BaseException], ...]) -> tuple[int | None, bool, str, str]:
    """(ccFeature, devtools, multi-GPU mode, text for messages); ccFeature None when unknown."""
    settings = _settings(nvml, errors)
    if settings is not None:
        feature = int(getattr(settings, "ccFeature", 0))
        multi = {MULTIGPU_PROTECTED_PCIE: "protected-pcie", 2: "nvle"}.get(
            int(getattr(settings, "multiGpuMode", 0)), "none"
        )
        return (
            feature,
            int(getattr(settings, "devToolsMode", 0)) == DEVTOOLS_ON,
            multi,
            f"NVML ccFeature {feature}",
        )
    getter = getattr(nvml, "nvmlSystemGetConfComputeState", None)
    if getter is None:
        return (
            None,
            False,
            "none",
            "this nvidia-ml-py has no confidential computing API (nvmlSystemGetConfComputeState)",
        )
    try:
        state = getter()
    except errors as exc:
        return None, False, "none", f"NVML cannot report the confidential computing state ({_text(exc)})"
    feature = int(getattr(state, "ccFeature", 0))
    devtools = int(getattr(state, "devToolsMode", 0)) == DEVTOOLS_ON
    return feature, devtools, "none", f"NVML ccFeature {feature}"


def _gpu_info(nvml: Any, handle: Any, index: int, errors: tuple[type[BaseException], ...]) -> GpuInfo:
    arch = _optional(nvml, "nvmlDeviceGetArchitecture", errors, handle)
    vbios = _optional(nvml, "nvmlDeviceGetVbiosVersion", errors, handle)
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        arch=ARCHITECTURES.get(int(arch), f"unknown ({arch})") if isinstance(arch, int) else None,
        vbios_version=_text(vbios) if vbios is not None else None,
    )


def _gpu_entry(nvml: Any, handle: Any, nonce: bytes, label: str) -> dict[str, str]:
    """One GPU's report for ``nonce`` and its chain as a bundle entry; ValueError if unusable."""
    raw = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
    report = _array(raw.attestationReport, raw.attestationReportSize)
    if len(report) < 37 or not hmac.compare_digest(report[_REQUEST_NONCE], nonce):
        raise ValueError(f"{label} returned an attestation report without the requested nonce")
    cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
    chain = _array(cert.attestationCertChain, cert.attestationCertChainSize).rstrip(b"\x00")
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise ValueError(f"{label} returned an attestation certificate chain that is not PEM")
    return {
        "kind": "nvidia",
        "report": base64.b64encode(report).decode("ascii"),
        "chain": chain.decode("ascii", "replace"),
    }


def _start(nvml: Any) -> Unavailable | None:
    """``nvmlInit``; an Unavailable saying why when there is no driver or GPU."""
    try:
        nvml.nvmlInit()
    except _error_types(nvml) as exc:
        return Unavailable(SOURCE, f"NVML did not start ({_text(exc)}): no NVIDIA driver or GPU here")
    return None


def _stop(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except _error_types(nvml):
        pass


def _read_system(nvml: Any) -> SystemState:
    """The system state with NVML started (the caller shuts it down)."""
    errors = _error_types(nvml)
    count = int(nvml.nvmlDeviceGetCount())
    if count == 0:
        return SystemState(
            None, why="NVML found no NVIDIA GPU", notes=(Unavailable(SOURCE, "NVML found no NVIDIA GPU"),)
        )
    feature, devtools, multi, why = _cc_state(nvml, errors)
    driver = _optional(nvml, "nvmlSystemGetDriverVersion", errors)
    gpus = tuple(_gpu_info(nvml, nvml.nvmlDeviceGetHandleByIndex(i), i, errors) for i in range(count))
    return SystemState(feature, devtools, multi, _text(driver) if driver is not None else None, gpus, why)


def system_state(*, nvml: Any = None) -> SystemState:
    """What NVML says about the system and its GPUs, without attesting (the device check)."""
    if nvml is None:
        loaded = load_nvml()
        if isinstance(loaded, Unavailable):
            return SystemState(None, why=loaded.reason, notes=(loaded,))
        nvml = loaded
    failed = _start(nvml)
    if failed is not None:
        return SystemState(None, why=failed.reason, notes=(failed,))
    try:
        return _read_system(nvml)
    except _failures(nvml) as exc:
        note = Unavailable(SOURCE, f"NVML failed while listing GPUs ({_text(exc)})")
        return SystemState(None, why=note.reason, notes=(note,))
    finally:
        _stop(nvml)


def _attest_all(
    nvml: Any, state: SystemState, nonce: bytes
) -> tuple[list[dict[str, str]], list[Unavailable]]:
    per_gpu: tuple[type[BaseException], ...] = (*_error_types(nvml), ValueError, AttributeError)
    entries: list[dict[str, str]] = []
    unavailable: list[Unavailable] = []
    extra = {"cc_mode": state.cc_mode, "ppcie": "on" if state.multi_gpu == "protected-pcie" else "off"}
    if state.driver_version:
        extra["driver_version"] = state.driver_version
    for info in state.gpus:
        label = f"GPU {info.index} ({info.name})"
        if not state.attestable:
            unavailable.append(
                Unavailable(SOURCE, f"{label} is not in confidential computing mode ({state.why})")
            )
            continue
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(info.index)
            # The i-th entry of the bundle signs gpu_nonce(nonce, i), as parse_bundle expects,
            # also when an earlier GPU gave no report.
            entry = _gpu_entry(nvml, handle, gpu_nonce(nonce, len(entries)), label)
        except per_gpu as exc:
            unavailable.append(Unavailable(SOURCE, f"{label} gave no attestation report ({_text(exc)})"))
            continue
        described = {"arch": info.arch, "vbios_version": info.vbios_version, "nvml_index": str(info.index)}
        entries.append(entry | extra | {k: v for k, v in described.items() if v is not None})
    return entries, unavailable


def collect_nvml(nonce: bytes, *, nvml: Any = None) -> tuple[list[dict[str, str]], list[Unavailable]]:
    """GPU evidence entries for the session ``nonce`` (32 bytes), and why GPUs were left out.

    Args:
        nonce: the session nonce; the ``i``-th entry signs ``gpu_nonce(nonce, i)``
            (:mod:`jupyter_cc.attest.binding`), which is what ``parse_bundle`` expects (a GPU
            that gives no report leaves no gap); ``nvml_index`` says which GPU it is.
        nvml: the ``pynvml`` module; tests pass a fake with the same functions.
    """
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"the GPU attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if nvml is None:
        loaded = load_nvml()
        if isinstance(loaded, Unavailable):
            return [], [loaded]
        nvml = loaded
    failed = _start(nvml)
    if failed is not None:
        return [], [failed]
    try:
        state = _read_system(nvml)
        if not state.gpus:
            return [], list(state.notes)
        return _attest_all(nvml, state, nonce)
    except _failures(nvml) as exc:
        return [], [Unavailable(SOURCE, f"NVML failed while listing GPUs ({_text(exc)})")]
    finally:
        _stop(nvml)
