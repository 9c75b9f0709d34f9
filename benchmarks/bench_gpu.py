"""GPU appraisal speed, as ratios measured in one run (issue 13, design section 11).

Per GPU: the median time of the full appraisal (:func:`~jupyter_cc.attest.nvidia.verify_nvidia`
with the driver and VBIOS RIMs and the OCSP answers already in hand, as the collateral cache
gives them) against the signature and chain checks alone (the same call without collateral:
chain to the pinned root, report signature, nonce, FWID). Target: <= 2x. Then the same for a
bundle of 1, 2, 4 and 8 GPUs: the time per GPU must stay flat (linear in the GPU count).

The PKIs are the synthetic look-alikes of tests/support/fake_nvidia.py (NVIDIA's keys cannot
sign OCSP answers here); the RIMs are NVIDIA's real ones (../shared/vectors) re-signed by the
synthetic RIM CA, and each report carries the real H100's 64 measurement blocks, so the XML and
the comparison are full size.

Run: ``.venv/bin/python benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.attest.nvidia import parse_spdm_report, verify_nvidia
from jupyter_cc.attest.nvidia_rim import GpuCollateral
from jupyter_cc.attest.roots import TrustStore
from tests.support.fake_nvidia import (
    T0,
    GpuPki,
    RimPki,
    make_report,
    ocsp_answer,
    ocsp_pairs,
    sign_swid,
    strip_signature,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
AT = T0 + timedelta(days=1)
NONCE = os.urandom(32)


def setup(
    count: int,
) -> tuple[list[tuple[bytes, bytes, bytes]], GpuCollateral, list[GpuCollateral], TrustStore]:
    """``count`` GPUs (report, chain, nonce), their collateral, and the roots pinning them."""
    real = parse_spdm_report(bytes.fromhex((VECTORS / "nvidia/h100-545.report.hex").read_text().strip()))
    blocks = {b.index: b.value for b in real.blocks}
    rim = RimPki()
    driver = sign_swid(
        strip_signature((VECTORS / "nvidia/rim-driver-545.00-test.swidtag").read_bytes()), rim.chain()
    )
    vbios = sign_swid(
        strip_signature((VECTORS / "nvidia/rim-vbios-96005E0001-test.swidtag").read_bytes()), rim.chain()
    )
    gpus, collateral = [], []
    anchors = []
    for i in range(count):
        pki = GpuPki()
        nonce = gpu_nonce(NONCE, i)
        gpus.append((make_report(pki.leaf, nonce, blocks), pki.chain_pem(), nonce))
        answers = tuple(ocsp_answer(c.cert, issuer) for c, issuer in ocsp_pairs(pki, rim))
        collateral.append(GpuCollateral(driver, vbios, answers, rim_roots=rim.roots()))
        anchors.extend(pki.roots().anchors.values())
    return gpus, collateral[0], collateral, TrustStore.of(*anchors)


def appraisers(count: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(signature and chain checks alone, full appraisal) of ``count`` GPUs."""
    gpus, _, collateral, roots = setup(count)

    def alone() -> None:
        for report, chain, nonce in gpus:
            verify_nvidia(report, chain, at=AT, roots=roots, nonce=nonce)

    def full() -> None:
        for (report, chain, nonce), extra in zip(gpus, collateral, strict=True):
            claims = verify_nvidia(report, chain, at=AT, roots=roots, nonce=nonce, collateral=extra)
            assert claims.get("rim") == "verified", claims.get("collateral_notes")
            assert claims.get("revocation") == "checked", claims.get("collateral_notes")

    return alone, full


def interleaved(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median ms of each case, the cases taking turns in every round (a busy machine's load
    then weighs on all of them alike)."""
    for fn in cases.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) * 1000 for name, v in samples.items()}


COUNTS = (1, 2, 4, 8)
# Per-GPU time at N GPUs over that at 1: linear within the noise of a shared machine (the
# signature and chain checks alone, which are linear by construction, are printed beside it).
LINEAR = 1.5


def main() -> int:
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    cases: dict[str, Callable[[], None]] = {}
    for count in COUNTS:
        cases[f"alone{count}"], cases[f"full{count}"] = appraisers(count)
    ms = interleaved(cases, rounds=int(os.environ.get("BENCH_ROUNDS", "40")))
    ok = True
    for count in COUNTS:
        alone, full = ms[f"alone{count}"], ms[f"full{count}"]
        ratio, growth = full / alone, (full / count) / ms["full1"]
        base_growth = (alone / count) / ms["alone1"]
        print(
            f"{count} GPU(s): signature+chain {alone / count:.2f} ms per GPU, full appraisal "
            f"{full / count:.2f} ms per GPU: ratio {ratio:.2f}x (target <= 2x); per-GPU time "
            f"{growth:.2f}x that of 1 GPU (linear: ~1x; signature+chain alone: {base_growth:.2f}x)"
        )
        ok = ok and ratio <= 2.0 and growth <= LINEAR
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
