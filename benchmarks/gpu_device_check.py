"""Device check for confidential NVIDIA GPUs: what real NVML says, and whether the evidence verifies.

Run on the machine with the GPU (``python benchmarks/gpu_device_check.py``; add ``--offline`` to
use only the collateral cache). It prints the system's CC state, the GPU count, each GPU's
architecture, driver and VBIOS versions, the RIM ids it would fetch and, when CC is on, whether
each GPU's evidence verifies (chain, signature, nonce, FWID, RIMs, OCSP). Where CC is off it says
so and attests nothing (NVML gives no report then). Without a GPU or NVML it says which and
exits 0, so it can run anywhere.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_cc.attest.binding import gpu_nonce
from jupyter_cc.attest.certs import load_certificates, utcnow
from jupyter_cc.attest.evidence import Evidence, verify
from jupyter_cc.attest.nvidia import parse_spdm_report, supported_chip
from jupyter_cc.attest.nvidia_rim import rim_ids
from jupyter_cc.collateral.evidence import with_collateral
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.collateral.settings import load_settings
from jupyter_cc.errors import CCError
from jupyter_cc.guest import nvml


def _print_system(state: nvml.SystemState) -> None:
    print(f"CC state: {state.cc_mode} ({state.why}); multi-GPU mode: {state.multi_gpu}")
    print(f"driver: {state.driver_version or 'unknown'}")
    print(f"GPUs: {len(state.gpus)}")
    for gpu in state.gpus:
        print(
            f"  GPU {gpu.index}: {gpu.name}, arch {gpu.arch or 'unknown'}, "
            f"VBIOS {gpu.vbios_version or 'unknown'}"
        )


def _check_entry(index: int, entry: dict[str, str], nonce: bytes, service: CollateralService) -> bool:
    report = base64.b64decode(entry["report"])
    chain = entry["chain"].encode()
    try:
        parsed = parse_spdm_report(report)
        driver_id, vbios_id = rim_ids(parsed, supported_chip(load_certificates(chain)))
        print(f"  entry {index} (NVML GPU {entry.get('nvml_index', '?')}): RIM ids {driver_id}, {vbios_id}")
        ev = Evidence(kind="nvidia", report=report, chain_pem=chain, nonce=gpu_nonce(nonce, index))
        at = utcnow()
        ev, _ = with_collateral(ev, at=at, service=service)
        claims = verify(ev, at=at)
    except CCError as exc:
        print(f"  GPU {index}: evidence does NOT verify: {exc.diagnostics()}")
        return False
    notes = "; ".join(claims.get("collateral_notes") or ())
    print(
        f"  GPU {index}: evidence verifies (root {claims.get('root')}); RIM {claims.get('rim')}, "
        f"revocation {claims.get('revocation')}, debug {claims.debug}" + (f" [{notes}]" if notes else "")
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="use only the collateral cache")
    args = parser.parse_args(argv)
    state = nvml.system_state()
    if not state.gpus:
        print(f"no NVIDIA GPU / NVML not available: {state.why}")
        return 0
    _print_system(state)
    if not state.attestable:
        print(
            "CC is off (and no protected PCIe mode): NVML gives no attestation report, nothing is attested."
        )
        hopper = [g for g in state.gpus if g.arch == "hopper"]
        if state.driver_version and hopper:
            print(f"RIM ids it would fetch: NV_GPU_DRIVER_GH100_{state.driver_version}; the VBIOS RIM id")
            print("  needs the report's project and SKU fields, which only a CC-mode report carries")
        return 0
    nonce = os.urandom(32)
    entries, unavailable = nvml.collect_nvml(nonce)
    for note in unavailable:
        print(f"note: {note.reason}")
    service = CollateralService(load_settings().with_offline(args.offline))
    results = [_check_entry(i, entry, nonce, service) for i, entry in enumerate(entries)]
    print(f"verified: {sum(results)} of {len(state.gpus)} GPUs")
    return 0 if results and all(results) and len(results) == len(state.gpus) else 1


if __name__ == "__main__":
    sys.exit(main())
