"""Guest-side evidence collection: which TEE source to use, and why the others were not.

The guest agent calls exactly three functions:

* :func:`collect_cpu_evidence` returns the CPU TEE evidence for a 64-byte REPORT_DATA from the
  first *real* source that works, in this order: configfs-tsm (:mod:`.tsm`), ``/dev/sev-guest``
  (:mod:`.sevguest`), the Azure vTPM (:mod:`.vtpm`). The simulated TEE is used **only** when
  asked for with ``tee="sim"``; ``auto`` never falls back to it, so a misconfigured CVM cannot
  pass itself off as simulated-but-working.
* :func:`collect_gpu_evidence` returns NVIDIA GPU entries (:mod:`.nvml`).
* :func:`probe` says, for the agent's hello, which sources are usable, without making a report.

When no source works, one :class:`~jupyter_cc.errors.EvidenceError` lists every source tried
and why it failed, e.g. ``no TEE evidence source is available: configfs-tsm: /sys/kernel/...
does not exist (...); sev-guest: /dev/sev-guest does not exist (...); azure-vtpm: ...``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

from jupyter_cc.attest.kinds import KINDS, SIMULATED_BANNER, TEE_CHOICES
from jupyter_cc.errors import CCError, EvidenceError, InputError
from jupyter_cc.guest import nvml, sevguest, tsm, vtpm
from jupyter_cc.guest.results import Collected, SourceUnavailableError, Unavailable

__all__ = [
    "Collected",
    "Unavailable",
    "collect_cpu_evidence",
    "collect_gpu_evidence",
    "collect_simulated",
    "probe",
]

SIM_SOURCE = "simulated"
# The sources to try for each TEE choice, from the registry; ``auto`` tries every real source.
_SOURCES_FOR: dict[str, tuple[str, ...]] = {
    "auto": tuple(dict.fromkeys(source for k in KINDS for source in k.sources)),
    **{k.tee_choice: k.sources for k in KINDS if k.tee_choice is not None and k.sources},
}


SIM_HOST_DATA_ENV = "JUPYTER_CC_SIM_HOST_DATA"
"""The HOST_DATA the simulated TEE was "launched" with (hex; the test Kubernetes sets it as a
confidential hypervisor would: the digest of the pod's CCE policy or init-data)."""


def _sim_host_data() -> bytes:
    value = os.environ.get(SIM_HOST_DATA_ENV, "")
    if not value:
        return bytes(32)
    try:
        host_data = bytes.fromhex(value)
    except ValueError:
        host_data = b""
    if len(host_data) != 32:
        raise InputError(f"{SIM_HOST_DATA_ENV} must be 64 hex digits")
    return host_data


def collect_simulated(report_data: bytes, sim_dir: Path | None = None) -> Collected:
    """A ``sim-snp`` report from the simulated TEE in ``sim_dir`` (default: the data dir)."""
    from jupyter_cc.attest.sim import SimulatedTee

    report = SimulatedTee.load_or_create(sim_dir).mint(report_data, host_data=_sim_host_data())
    return Collected(
        kind="sim-snp",
        source=SIM_SOURCE,
        evidence={"report": base64.b64encode(report).decode("ascii")},
        notes=(SIMULATED_BANNER,),
    )


def collect_cpu_evidence(
    report_data: bytes,
    *,
    tee: str = "auto",
    sim_dir: Path | None = None,
    root: Path = Path("/"),
    tpm_tcti: str | None = None,
    imds_url: str = vtpm.IMDS_URL,
    tsm_fs: tsm.ConfigFs | None = None,
    sev_ioctl: sevguest.IoctlFn | None = None,
) -> tuple[Collected, list[Unavailable]]:
    """CPU TEE evidence for ``report_data`` and the sources found unavailable before it.

    Args:
        report_data: exactly 64 bytes (design section 6 step 3).
        tee: ``auto`` (real sources in order), ``sim`` (the simulated TEE only), or a kind
            (``snp``, ``tdx``, ``az-snp-vtpm``, ``az-tdx-vtpm``) to use only sources giving it.
        sim_dir: the simulated TEE's folder for ``tee="sim"``; None means the data dir.
        root: the file system root (tests point it at a fake tree).
        tpm_tcti: the TCTI for the vTPM (else ``$TPM2TOOLS_TCTI``, else ``/dev/tpmrm0``).
        imds_url: the Azure instance metadata service.
        tsm_fs, sev_ioctl: test doubles for the configfs file operations and the ioctl.

    Raises:
        InputError: ``report_data`` is not 64 bytes, or ``tee`` is not a known choice.
        EvidenceError: no source worked; the message names each one and why.
    """
    if len(report_data) != 64:
        raise InputError(f"REPORT_DATA must be 64 bytes, got {len(report_data)}")
    if tee not in TEE_CHOICES:
        raise InputError(f"unknown TEE choice '{tee}'", hint=f"use one of {', '.join(TEE_CHOICES)}")
    if tee == "sim":
        return collect_simulated(report_data, sim_dir), []
    want_tsm = tee if tee in ("snp", "tdx") else None
    want_az = tee if tee.startswith("az-") else None
    runners: dict[str, Callable[[], Collected]] = {
        "configfs-tsm": lambda: tsm.collect_tsm(report_data, root=root, want=want_tsm, fs=tsm_fs),
        "sev-guest": lambda: sevguest.collect_sev_guest(report_data, root=root, ioctl=sev_ioctl),
        "azure-vtpm": lambda: vtpm.collect_azure_vtpm(
            report_data, tpm_tcti=tpm_tcti, imds_url=imds_url, root=root, want=want_az
        ),
    }
    unavailable: list[Unavailable] = []
    for name in _SOURCES_FOR[tee]:
        try:
            return runners[name](), unavailable
        except SourceUnavailableError as exc:
            unavailable.append(exc.unavailable())
        except CCError as exc:
            unavailable.append(Unavailable(name, _sentence(exc)))
    reasons = "; ".join(f"{u.source}: {u.reason}" for u in unavailable)
    scope = "no TEE evidence source is available" if tee == "auto" else f"no source gives {tee} evidence"
    raise EvidenceError(
        f"{scope}: {reasons}",
        hint="the simulated TEE is used only with --tee sim",
    )


def _sentence(exc: CCError) -> str:
    text = exc.message.rstrip(".")
    return f"{text}; {exc.hint.rstrip('.')}" if exc.hint else text


def collect_gpu_evidence(nonce: bytes) -> tuple[list[dict[str, str]], list[Unavailable]]:
    """Bundle ``gpus`` entries for the session ``nonce`` and the GPUs left out.

    GPU ``i`` signs :func:`~jupyter_cc.attest.binding.gpu_nonce` of ``nonce`` and ``i``.

    A GPU not in confidential computing mode gives no entry but an Unavailable naming it, so a
    policy with ``[gpu] required = true`` refuses the bundle (see :mod:`.nvml`).
    """
    return nvml.collect_nvml(nonce)


def probe(*, root: Path = Path("/"), tpm_tcti: str | None = None) -> list[Unavailable | str]:
    """Which sources this guest can use, for the agent's hello.

    A string names a usable source (``configfs-tsm (snp)``, ``sev-guest (snp)``,
    ``azure-vtpm``, and last, always, ``simulated (only with --tee sim)``); an
    :class:`Unavailable` says why a source cannot be used. No report is made: configfs-tsm
    gets one entry made and removed to read its provider, the vTPM's NV indices are only read.
    """
    out: list[Unavailable | str] = []
    checks: tuple[tuple[str, Callable[[], str]], ...] = (
        ("configfs-tsm", lambda: tsm.probe_tsm(root=root)),
        ("sev-guest", lambda: sevguest.probe_sev_guest(root=root)),
        ("azure-vtpm", lambda: vtpm.probe_vtpm(tpm_tcti=tpm_tcti, root=root)),
    )
    for name, check in checks:
        try:
            out.append(check())
        except SourceUnavailableError as exc:
            out.append(exc.unavailable())
        except CCError as exc:
            out.append(Unavailable(name, _sentence(exc)))
    out.append(f"{SIM_SOURCE} (only with --tee sim)")
    return out
