"""Judge an attestation: fresh nonce, bound host key, verify, appraise.

This is design section 6 steps 3 and 4 from the client's side. :func:`judge_bundle` is the one
host-side judgement of a bundle (parse, verify with the nonce and host-key binding, appraise,
read the notes); :func:`attest` asks a guest agent for evidence and judges it, for the kernel
provisioner, ``jupyter-cc attest`` and the Hub spawner, and ``%attest`` judges the bundles it
collects or receives with :func:`judge_bundle` too. So there is one implementation of "is this
the TEE my policy accepts, on this very connection?".
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jupyter_cc.attest.binding import NONCE_SIZE, check_report_data, host_key_digest
from jupyter_cc.attest.certs import utcnow
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import parse_bundle, verify_bundle
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.errors import BindingError, CCError
from jupyter_cc.policy import Policy, Verdict, appraise

if TYPE_CHECKING:  # at run time only when used: a kernel's %attest needs neither paramiko nor these
    from jupyter_cc.collateral.service import CollateralService
    from jupyter_cc.remote.agent_client import AgentClient

__all__ = [
    "Attestation",
    "PolicyRejectedError",
    "attest",
    "check_transport_key",
    "judge_bundle",
    "request_evidence",
]


class PolicyRejectedError(CCError):
    """Genuine evidence that the policy does not accept; names every failed rule."""

    check = "policy"
    exit_status = 1

    def __init__(self, verdict: Verdict, claims: Claims) -> None:
        rules = "; ".join(str(r) for r in verdict.reasons)
        super().__init__(f"policy '{verdict.policy}' refused the {claims.kind} TEE: {rules}")
        self.verdict = verdict
        self.claims = claims


@dataclass(frozen=True)
class Attestation:
    """A verified attestation: what was verified, under which policy, when, over which key.

    ``verdict.passed`` says whether the policy accepted the TEE; :func:`attest` returns only
    passed ones, :func:`judge_bundle` also those the policy rejected (for ``%attest``'s card).
    """

    claims: Claims
    verdict: Verdict
    attested_at: datetime
    bundle_sha256: str
    host_key_sha256: bytes
    source: str
    notes: tuple[str, ...] = ()
    #: The kernel's CurveZMQ server public key (32 bytes) the evidence binds, if it binds one.
    curve_server_key: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "confidential": True,
            "simulated": self.claims.simulated,
            "evidence_kind": self.claims.kind,
            "verdict": self.verdict.to_json(),
            "claims": self.claims.to_json(),
            "attested_at": self.attested_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "evidence_sha256": self.bundle_sha256,
            "source": self.source,
            "gpu": self.claims.gpu.to_json() if self.claims.gpu else None,
        }


def check_transport_key(bound: bytes | None, seen: bytes | None) -> None:
    """The ``transport-key`` a bundle binds must be the key this connection saw, and be there
    exactly when the connection is an agent transport (``seen`` given).

    Raises:
        BindingError: bound but unchecked, missing, or another key (a relay with its own key).
    """
    if bound is None and seen is None:
        return
    if seen is None:
        raise BindingError(
            "the evidence binds a transport key, which this connection has no way to check",
            hint="reach this guest with the agent transport (transport = agent)",
        )
    if bound is None:
        raise BindingError(
            "the evidence binds no transport key: it does not prove the TEE holds this connection's key",
            hint="the port is not a jupyter-cc agent transport in a TEE, or something relays it",
        )
    if not hmac.compare_digest(bound, seen):
        raise BindingError(
            f"the transport key bound in the evidence (SHA256:{bound.hex()[:16]}...) is not the key "
            f"this connection saw (SHA256:{seen.hex()[:16]}...)",
            hint="someone relays the connection with another key; do not continue",
        )


def request_evidence(
    agent: AgentClient, *, host_key_type: str | None, curve: bool = False
) -> tuple[bytes, bytes]:
    """Ask the agent for evidence bound to a fresh nonce; return (nonce, raw bundle bytes).

    Nothing is verified here: :func:`attest` (or a caller keeping the raw bundle, like
    ``%attest --save``) judges it with :func:`judge_bundle` against this nonce and the
    connection's host key. With ``curve`` the agent also makes the next kernel's CurveZMQ key
    pair in the TEE and binds its public key as ``curve-server-key``.
    """
    nonce = os.urandom(NONCE_SIZE)
    extra = {"curve": True} if curve else {}
    # Hardware sources (a vTPM quote, an IMDS round trip) can take seconds: allow a minute.
    answer = agent.request("attest", nonce=nonce.hex(), host_key_type=host_key_type, timeout=60.0, **extra)
    return nonce, str(answer.get("bundle", "")).encode()


def judge_bundle(
    raw: bytes,
    *,
    nonce: bytes,
    host_key_sha256: bytes,
    policy: Policy,
    at: datetime | None = None,
    collateral: CollateralService | None = None,
    roots: TrustStore | None = None,
    transport_key_sha256: bytes | None = None,
) -> Attestation:
    """Parse, verify (nonce and host-key binding included) and appraise one raw bundle.

    The verdict is returned whatever it says; the caller decides what a rejection means.
    Hardware evidence is verified with the collateral and CRLs the collateral service has for
    it (:func:`~jupyter_cc.collateral.evidence.with_collateral`; what the bundle carries is only
    a hint), collateral at most the policy's ``[collateral] max_stale_days`` past its nextUpdate.

    Args:
        nonce: the nonce the evidence must be bound to (the one this client sent).
        host_key_sha256: the digest of the host key the evidence must bind (32 zero bytes for
            the ``local`` transport).
        at: the verification time (default: now).
        collateral: the collateral service (default: one from the settings, made when needed).
        roots: the roots evidence must chain to (default: the pinned vendor roots).
        transport_key_sha256: the digest of the agent transport's key seen in this connection's
            handshake (:mod:`jupyter_cc.remote.agent_transport`); a bundle binding a
            ``transport-key`` is refused without it, since nothing else could check that value.

    Raises:
        EvidenceError: the evidence is malformed, invalid, stale, or bound to another nonce or
            host key; ``CollateralError`` when its collateral cannot be had (fail closed).
    """
    from jupyter_cc.collateral.evidence import with_collateral  # ~0.25 s of imports, when needed

    bundle = parse_bundle(raw)
    when = at or utcnow()
    check_report_data(bundle.nonce, nonce, what="the bundle's nonce")  # before any fetch
    check_transport_key(bundle.bound.get("transport-key"), transport_key_sha256)
    evidence, _ = with_collateral(bundle.evidence, at=when, service=collateral)
    claims = verify_bundle(
        replace(bundle, evidence=evidence),
        at=when,
        nonce=nonce,
        host_key_sha256=host_key_sha256,
        roots=roots,
        allow_stale_days=policy.max_stale_days,
    )
    notes = bundle.extra.get("notes", [])
    return Attestation(
        claims=claims,
        verdict=appraise(claims, policy),
        attested_at=when,
        bundle_sha256=hashlib.sha256(raw).hexdigest(),
        host_key_sha256=host_key_sha256,
        source=bundle.source,
        notes=tuple(str(n) for n in notes) if isinstance(notes, list) else (),
        curve_server_key=bundle.bound.get("curve-server-key"),
    )


def attest(
    agent: AgentClient,
    *,
    host_key_blob: bytes | None,
    host_key_type: str | None,
    policy: Policy,
    at: datetime | None = None,
    collateral: CollateralService | None = None,
    curve: bool = False,
) -> Attestation:
    """Ask ``agent`` for evidence bound to a fresh nonce and the SSH host key, and judge it.

    Args:
        host_key_blob: the host key seen in this connection's SSH handshake (None for the
            ``local`` transport, where 32 zero bytes are bound instead).
        host_key_type: its type, so the agent binds the same key of its sshd.
        collateral: as for :func:`judge_bundle`.
        curve: ask for the next kernel's CurveZMQ key to be bound (:func:`request_evidence`).

    Raises:
        EvidenceError: the evidence is invalid, stale, or bound to another nonce or host key.
        PolicyRejectedError: genuine evidence that ``policy`` does not accept.
    """
    nonce, raw = request_evidence(agent, host_key_type=host_key_type, curve=curve)
    attestation = judge_bundle(
        raw,
        nonce=nonce,
        host_key_sha256=host_key_digest(host_key_blob),
        policy=policy,
        at=at,
        collateral=collateral,
    )
    if not attestation.verdict.passed:
        raise PolicyRejectedError(attestation.verdict, attestation.claims)
    return attestation
