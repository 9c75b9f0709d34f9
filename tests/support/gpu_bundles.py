"""Simulated CPU bundles that carry one GPU list and bind another, for the GPU binding tests."""

from __future__ import annotations

import base64
import os
from typing import Any

from jupyter_cc.attest.binding import GPU_EVIDENCE, expected_report_data
from jupyter_cc.attest.evidence import bound_gpu_digest, serialize_bundle

__all__ = ["sim_gpu_bundle"]


def sim_gpu_bundle(
    sim_tee: Any,
    gpus: list[dict[str, str]],
    bound_gpus: list[dict[str, str]] | None = None,
    *,
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(bundle JSON, nonce): simulated evidence binding ``bound_gpus`` (default ``gpus``) while
    carrying ``gpus``, so a test can make the two differ."""
    nonce = nonce if nonce is not None else os.urandom(32)
    bound_list = gpus if bound_gpus is None else bound_gpus
    bound = {GPU_EVIDENCE: bound_gpu_digest(bound_list)} if bound_list else {}
    report = sim_tee.mint(expected_report_data(nonce, bytes(32), bound))
    doc = serialize_bundle(
        "sim-snp",
        {"report": base64.b64encode(report).decode()},
        nonce=nonce,
        host_key_sha256=bytes(32),
        source="simulated",
        collected_at="2026-01-01T00:00:00Z",
        gpus=gpus,
        bound=bound,
    )
    return doc, nonce
