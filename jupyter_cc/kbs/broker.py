"""The key broker's decisions: sessions, nonces, attestation and release (no HTTP here).

:class:`Broker` is the state machine of Trustee's KBS protocol (:mod:`jupyter_cc.kbs.protocol`);
:mod:`jupyter_cc.kbs.server` only turns HTTP requests into its calls and its answers (or its
:class:`RequestRefusedError`) into HTTP responses.

* ``auth`` opens a session with a fresh 32-byte nonce, usable once, for ``nonce_ttl`` seconds
  (60); the session lives ``session_ttl`` seconds (300).
* ``attest`` checks that the runtime data carries the session's nonce, that the evidence
  verifies with the project's verifier (:func:`jupyter_cc.attest.evidence.verify`), and that
  its REPORT_DATA binds the hash of the nonce and the TEE key (:func:`verify_tee_evidence`).
  The answer is a JWT signed by the broker (ES256, a key made at start) carrying the verified
  claims. Any failure consumes the nonce: the TEE starts again.
* ``release`` appraises the session's claims with the resource's own policy
  (:func:`jupyter_cc.policy.appraise`) and answers the key as a JWE to the attested TEE key.

Every release and every refusal of one is appended to the broker's hash-chained audit log
(:func:`append_audit`, no key material).
"""

from __future__ import annotations

import base64
import collections
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from jupyter_cc.attest.binding import check_report_data
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import BUNDLE_FORMAT, bound_report_data, parse_bundle, verify
from jupyter_cc.attest.kinds import AZURE_KINDS, KINDS
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral.evidence import with_collateral
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.kbs.protocol import (
    HASH_ALGORITHMS,
    KbsError,
    ResourcePath,
    encrypt_response,
    import_tee_pubkey,
    report_data_for,
    runtime_data_digest,
)
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.keys import fingerprint
from jupyter_cc.policy import appraise

__all__ = [
    "AUDIT_NAME",
    "TEE_NAMES",
    "Broker",
    "RequestRefusedError",
    "Session",
    "append_audit",
    "verify_tee_evidence",
]

AUDIT_NAME = "audit.jsonl"
ISSUER = "jupyter-cc-kbs"
_TRUSTEE_ONLY_TEES = frozenset({"sgx", "sev", "cca", "csv", "se", "sample-device"})
"""Trustee names (``kbs_types::Tee``) jupyter-cc does not verify; ``auth`` accepts them, and
``attest`` then refuses evidence that is not jupyter-cc's."""
TEE_NAMES = frozenset(
    {k.trustee_tee for k in KINDS if k.trustee_tee is not None}
    | {k.name for k in KINDS if k.simulated}
    | _TRUSTEE_ONLY_TEES
)
"""The ``tee`` values ``auth`` accepts: Trustee's names for the registry's kinds, jupyter-cc's
simulated kinds by name, and the Trustee names above."""


def append_audit(path: Path, event: Mapping[str, Any]) -> None:
    """Append one event to the broker's hash-chained audit log ``path`` (file created 0600).

    ``event["event"]`` names what happened; the other members are the entry's fields (resource,
    evidence, policy, reasons; never key material, which :func:`jupyter_cc.audit.record`
    refuses by field name). The log is :mod:`jupyter_cc.audit`'s, so ``jupyter-cc audit verify
    --log PATH`` checks it.
    """
    from jupyter_cc.audit import record

    fields = {k: v for k, v in event.items() if k != "event"}
    record(str(event["event"]), path=path, **fields)


class RequestRefusedError(KbsError):
    """A request the broker refuses: HTTP status, Trustee error type, one sentence, extra body members.

    The server answers it as ``status`` with Trustee's ``ErrorInformation`` body (``type`` from
    ``kind``, ``detail``) and the ``extra`` members (``failed_rules``, ``policy``, ...).
    """

    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail.rstrip(".") + "."
        self.extra = extra


@dataclass
class Session:
    """One client's protocol state, from ``auth`` until it expires."""

    id: str
    nonce: str
    tee: str
    hash_algorithm: str
    expires: float
    nonce_expires: float
    peer: str
    nonce_used: bool = False
    claims: Claims | None = None
    tee_pubkey: dict[str, Any] | None = None
    token_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Broker:
    """The protocol state machine and release decisions (no HTTP here; see :func:`make_app`).

    Args:
        store: the resources.
        audit: called with each release or denial event; default appends JSON lines to
            ``audit_path`` (default ``audit.jsonl`` beside the database).
        session_ttl, nonce_ttl: lifetimes in seconds.
        max_sessions: live sessions kept at most (new ``auth`` requests get 503 beyond it).
        clock: seconds since the epoch; tests move it to expire sessions and nonces.
        roots: the roots evidence must chain to (default: the pinned vendor roots); tests
            pass a store holding their own test roots.
        collateral: where TCB info, QE identity and CRLs come from (default: a service from
            the settings, made when evidence first needs it); evidence whose collateral cannot
            be had is refused.
        allow_stale_days: how stale collateral may be when evidence is verified at ``attest``
            (default: the largest ``[collateral] max_stale_days`` of the resources' policies
            at that time); each resource's policy then judges the claim at ``release``.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        audit: Callable[[Mapping[str, Any]], None] | None = None,
        audit_path: Path | None = None,
        session_ttl: float = 300.0,
        nonce_ttl: float = 60.0,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.time,
        roots: TrustStore | None = None,
        collateral: CollateralService | None = None,
        allow_stale_days: int | None = None,
    ) -> None:
        self.store = store
        self.roots = roots
        self.collateral = collateral
        self.allow_stale_days = allow_stale_days
        self.audit_path = audit_path or store.path.parent / AUDIT_NAME
        self.audit = audit or (lambda event: append_audit(self.audit_path, event))
        self.session_ttl = session_ttl
        self.nonce_ttl = nonce_ttl
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._tokens: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._signing_key = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))

    # --- sessions -----------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        while self._sessions:
            sid, first = next(iter(self._sessions.items()))
            if first.expires > now:
                break
            del self._sessions[sid]
            if first.token_id:
                self._tokens.pop(first.token_id, None)

    def auth(self, body: Any, peer: str = "") -> Session:
        """Open a session for a Trustee ``Request``; the caller sends its nonce back."""
        if not isinstance(body, dict):
            raise RequestRefusedError(400, "InvalidRequest", "the auth request must be a JSON object")
        version = body.get("version")
        if not isinstance(version, str) or not version.startswith("0.1."):
            raise RequestRefusedError(
                400, "ProtocolVersion", f"protocol version {version!r} is not supported (expected 0.1.x)"
            )
        tee = body.get("tee")
        if tee not in TEE_NAMES:
            raise RequestRefusedError(400, "InvalidRequest", f"unknown tee {tee!r}")
        algorithm = "sha384"
        extra = body.get("extra-params")
        if isinstance(extra, dict) and "supported-hash-algorithms" in extra:
            offered = extra["supported-hash-algorithms"]
            names = [str(a).lower() for a in offered] if isinstance(offered, list) else []
            common = [a for a in HASH_ALGORITHMS if a in names]
            if not common:
                raise RequestRefusedError(
                    400,
                    "InvalidRequest",
                    f"none of the offered hash algorithms {names} is supported "
                    f"(supported: {', '.join(HASH_ALGORITHMS)})",
                )
            algorithm = common[0]
        now = self.clock()
        with self._lock:
            self._prune(now)
            if len(self._sessions) >= self.max_sessions:
                raise RequestRefusedError(
                    503, "Busy", "the broker holds too many open sessions; try again shortly"
                )
            session = Session(
                id=secrets.token_urlsafe(32),
                nonce=base64.b64encode(os.urandom(32)).decode("ascii"),
                tee=str(tee),
                hash_algorithm=algorithm,
                expires=now + self.session_ttl,
                nonce_expires=now + self.nonce_ttl,
                peer=peer,
            )
            self._sessions[session.id] = session
        return session

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired)."""
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires <= now:
                del self._sessions[session_id]
                if session.token_id:
                    self._tokens.pop(session.token_id, None)
                return None
            return session

    def session_for_token(self, token: str) -> Session | None:
        """The session behind a bearer token this broker issued, if both are still valid."""
        try:
            decoded = jwt.decode(token, self._signing_key, algorithms=["ES256"])
        except (JoseError, ValueError):
            return None
        jti = decoded.claims.get("jti")
        exp = decoded.claims.get("exp")
        if not isinstance(jti, str) or not isinstance(exp, (int, float)) or exp <= self.clock():
            return None
        with self._lock:
            session = self._tokens.get(jti)
        return self.session(session.id) if session is not None else None

    # --- attest -------------------------------------------------------------------------------

    def attest(self, session: Session | None, body: Any) -> str:
        """Verify the evidence for ``session``; returns the attestation token (a JWT)."""
        if session is None:
            raise RequestRefusedError(401, "UnAuthenticated", "no live session; call /kbs/v0/auth first")
        now = self.clock()
        with self._lock:
            used, session.nonce_used = session.nonce_used, True
        if used:
            raise RequestRefusedError(
                401, "ExpiredNonce", "this session's nonce was already used; start again with /kbs/v0/auth"
            )
        if session.nonce_expires <= now:
            raise RequestRefusedError(
                401,
                "ExpiredNonce",
                f"this session's nonce expired ({self.nonce_ttl:g} s); start again with /kbs/v0/auth",
            )
        if not isinstance(body, dict):
            raise RequestRefusedError(400, "InvalidRequest", "the attest request must be a JSON object")
        runtime = body.get("runtime-data")
        if not isinstance(runtime, dict):
            raise RequestRefusedError(400, "InvalidRequest", "the attest request has no runtime-data object")
        nonce = runtime.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), session.nonce.encode()):
            raise RequestRefusedError(
                401, "InvalidNonce", "runtime-data.nonce is not the nonce this session was given"
            )
        jwk = runtime.get("tee-pubkey")
        try:
            import_tee_pubkey(jwk)
        except KbsError as exc:
            raise RequestRefusedError(400, "InvalidTeePubKey", exc.message) from None
        assert isinstance(jwk, dict)
        evidence = body.get("tee-evidence")
        extra = evidence.get("additional_evidence") if isinstance(evidence, dict) else None
        digest = runtime_data_digest(
            nonce, jwk, session.hash_algorithm, additional_evidence=extra if isinstance(extra, str) else None
        )
        try:
            stale = self.allow_stale_days
            if stale is None:
                stale = max((p.max_stale_days for p in self.store.policies()), default=0)
            claims = verify_tee_evidence(
                evidence,
                report_data_for(digest),
                roots=self.roots,
                collateral=self.collateral,
                allow_stale_days=stale,
            )
        except CCError as exc:
            self.audit(
                {
                    "event": "attest-refused",
                    "tee": session.tee,
                    "peer": session.peer,
                    "reason": exc.diagnostics(),
                }
            )
            raise RequestRefusedError(
                401, "AttestationFailed", f"attestation failed: {exc.diagnostics()}"
            ) from None
        jti = secrets.token_urlsafe(16)
        token = jwt.encode(
            {"alg": "ES256", "typ": "JWT"},
            {
                "iss": ISSUER,
                "iat": int(now),
                "exp": int(session.expires),
                "jti": jti,
                "tee-pubkey": jwk,
                "submods": {"cpu0": {"ear.status": "verified", "claims": claims.to_json()}},
            },
            self._signing_key,
            algorithms=["ES256"],
        )
        with self._lock:
            session.claims = claims
            session.tee_pubkey = dict(jwk)
            session.token_id = jti
            self._tokens[jti] = session
        return token

    # --- resource -----------------------------------------------------------------------------

    def release(self, session: Session | None, resource: str) -> tuple[dict[str, str], str]:
        """The JWE of ``resource`` for an attested session, and the allowing policy's name."""
        if session is None or session.claims is None or session.tee_pubkey is None:
            raise RequestRefusedError(
                401, "UnAuthenticated", "no attested session; call /kbs/v0/auth and /kbs/v0/attest first"
            )
        try:
            rid = str(ResourcePath.parse(resource))
        except InputError as exc:
            raise RequestRefusedError(404, "ResourceNotFound", exc.message) from None
        if not self.store.exists(rid):
            raise RequestRefusedError(404, "ResourceNotFound", f"there is no resource {rid}")
        res = self.store.get(rid)
        claims = session.claims
        event = {
            "resource": rid,
            "version": res.info.version,
            "tee": claims.kind,
            "simulated": claims.simulated,
            "peer": session.peer,
        }
        if res.info.revoked:
            self.audit({**event, "event": "deny", "policy": res.policy.name, "reasons": ["revoked"]})
            raise RequestRefusedError(
                403,
                "PolicyDeny",
                f"resource {rid} is revoked",
                failed_rules=["revoked"],
                policy=res.policy.name,
            )
        verdict = appraise(claims, res.policy)
        if not verdict.passed:
            reasons = [str(r) for r in verdict.reasons]
            rules = [r.rule for r in verdict.reasons]
            self.audit({**event, "event": "deny", "policy": verdict.policy, "reasons": reasons})
            raise RequestRefusedError(
                403,
                "PolicyDeny",
                f"policy '{verdict.policy}' denied {rid}; failed rules: " + "; ".join(reasons),
                failed_rules=rules,
                reasons=reasons,
                policy=verdict.policy,
            )
        response = encrypt_response(session.tee_pubkey, res.material)
        self.audit(
            {**event, "event": "release", "policy": verdict.policy, "fingerprint": fingerprint(res.material)}
        )
        return response, verdict.policy


def verify_tee_evidence(
    tee_evidence: Any,
    report_data: bytes,
    *,
    at: datetime | None = None,
    roots: TrustStore | None = None,
    collateral: CollateralService | None = None,
    allow_stale_days: int = 0,
) -> Claims:
    """Verify jupyter-cc evidence sent as ``tee-evidence`` and check that it binds ``report_data``.

    Hardware evidence is verified with the collateral service's TCB info, QE identity and CRLs
    (:func:`~jupyter_cc.collateral.evidence.with_collateral`; what the evidence carries is only
    a hint), at most ``allow_stale_days`` past their nextUpdate.

    Raises:
        CCError: malformed evidence (``FormatError``), failed verification (its leaf error), or
            evidence made for another nonce or key (``BindingError``).
    """
    if isinstance(tee_evidence, dict) and "primary_evidence" in tee_evidence:
        tee_evidence = tee_evidence["primary_evidence"]
    if (
        not isinstance(tee_evidence, dict)
        or not isinstance(tee_evidence.get("kind"), str)
        or not isinstance(tee_evidence.get("evidence"), dict)
    ):
        raise KbsError(
            'tee-evidence must be jupyter-cc evidence {"kind": ..., "evidence": {...}}',
            hint="upstream Trustee attesters' evidence formats are not parsed by this broker",
        )
    doc = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "kind": tee_evidence["kind"],
        "nonce": "00" * 32,  # the bundle's own binding is not used here; ours is checked below
        "host_key_sha256": "00" * 32,
        "evidence": tee_evidence["evidence"],
    }
    bundle = parse_bundle(json.dumps(doc).encode())
    evidence = bundle.evidence
    if evidence.kind in AZURE_KINDS and evidence.tpm_quote is not None:
        evidence = replace(evidence, nonce=report_data[:32])
    when = at or datetime.now(timezone.utc)
    evidence, _ = with_collateral(evidence, at=when, service=collateral)
    claims = verify(evidence, at=when, roots=roots, allow_stale_days=allow_stale_days)
    check_report_data(bound_report_data(claims), report_data, what="the evidence's REPORT_DATA")
    return claims
