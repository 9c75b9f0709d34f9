"""Every GPU and its own verdict in the %attest card and the REST API's kernel state."""

from __future__ import annotations

from jupyter_cc.notebook.card import card_text
from jupyter_cc.server import state

GPU = {"tee": "nvidia", "arch": "hopper", "driver_version": "545.00", "vbios_version": "96.00.5E.00.01"}
CLAIMS = {
    "tee": "sim-snp",
    "gpu": GPU | {"rim": "verified", "revocation": "checked"},
    "gpus": [
        GPU | {"rim": "verified", "revocation": "checked"},
        GPU | {"rim": "unchecked", "revocation": "unchecked"},
    ],
}
REASONS = [
    "gpu[1].rim: expected measurements compared with NVIDIA's signed RIMs, observed unchecked",
    "gpu[1].revocation: expected revocation checked by NVIDIA's OCSP responder, observed unchecked",
]


def test_the_api_lists_every_gpu_with_its_verdict() -> None:
    raw = {"confidential": True, "verdict": {"passed": True, "policy": "p", "reasons": []}, "claims": CLAIMS}
    got = state.normalize("k", raw)
    assert list(got) == list(state.KEYS)
    assert [(g["index"], g["rim"], g["passed"]) for g in got["gpus"]] == [
        (0, "verified", True),
        (1, "unchecked", True),
    ]
    # A refused kernel shows no stale GPU verdicts.
    refused = state.normalize("k", raw | {"verdict": {"passed": False, "policy": "p", "reasons": REASONS}})
    assert refused["gpus"] is None and refused["confidential"] is False


def test_the_card_has_one_row_per_gpu() -> None:
    text = card_text({"verdict": {"passed": False, "policy": "p", "reasons": REASONS}, "claims": CLAIMS})
    assert (
        "GPU 0: hopper, driver 545.00, VBIOS 96.00.5E.00.01, RIM verified, revocation checked: passed" in text
    )
    assert (
        "GPU 1: hopper, driver 545.00, VBIOS 96.00.5E.00.01, RIM unchecked, revocation unchecked: "
        "failed (rim, revocation)" in text
    )
