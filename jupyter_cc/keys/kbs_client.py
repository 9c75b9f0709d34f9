"""``kbs://`` key release: the Trustee KBS protocol from inside the TEE.

``release_kbs("kbs://host[:port]/repo/type/tag")`` runs the three protocol steps against
``jupyter-cc kbs serve`` or an upstream Trustee broker (see :mod:`jupyter_cc.kbs.protocol`):

1. ``auth``: an ephemeral key pair is made in this process (EC P-256 by default, RSA-3072 on
   request) and the broker answers with a session cookie and a fresh nonce.
2. ``attest``: REPORT_DATA = HASH(canonical JSON of the nonce and the public key JWK), zero
   padded to 64 bytes; the evidence is collected in this process by the guest collector
   (``tee``, default ``$JUPYTER_CC_TEE`` or ``auto``; ``sim_dir``, default
   ``$JUPYTER_CC_SIM_DIR``) and sent as ``{"kind": ..., "evidence": {...}}`` (the evidence
   bundle's fields).
3. ``resource``: the key comes back as a JWE to the ephemeral key and is opened here; the
   private key is dropped right after (Python cannot wipe memory; it is never written or shown).

Transport: ``kbs://`` is plain HTTP (default port 8085, the broker's); ``kbss://`` or a
``?tls=1`` query uses HTTPS with normal certificate checks (default port 443 for ``kbss://``,
system CAs, or the PEM bundle named by ``ca_file`` or ``$JUPYTER_CC_KBS_CA``). The key itself is
confidential either way (it travels encrypted to a key that never leaves this process); TLS
also hides which resource is asked for and keeps the session cookie private.

Every failure is one :class:`~jupyter_cc.keys.KeyReleaseError` naming the step, the HTTP
status and the broker's reason (for 403, the policy's failed rules).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.errors import InputError
from jupyter_cc.guest.collectors import collect_cpu_evidence
from jupyter_cc.kbs.protocol import (
    API_PREFIX,
    DEFAULT_HASH,
    HASH_ALGORITHMS,
    POLICY_HEADER,
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    KbsError,
    ResourcePath,
    decrypt_response,
    report_data_for,
    runtime_data_digest,
    tee_pubkey_jwk,
)
from jupyter_cc.keys import KeyReleaseError, ReleasedKey

__all__ = ["KbsTarget", "parse_kbs_uri", "release_kbs"]

DEFAULT_PORT = 8085
DEFAULT_TLS_PORT = 443
_MAX_RESPONSE = 2 * 1024 * 1024
# Trustee's `tee` names for the collector choices; the broker reads the kind from the evidence.
_TRUSTEE_TEE = {k.tee_choice: k.trustee_tee for k in KINDS if k.tee_choice and k.trustee_tee}


@dataclass(frozen=True)
class KbsTarget:
    """A parsed ``kbs://`` URI."""

    host: str
    port: int
    tls: bool
    resource: ResourcePath

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def parse_kbs_uri(uri: str) -> KbsTarget:
    """Parse ``kbs[s]://host[:port]/repo/type/tag[?tls=1]``; :class:`InputError` when malformed."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("kbs", "kbss"):
        raise InputError(f"{uri!r} is not a kbs:// URI")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"tls"}
    if unknown:
        raise InputError(f"{uri!r} has unknown query parameters: {', '.join(sorted(unknown))}")
    tls_flag = query.get("tls", ["0"])[-1].lower()
    if tls_flag not in ("0", "1", "true", "false", "yes", "no"):
        raise InputError(f"{uri!r}: tls must be 1 or 0, not {tls_flag!r}")
    tls = scheme == "kbss" or tls_flag in ("1", "true", "yes")
    if not parts.hostname:
        raise InputError(f"{uri!r} names no broker host", hint="write kbs://host[:port]/repo/type/tag")
    try:
        port = parts.port or (DEFAULT_TLS_PORT if scheme == "kbss" else DEFAULT_PORT)
    except ValueError:
        raise InputError(f"{uri!r} has an invalid port") from None
    return KbsTarget(parts.hostname, port, tls, ResourcePath.parse(parts.path))


class _Session:
    """One keep-alive connection to the broker and its session cookie."""

    def __init__(self, target: KbsTarget, timeout: float, ca_file: str | None) -> None:
        self.target = target
        if target.tls:
            context = ssl.create_default_context(cafile=ca_file)
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=context
            )
        else:
            self.conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        self.cookie: str | None = None

    def close(self) -> None:
        self.conn.close()

    def call(
        self, step: str, method: str, path: str, body: Any = None
    ) -> tuple[Any, http.client.HTTPResponse]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read(_MAX_RESPONSE + 1)
        except ssl.SSLError as exc:
            raise self._fail(step, f"the TLS handshake failed ({exc.reason or exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail(
                step, f"cannot reach the broker at {self.target.base_url} ({exc.__class__.__name__}: {exc})"
            ) from None
        if len(raw) > _MAX_RESPONSE:
            raise self._fail(step, f"the broker's response is larger than {_MAX_RESPONSE} bytes")
        for header in resp.headers.get_all("Set-Cookie") or ():
            try:
                jar = SimpleCookie(header)
            except CookieError:
                continue
            if SESSION_COOKIE in jar:
                self.cookie = jar[SESSION_COOKIE].value
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if resp.status != 200:
            raise self._fail(step, f"HTTP {resp.status} {resp.reason}{_detail(doc)}")
        if not isinstance(doc, dict):
            raise self._fail(step, "the broker's answer is not a JSON object")
        return doc, resp

    def _fail(self, step: str, why: str) -> KeyReleaseError:
        uri = f"{'kbss' if self.target.tls else 'kbs'}://{self.target.host}:{self.target.port}"
        return KeyReleaseError(f"key release of {self.target.resource} from {uri} failed at {step}: {why}")


def _detail(doc: Any) -> str:
    if not isinstance(doc, dict):
        return ""
    detail = str(doc.get("detail", "")).strip().rstrip(".")
    return f": {detail[:500]}" if detail else ""


def _selected_hash(challenge: dict[str, Any]) -> str:
    extra = challenge.get("extra-params")
    name = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
    if name is None:
        return DEFAULT_HASH
    name = str(name).lower()
    if name not in HASH_ALGORITHMS:
        raise KbsError(f"the broker selected hash algorithm {name!r}, which this client does not offer")
    return name


def release_kbs(
    uri: str,
    *,
    tee: str | None = None,
    sim_dir: str | Path | None = None,
    timeout: float = 30.0,
    key_type: str = "ec",
    ca_file: str | None = None,
) -> ReleasedKey:
    """Release the resource ``uri`` names (see the module docstring for the steps).

    Args:
        tee: evidence source, one of :data:`jupyter_cc.attest.kinds.TEE_CHOICES`; default
            ``$JUPYTER_CC_TEE`` or ``auto``.
        sim_dir: the simulated TEE's folder for ``tee="sim"``; default ``$JUPYTER_CC_SIM_DIR``.
        timeout: seconds per network operation.
        key_type: the ephemeral key, ``ec`` (P-256, ECDH-ES+A256KW) or ``rsa`` (3072 bits,
            RSA-OAEP-256; upstream Trustee clients default to RSA).
        ca_file: PEM bundle to trust for HTTPS instead of the system CAs.

    Raises:
        InputError: malformed URI or options.
        KeyReleaseError: a protocol step failed; the message names it and the broker's reason.
        EvidenceError: no evidence source works here.
    """
    target = parse_kbs_uri(uri)
    choice = tee or os.environ.get("JUPYTER_CC_TEE", "auto")
    sim = sim_dir or os.environ.get("JUPYTER_CC_SIM_DIR") or None
    if key_type == "ec":
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = ec.generate_private_key(
            ec.SECP256R1()
        )
    elif key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise InputError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")
    assert private is not None
    session = _Session(target, timeout, ca_file or os.environ.get("JUPYTER_CC_KBS_CA") or None)
    try:
        challenge, _ = session.call(
            "auth",
            "POST",
            f"{API_PREFIX}/auth",
            {
                "version": PROTOCOL_VERSION,
                "tee": _TRUSTEE_TEE.get(choice, "snp"),
                "extra-params": {"supported-hash-algorithms": list(HASH_ALGORITHMS)},
            },
        )
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise session._fail("auth", "the broker's challenge has no nonce")
        if session.cookie is None:
            raise session._fail("auth", f"the broker set no {SESSION_COOKIE} cookie")
        try:
            algorithm = _selected_hash(challenge)
        except KbsError as exc:
            raise session._fail("auth", exc.message) from None
        jwk = tee_pubkey_jwk(private)
        report_data = report_data_for(runtime_data_digest(nonce, jwk, algorithm))
        collected, _unavailable = collect_cpu_evidence(
            report_data, tee=choice, sim_dir=Path(sim) if sim else None
        )
        session.call(
            "attest",
            "POST",
            f"{API_PREFIX}/attest",
            {
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {"kind": collected.kind, "evidence": collected.evidence},
            },
        )
        r = target.resource
        doc, resp = session.call("resource", "GET", f"{API_PREFIX}/resource/{r.repository}/{r.type}/{r.tag}")
        try:
            material = decrypt_response(doc, private)
        except KbsError as exc:
            raise session._fail("resource", exc.diagnostics().rstrip(".")) from None
        policy = resp.headers.get(POLICY_HEADER)
    finally:
        private = None  # the ephemeral private key goes with this frame
        session.close()
    return ReleasedKey(material, key_id=str(target.resource), uri=uri, policy=policy)
