"""The NVML collector against a fake with nvidia-ml-py's confidential-computing API, and the real
nvidia-ml-py on a machine without a GPU."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.guest import nvml
from tests.support.fake_nvidia import GpuPki, make_report

NONCE = bytes(range(32))


class Settings:
    """c_nvmlSystemConfComputeSettings_v1_t: filled by nvmlSystemGetConfComputeSettings."""

    def __init__(self) -> None:
        self.ccFeature = self.devToolsMode = self.multiGpuMode = 0


class RealisticNvml:
    NVMLError = type("NVMLError", (Exception,), {})
    c_nvmlSystemConfComputeSettings_v1_t = Settings

    def __init__(
        self, gpu: GpuPki, *, cc: int = 1, devtools: int = 0, multi: int = 0, count: int = 2
    ) -> None:
        self.gpu, self.cc, self.devtools, self.multi, self.count = gpu, cc, devtools, multi, count

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return 9

    def nvmlDeviceGetVbiosVersion(self, handle: int) -> str:
        return "96.00.5E.00.01"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "545.00"

    def nvmlSystemGetConfComputeSettings(self, settings: Settings) -> int:
        settings.ccFeature, settings.devToolsMode, settings.multiGpuMode = self.cc, self.devtools, self.multi
        return 0

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        if handle == 1 and self.count == 3:
            raise self.NVMLError("Insufficient Permissions")
        data = make_report(self.gpu.leaf, bytes(nonce), {1: bytes(48)})
        return SimpleNamespace(attestationReport=list(data) + [0] * 9, attestationReportSize=len(data))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = self.gpu.chain_pem()
        return SimpleNamespace(
            attestationCertChain=list(chain) + [0] * 9, attestationCertChainSize=len(chain)
        )


@pytest.fixture(scope="module")
def gpu() -> GpuPki:
    return GpuPki()


def test_cc_mode_gpus_give_entries_with_what_nvml_says(gpu: GpuPki) -> None:
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=RealisticNvml(gpu, multi=1))
    assert unavailable == [] and len(entries) == 2
    for i, entry in enumerate(entries):
        assert base64.b64decode(entry["report"])[4:36] == gpu_nonce(NONCE, i)
        assert (entry["cc_mode"], entry["ppcie"], entry["arch"]) == ("on", "on", "hopper")
        assert (entry["driver_version"], entry["vbios_version"]) == ("545.00", "96.00.5E.00.01")
    # Protected PCIe mode (exclusive of CC mode): attested, and said so.
    entries, _ = nvml.collect_nvml(NONCE, nvml=RealisticNvml(gpu, cc=0, multi=1))
    assert [e["cc_mode"] for e in entries] == ["ppcie", "ppcie"]
    state = nvml.system_state(nvml=RealisticNvml(gpu, devtools=1))
    assert (state.cc_mode, state.multi_gpu, len(state.gpus)) == ("devtools", "none", 2)


def test_cc_off_and_a_gpu_that_refuses_are_notes_not_crashes(gpu: GpuPki) -> None:
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=RealisticNvml(gpu, cc=0))
    assert entries == [] and [u.reason for u in unavailable] == [
        f"GPU {i} (NVIDIA H100 80GB HBM3) is not in confidential computing mode (NVML ccFeature 0)"
        for i in (0, 1)
    ]
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=RealisticNvml(gpu, count=3))
    assert [e["nvml_index"] for e in entries] == ["0", "2"]
    # No gap: the bundle's second entry (NVML's GPU 2) signs the nonce of position 1.
    assert base64.b64decode(entries[1]["report"])[4:36] == gpu_nonce(NONCE, 1)
    assert [u.reason for u in unavailable] == [
        "GPU 1 (NVIDIA H100 80GB HBM3) gave no attestation report (Insufficient Permissions)"
    ]


def test_real_nvidia_ml_py_without_a_driver_says_so() -> None:
    import pynvml  # nvidia-ml-py, a test dependency

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - a machine with an NVIDIA driver
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    entries, unavailable = nvml.collect_nvml(NONCE)
    assert entries == [] and unavailable[0].reason.startswith("NVML did not start (")
    assert "no NVIDIA driver or GPU here" in nvml.system_state().why


def _device_check() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_device_check.py"
    spec = importlib.util.spec_from_file_location("gpu_device_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_device_check_runs_without_a_gpu_and_with_one(
    gpu: GpuPki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    check = _device_check()
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert check.main([]) == 0
    assert capsys.readouterr().out.startswith("no NVIDIA GPU / NVML not available: ")
    monkeypatch.setitem(sys.modules, "pynvml", RealisticNvml(gpu, cc=0))
    assert check.main([]) == 0
    assert "nothing is attested" in capsys.readouterr().out
    # CC on: the evidence is collected and judged; a chain to a root nobody pinned does not verify.
    monkeypatch.setitem(sys.modules, "pynvml", RealisticNvml(gpu))
    assert check.main(["--offline"]) == 1
    out = capsys.readouterr().out
    assert "CC state: on" in out and "RIM ids NV_GPU_DRIVER_GH100_545.00" in out
    assert "does NOT verify" in out and "verified: 0 of 2 GPUs" in out
