"""Building an evidence bundle inside the TEE: collect the evidence, bind it, serialize it.

Design section 6 step 3 from the guest's side, written once: the guest agent's ``attest``
request and ``%attest`` in a confidential kernel (the ``local`` transport, judged in the same
process) both call :func:`collect_bundle`. The GPU evidence comes first (GPU ``i``
signs ``gpu_nonce(nonce, i)``); REPORT_DATA then binds the client's nonce, the digest of the host
key (32 zero bytes with the ``local`` transport) and the digest of all GPU evidence; the CPU
evidence comes from the first source that works for ``tee``, and the sources that did not work
are named in the bundle's notes.

The judging side is :func:`jupyter_cc.remote.attestation.judge_bundle`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from jupyter_cc.attest.binding import GPU_EVIDENCE, expected_report_data
from jupyter_cc.attest.certs import utcnow
from jupyter_cc.attest.evidence import bound_gpu_digest, serialize_bundle
from jupyter_cc.guest.collectors import collect_cpu_evidence, collect_gpu_evidence
from jupyter_cc.guest.results import Collected, Unavailable

__all__ = ["collect_bundle"]

log = logging.getLogger("jupyter_cc.guest")


def collect_bundle(
    nonce: bytes,
    host_key_sha256: bytes,
    *,
    tee: str = "auto",
    sim_dir: Path | None = None,
    clock: Callable[[], datetime] = utcnow,
    bind: Mapping[str, bytes] | None = None,
    cpu: Callable[[bytes], Collected] | None = None,
) -> bytes:
    """The serialized bundle of fresh evidence bound to ``nonce`` and ``host_key_sha256``.

    Args:
        nonce: the client's fresh 32-byte nonce.
        host_key_sha256: the digest of the sshd host key the client saw (32 zero bytes for
            the ``local`` transport).
        tee: which evidence to collect (a :data:`~jupyter_cc.attest.kinds.TEE_CHOICES` value).
        sim_dir: the simulated TEE's folder for ``tee="sim"``; None means the data dir.
        clock: the UTC time written into the bundle, read once the evidence is collected.
        bind: more optional labelled values to bind (``transport-key`` for the agent
            transport), listed in the bundle's ``bound`` member so the client checks them.
        cpu: the one CPU evidence source to use for the REPORT_DATA (a pod's Attestation Agent,
            :mod:`jupyter_cc.guest.coco_aa`) instead of trying the sources for ``tee``.

    Raises:
        InputError: the nonce or digest has the wrong size, or ``tee`` is not a choice.
        EvidenceError: no evidence source works; the message names each one and why.
    """
    gpus, gpu_unavailable = collect_gpu_evidence(nonce)
    bound = dict(bind or {})
    bound.pop(GPU_EVIDENCE, None)  # only the GPU evidence collected here is bound as that
    if gpus:
        bound[GPU_EVIDENCE] = bound_gpu_digest(gpus)
    report_data = expected_report_data(nonce, host_key_sha256, bound)
    if cpu is not None:
        collected, unavailable = cpu(report_data), list[Unavailable]()
    else:
        collected, unavailable = collect_cpu_evidence(report_data, tee=tee, sim_dir=sim_dir)
    notes = [*collected.notes, *(f"{u.source}: {u.reason}" for u in [*unavailable, *gpu_unavailable])]
    bundle = serialize_bundle(
        collected.kind,
        collected.evidence,
        nonce=nonce,
        host_key_sha256=host_key_sha256,
        source=collected.source,
        collected_at=clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        gpus=gpus,
        notes=notes,
        bound=bound,
    )
    log.info("evidence collected from %s (%s)", collected.source, collected.kind)
    return bundle
