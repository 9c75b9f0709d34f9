"""NVIDIA confidential GPUs: attestation reports through NVML (package ``nvidia-ml-py``).

For each GPU, when the system is in confidential computing (CC) mode, NVML returns an SPDM
measurement report signed by the GPU for the caller's 32-byte nonce and the GPU's attestation
certificate chain (docs/attestation-formats.md section 6). Each becomes a bundle ``gpus`` entry
``{"kind": "nvidia", "report": <base64>, "chain": <PEM>, "cc_mode": "on"}``.

A GPU that is *not* in CC mode (an H100 with CC off, or a GPU without CC support) gives **no
entry**, only an :class:`~jupyter_cc.guest.results.Unavailable` such as "GPU 0 (NVIDIA H100 80GB
HBM3) is not in confidential computing mode (NVML ccFeature 0)". That is deliberate: a bundle
entry without a signed report cannot be verified (``parse_bundle`` rejects it), whereas an
absent entry leaves ``Claims.gpu`` empty, which a policy with ``[gpu] required = true`` refuses
by name ("gpu.required: expected a verified confidential GPU, found no GPU evidence"), while a
policy without that rule still accepts the CPU evidence. The reason travels in the bundle's
notes, so the user also sees *why* there was no GPU evidence.
"""

from __future__ import annotations

import base64
import hmac
from types import ModuleType
from typing import Any

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.errors import InputError
from jupyter_cc.guest.results import Unavailable

__all__ = ["SOURCE", "collect_nvml", "load_nvml"]

SOURCE = "nvml"
NONCE_SIZE = 32
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
_REQUEST_NONCE = slice(4, 36)  # SPDM GET_MEASUREMENTS request: 11 E0 p1 p2, then the nonce


def load_nvml() -> ModuleType | Unavailable:
    """The ``pynvml`` module, or an Unavailable saying it is not installed."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
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


def _cc_state(nvml: Any, errors: tuple[type[BaseException], ...]) -> tuple[int | None, str]:
    """(ccFeature, text for messages); None when NVML cannot say."""
    getter = getattr(nvml, "nvmlSystemGetConfComputeState", None)
    if getter is None:
        return None, "this nvidia-ml-py has no confidential computing API (nvmlSystemGetConfComputeState)"
    try:
        state = getter()
    except errors as exc:
        return None, f"NVML cannot report the confidential computing state ({_text(exc)})"
    feature = int(getattr(state, "ccFeature", 0))
    return feature, f"NVML ccFeature {feature}"


def _gpu_entry(nvml: Any, handle: Any, nonce: bytes, label: str) -> dict[str, str]:
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
        "cc_mode": "on",
    }


def collect_nvml(nonce: bytes, *, nvml: Any = None) -> tuple[list[dict[str, str]], list[Unavailable]]:
    """GPU evidence entries for the session ``nonce`` (32 bytes), and why GPUs were left out.

    Args:
        nonce: the session nonce; GPU ``i`` signs ``gpu_nonce(nonce, i)``
            (:mod:`jupyter_cc.attest.binding`), which is what ``parse_bundle`` expects.
        nvml: the ``pynvml`` module; tests pass a fake with the same functions.
    """
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"the GPU attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if nvml is None:
        loaded = load_nvml()
        if isinstance(loaded, Unavailable):
            return [], [loaded]
        nvml = loaded
    errors = _error_types(nvml)
    per_gpu: tuple[type[BaseException], ...] = (*errors, ValueError, AttributeError)
    try:
        nvml.nvmlInit()
    except errors as exc:
        return [], [Unavailable(SOURCE, f"NVML did not start ({_text(exc)}): no NVIDIA driver or GPU here")]
    entries: list[dict[str, str]] = []
    unavailable: list[Unavailable] = []
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            return [], [Unavailable(SOURCE, "NVML found no NVIDIA GPU")]
        feature, state = _cc_state(nvml, errors)
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            label = f"GPU {index} ({_text(nvml.nvmlDeviceGetName(handle))})"
            if feature != CC_FEATURE_ENABLED:
                unavailable.append(
                    Unavailable(SOURCE, f"{label} is not in confidential computing mode ({state})")
                )
                continue
            try:
                entries.append(_gpu_entry(nvml, handle, gpu_nonce(nonce, index), label))
            except per_gpu as exc:
                unavailable.append(Unavailable(SOURCE, f"{label} gave no attestation report ({_text(exc)})"))
    except errors as exc:
        unavailable.append(Unavailable(SOURCE, f"NVML failed while listing GPUs ({_text(exc)})"))
    finally:
        try:
            nvml.nvmlShutdown()
        except errors:
            pass
    return entries, unavailable
