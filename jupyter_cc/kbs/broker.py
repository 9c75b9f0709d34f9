"""The key broker's decisions: sessions, nonces, attestation and release (no HTTP here).

:class:`Broker` is the state machine of Trustee's KBS protocol (:mod:`jupyter_cc.kbs.protocol`);
:mod:`jupyter_cc.kbs.server` only turns HTTP requests into its calls and its answers (or its
:class:`RequestRefusedError`) into HTTP responses.

* ``auth`` takes a protocol 0.4.x ``Request`` naming a ``kbs_types::Tee`` and opens a session
  with a fresh 32-byte nonce, usable once, for ``nonce_ttl`` seconds (60); the session lives
  ``session_ttl`` seconds (300).
* ``attest`` checks that the runtime data carries the session's nonce, reads the composite
  evidence in the format of the tee ``auth`` named (:mod:`jupyter_cc.kbs.upstream`), verifies it
  and every device beside it with the project's verifiers
  (:func:`jupyter_cc.attest.evidence.verify`), and checks that it binds the hash of the nonce,
  the TEE key and the additional evidence, and any init-data (:func:`verify_tee_evidence`).
  Simulated evidence (upstream ``sample``, the simulated TEE) passes only while some resource's
  policy has ``allow_simulated = true``. The answer is a JWT signed by the broker (ES256)
  carrying the verified claims. Any failure consumes the nonce: the TEE starts again.
* ``release`` appraises the session's claims with the resource's own policy
  (:func:`jupyter_cc.policy.appraise`) and answers the key as a JWE to the attested TEE key.

Refusals carry trustee's error types and statuses (:mod:`jupyter_cc.kbs.protocol`): every
``auth`` or ``attest`` refusal is 401 ``AttestationError`` with one sentence.

Every release and every refusal of one is appended to the broker's hash-chained audit log
(:func:`append_audit`, no key material).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from jupyter_cc.attest.binding import check_report_data
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import Evidence, bound_report_data, verify
from jupyter_cc.attest.kinds import AZURE_KINDS, KINDS, SIMULATED_BANNER
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral.evidence import with_collateral
from jupyter_cc.collateral.service import CollateralService
from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import BindingError, CCError, FormatError, InputError
from jupyter_cc.kbs.protocol import (
    ERR_ATTESTATION,
    ERR_PATH,
    ERR_POLICY,
    ERR_RESOURCE,
    ERR_UNATTESTED,
    HASH_ALGORITHMS,
    KbsError,
    ResourcePath,
    encrypt_response,
    import_tee_pubkey,
    parse_version,
    report_data_for,
    runtime_data_digest,
)
from jupyter_cc.kbs.sessions import Session, SessionStore
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.kbs.upstream import (
    UPSTREAM_TEES,
    Primary,
    additional_evidence,
    check_init_data,
    init_data_claims,
    parse_init_data,
    primary_evidence,
)
from jupyter_cc.keys import fingerprint
from jupyter_cc.policy import Policy, appraise

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
_VERIFIED_TOKENS = 4096
"""Verified bearer tokens whose ``jti`` and ``exp`` a broker keeps (the least recently used go)."""
ISSUER = "jupyter-cc-kbs"
_NATIVE_TEE = {k.name: k.trustee_tee for k in KINDS if k.trustee_tee}
TEE_NAMES = UPSTREAM_TEES
"""The ``tee`` values ``auth`` accepts: every ``kbs_types::Tee`` name. ``attest`` then needs
evidence of that tee in a format :mod:`jupyter_cc.kbs.upstream` reads (others are refused)."""


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


def _refused(detail: str) -> RequestRefusedError:
    """An RCAR refusal as trustee answers it: 401, ``AttestationError``, one sentence."""
    return RequestRefusedError(401, ERR_ATTESTATION, detail)


def _hash_algorithm(extra: Any, tee: str) -> str:
    """The hash algorithm for the binding: the broker's first preference the client offers.

    Azure vTPM evidence binds the digest as TPM qualifying data, so sha256 goes first there
    (the size the guest's quote nonce and trustee's Azure verifiers use).
    """
    if not isinstance(extra, dict) or "supported-hash-algorithms" not in extra:
        return "sha384"
    offered = extra["supported-hash-algorithms"]
    if not isinstance(offered, list) or len(offered) > 16:
        raise _refused("extra-params.supported-hash-algorithms must be a short list of names")
    names = [str(a).lower()[:16] for a in offered]
    preference = list(HASH_ALGORITHMS)
    if tee.startswith("az-"):
        preference = ["sha256", *(a for a in preference if a != "sha256")]
    common = [a for a in preference if a in names]
    if not common:
        raise _refused(
            f"none of the offered hash algorithms {names} is supported "
            f"(supported: {', '.join(HASH_ALGORITHMS)})"
        )
    return common[0]


def parse_auth_request(body: Any) -> tuple[str, str]:
    """A ``kbs_types::Request`` checked: its ``tee`` and the hash algorithm chosen for it.

    Raises:
        RequestRefusedError: 401 ``AttestationError`` naming what is wrong (trustee's answer to
            any bad ``auth``): not an object, a version other than 0.4.x, an unknown tee.
    """
    if not isinstance(body, dict):
        raise _refused("the auth request must be a JSON object (kbs_types::Request)")
    try:
        parse_version(body.get("version"))
    except KbsError as exc:
        raise _refused(exc.message) from None
    tee = body.get("tee")
    if not isinstance(tee, str) or tee not in TEE_NAMES:
        raise _refused(
            f"unknown tee {str(tee)[:40]!r} (use a kbs_types::Tee name such as snp, tdx or sample)"
        )
    return tee, _hash_algorithm(body.get("extra-params"), tee)


class Broker:
    """The protocol state machine and release decisions (no HTTP here; see :func:`make_app`).

    Args:
        store: the resources.
        audit: called with each release or denial event; default appends JSON lines to
            ``audit_path`` (default ``audit.jsonl`` beside the database).
        session_ttl, nonce_ttl: lifetimes in seconds; an unattested session ends with its nonce.
        max_sessions, max_per_client: unattested sessions kept at most, in all and per client
            address; beyond either the oldest unattested one (the client's own first) is
            evicted (:class:`~jupyter_cc.kbs.sessions.SessionStore`).
        attest_rate, attest_burst: ``/attest`` calls allowed per client per second, and in a burst.
        sessions_path: the session store shared by worker processes (``sessions.sqlite`` in the
            data dir under ``jupyter-cc kbs serve``); None keeps sessions in memory (one process).
        signing_key: the key attestation tokens are signed with; default a fresh P-256 key.
            Workers get the one their parent made, so a token from one is good at all.
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
        max_per_client: int = 64,
        attest_rate: float = 10.0,
        attest_burst: int = 20,
        sessions_path: Path | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
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
        self.sessions = SessionStore(
            sessions_path,
            clock=clock,
            max_sessions=max_sessions,
            max_per_client=max_per_client,
            attest_rate=attest_rate,
            attest_burst=attest_burst,
        )
        self._lock = threading.Lock()
        self._verified: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()
        self._signing_key = ECKey.import_key(signing_key or ec.generate_private_key(ec.SECP256R1()))

    # --- sessions -----------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        """Reclaim expired sessions now (unattested ones at their nonce's expiry)."""
        self.sessions.prune(now, force=True)

    def attest_wait(self, peer: str) -> float:
        """Seconds ``peer`` must wait before its next ``/attest`` (0: go ahead; takes one call)."""
        return self.sessions.attest_wait(peer)

    def auth(self, body: Any, peer: str = "") -> Session:
        """Open a session for a Trustee ``Request``; the caller sends its nonce back."""
        tee, algorithm = parse_auth_request(body)
        # Never refused for want of room: the store evicts the oldest unattested session of
        # this client (or, past the global cap, of anyone), never an attested one.
        now = self.clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            nonce=base64.b64encode(os.urandom(32)).decode("ascii"),
            tee=str(tee),
            hash_algorithm=algorithm,
            expires=now + self.session_ttl,
            nonce_expires=now + self.nonce_ttl,
            peer=peer,
        )
        self.sessions.open(session)
        return session

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired)."""
        if not session_id or len(session_id) > 128:
            return None
        return self.sessions.get(session_id)

    def session_for_token(self, token: str) -> Session | None:
        """The session behind a bearer token this broker issued, if both are still valid.

        The signature is checked once per token: a verified token's ``jti`` and ``exp`` are
        kept (by the token's SHA-256, not its text; at most :data:`_VERIFIED_TOKENS`), so a
        kernel's later releases with it cost no ES256 verification. Its expiry and its session
        (gone after a restart, or when the session expired or was evicted) are checked at every
        request; a token that fails verification is never kept.
        """
        if len(token) > 16384:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            known = self._verified.get(digest)
            if known is not None:
                self._verified.move_to_end(digest)
        if known is None:
            try:
                decoded = jwt.decode(token, self._signing_key, algorithms=["ES256"])
            except (JoseError, ValueError):
                return None
            jti = decoded.claims.get("jti")
            exp = decoded.claims.get("exp")
            if not isinstance(jti, str) or isinstance(exp, bool) or not isinstance(exp, (int, float)):
                return None
            known = (jti, float(exp))
            with self._lock:
                self._verified[digest] = known
                while len(self._verified) > _VERIFIED_TOKENS:
                    self._verified.popitem(last=False)
        jti, exp = known
        if exp <= self.clock():
            return None
        return self.sessions.by_token(jti)

    # --- attest -------------------------------------------------------------------------------

    def attest(self, session: Session | None, body: Any) -> str:
        """Verify the evidence for ``session``; returns the attestation token (a JWT)."""
        if session is None:
            raise _refused("no live session: send POST /kbs/v0/auth first and keep its kbs-session-id cookie")
        now = self.clock()
        if not self.sessions.consume_nonce(session):
            raise _refused("this session's nonce was already used; start again with /kbs/v0/auth")
        if session.nonce_expires <= now:
            raise _refused(
                f"this session's nonce expired ({self.nonce_ttl:g} s); start again with /kbs/v0/auth"
            )
        nonce, jwk = _runtime_data(body, session)
        policies = self.store.policies()
        try:
            claims = verify_tee_evidence(
                session.tee,
                body.get("tee-evidence"),
                nonce=nonce,
                tee_pubkey=jwk,
                hash_algorithm=session.hash_algorithm,
                init_data=body.get("init-data"),
                roots=self.roots,
                collateral=self.collateral,
                allow_stale_days=self._stale_days(policies),
            )
            self._check_simulated(claims, policies)
        except CCError as exc:
            self.audit(
                {
                    "event": "attest-refused",
                    "tee": session.tee,
                    "peer": session.peer,
                    "reason": exc.diagnostics(),
                }
            )
            raise _refused(f"attestation failed: {exc.diagnostics()}") from None
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
        session.claims = claims
        session.tee_pubkey = dict(jwk)
        session.token_id = jti
        try:
            self.sessions.save_attested(session)
        except KbsError as exc:
            raise _refused(exc.message) from None
        return token

    def _stale_days(self, policies: tuple[Policy, ...]) -> int:
        """How stale collateral may be at ``attest``: the setting, else the laxest resource policy."""
        if self.allow_stale_days is not None:
            return self.allow_stale_days
        return max((p.max_stale_days for p in policies), default=0)

    def _check_simulated(self, claims: Claims, policies: tuple[Policy, ...]) -> None:
        """Simulated evidence (``sample``, the simulated TEE) only where some policy allows it.

        Each resource's policy judges it again at ``release``; this refuses it at ``attest``
        when no resource could ever be released to it, as upstream's default policy does.
        """
        if claims.simulated and not any(p.allow_simulated for p in policies):
            raise BindingError(
                f"simulated evidence ({SIMULATED_BANNER}) is accepted only under a policy "
                "with allow_simulated = true, and no resource of this broker has one"
            )

    # --- resource -----------------------------------------------------------------------------

    def release(self, session: Session | None, resource: str) -> tuple[dict[str, str], str]:
        """The JWE of ``resource`` for an attested session, and the allowing policy's name."""
        if session is None or session.claims is None or session.tee_pubkey is None:
            raise RequestRefusedError(
                401, ERR_UNATTESTED, "no attested session: call /kbs/v0/auth and /kbs/v0/attest first"
            )
        try:
            rid = str(ResourcePath.parse(resource))
        except InputError as exc:
            raise RequestRefusedError(404, ERR_PATH, exc.message) from None
        if not self.store.exists(rid):
            raise RequestRefusedError(404, ERR_RESOURCE, f"there is no resource {rid}")
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
                ERR_POLICY,
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
                ERR_POLICY,
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


def _runtime_data(body: Any, session: Session) -> tuple[str, dict[str, Any]]:
    """The checked ``runtime-data`` of an ``Attestation``: this session's nonce and a usable key."""
    if not isinstance(body, dict):
        raise _refused("the attest request must be a JSON object (kbs_types::Attestation)")
    runtime = body.get("runtime-data")
    if not isinstance(runtime, dict):
        raise _refused("the attest request has no runtime-data object")
    nonce = runtime.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), session.nonce.encode()):
        raise _refused("runtime-data.nonce is not the nonce this session was given")
    jwk = runtime.get("tee-pubkey")
    try:
        import_tee_pubkey(jwk)
    except KbsError as exc:
        raise _refused(exc.message) from None
    assert isinstance(jwk, dict)
    return nonce, jwk


def _composite(tee_evidence: Any) -> tuple[Any, str]:
    """``primary_evidence`` and the ``additional_evidence`` text of a ``CompositeEvidence``."""
    if not isinstance(tee_evidence, dict) or "primary_evidence" not in tee_evidence:
        raise FormatError(
            'tee-evidence must be {"primary_evidence": ..., "additional_evidence": "..."} '
            "(kbs_types::CompositeEvidence, protocol 0.4)"
        )
    additional = tee_evidence.get("additional_evidence", "")
    if not isinstance(additional, str):
        raise FormatError("tee-evidence.additional_evidence must be a JSON text (a string)")
    primary = tee_evidence["primary_evidence"]
    if isinstance(primary, str):  # attesters that return their evidence as JSON text
        try:
            primary = strict_json(primary)
        except (ValueError, RecursionError):
            raise FormatError("tee-evidence.primary_evidence is text but not JSON") from None
    return primary, additional


def _unsigned_sample(
    claimed: bytes, report_data: bytes, gpus: tuple[Evidence, ...], when: datetime, roots: TrustStore | None
) -> Claims:
    """Claims of unsigned ``sample`` evidence: simulated, bound only by what it says (checked first)."""
    if len(claimed) > 64:
        raise FormatError(f"sample report_data is {len(claimed)} bytes, more than 64")
    check_report_data(claimed.ljust(64, b"\x00"), report_data, what="the sample evidence's report_data")
    gpu_claims = [verify(g, at=when, roots=roots) for g in gpus]
    details = {"evidence_format": "sample", "signed": False, "banner": SIMULATED_BANNER}
    return Claims("sim-snp", True, False, report_data, details, gpu=gpu_claims[0] if gpu_claims else None)


def verify_tee_evidence(
    tee: str,
    tee_evidence: Any,
    *,
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    hash_algorithm: str,
    init_data: Any = None,
    at: datetime | None = None,
    roots: TrustStore | None = None,
    collateral: CollateralService | None = None,
    allow_stale_days: int = 0,
) -> Claims:
    """Verify a 0.4.x ``tee-evidence`` sent under ``Request.tee`` = ``tee``, bound to this session.

    The primary evidence (:func:`jupyter_cc.kbs.upstream.primary_evidence`) must bind
    HASH({"additional-evidence", "nonce", "tee-pubkey"}) and each device of
    ``additional_evidence`` HASH({"nonce", "tee-pubkey"}) (module docstring of
    :mod:`jupyter_cc.kbs.protocol`); every device is verified or the whole request is refused.
    Hardware evidence is verified with the collateral service's TCB info, QE identity and CRLs
    (:func:`~jupyter_cc.collateral.evidence.with_collateral`), at most ``allow_stale_days`` past
    their nextUpdate. ``init-data`` must match HOST_DATA / MRCONFIGID; its digest and parsed body
    are added to the claims as ``init_data``.

    Raises:
        CCError: malformed evidence (``FormatError``), failed verification (its leaf error),
            evidence of another tee, or made for another nonce, key or init-data (``BindingError``).
    """
    primary, additional = _composite(tee_evidence)
    digest = runtime_data_digest(nonce, tee_pubkey, hash_algorithm, additional_evidence=additional)
    report_data = report_data_for(digest)
    device_digest = runtime_data_digest(nonce, tee_pubkey, hash_algorithm)
    init = parse_init_data(init_data)
    read = primary_evidence(tee, primary, digest)
    when = at or datetime.now(timezone.utc)
    gpus = additional_evidence(additional, device_digest)
    if read.evidence is None:
        assert read.report_data is not None
        claims = _unsigned_sample(read.report_data, report_data, gpus, when, roots)
    else:
        claims = _verify_primary(read, report_data, gpus, when, roots, collateral, allow_stale_days)
    if _NATIVE_TEE.get(claims.kind) != tee:
        raise BindingError(f"the evidence is {claims.kind} evidence, but the auth request named tee {tee}")
    details = {**claims.details, "evidence_format": read.format}
    if init is not None:
        check_init_data(init, claims.kind if read.evidence is not None else "sample", claims.details)
        details["init_data"] = init_data_claims(init)
    return replace(claims, details=details)


def _precheck_binding(evidence: Evidence, tpm_bound: bool, report_data: bytes) -> None:
    """Refuse evidence made for another nonce or key before any signature check or collateral fetch.

    Reads the bytes the guest bound (SNP REPORT_DATA, TDX REPORTDATA, the upstream Azure TPM
    quote's qualifying data) without trusting them: a replay costs no verification and no
    vendor request. The check after verification (:func:`_verify_primary`) is what counts.
    """
    from jupyter_cc.attest.tdx.quote import parse_quote
    from jupyter_cc.attest.tpm import parse_tpms_attest

    digest = report_data.rstrip(b"\x00")
    if tpm_bound and evidence.tpm_quote is not None:
        nonce = parse_tpms_attest(evidence.tpm_quote).extra_data
        check_report_data(nonce, evidence.nonce or digest, what="the TPM quote's qualifying data (nonce)")
    elif (
        evidence.kind not in AZURE_KINDS and getattr(registered_kind(evidence.kind), "family", None) == "snp"
    ):
        check_report_data(evidence.binary()[0x50:0x90], report_data, what="the SNP report's REPORT_DATA")
    elif evidence.kind == "tdx":
        bound = parse_quote(evidence.binary()).body.report_data
        check_report_data(bound, report_data, what="the TD quote's REPORTDATA")


def _family(kind: str) -> str | None:
    entry = registered_kind(kind)
    return entry.family if entry is not None else None


def _verify_primary(
    read: Primary,
    report_data: bytes,
    gpus: tuple[Evidence, ...],
    when: datetime,
    roots: TrustStore | None,
    collateral: CollateralService | None,
    allow_stale_days: int,
) -> Claims:
    """Verify signed primary evidence (and the GPUs beside it) and check its binding."""
    assert read.evidence is not None
    evidence = read.evidence
    _precheck_binding(evidence, read.tpm_bound, report_data)
    if evidence.kind in AZURE_KINDS and not read.tpm_bound and evidence.tpm_quote is not None:
        evidence = replace(evidence, nonce=report_data[:32])  # jupyter-cc's own Azure form
    evidence, _ = with_collateral(replace(evidence, gpus=gpus), at=when, service=collateral)
    claims = verify(evidence, at=when, roots=roots, allow_stale_days=allow_stale_days)
    if read.tpm_bound:
        if evidence.tpm_quote is None:
            raise BindingError("the Azure evidence has no TPM quote to carry the runtime-data digest")
    else:
        check_report_data(bound_report_data(claims), report_data, what="the evidence's REPORT_DATA")
    if read.report_data is not None:  # signed simulated evidence sent as sample: both must agree
        check_report_data(
            read.report_data.ljust(64, b"\x00")[:64], report_data, what="the sample report_data"
        )
    return claims
