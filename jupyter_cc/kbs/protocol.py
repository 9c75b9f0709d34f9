"""The Trustee KBS protocol (RCAR) as the broker and the ``kbs://`` client both speak it.

Shared by :mod:`jupyter_cc.kbs.server` and :mod:`jupyter_cc.keys.kbs_client`, so the two sides
cannot drift apart: request and response shapes, the canonical JSON whose hash the evidence
binds, resource paths, the TEE public key as a JWK, and the JWE a resource travels in.

Protocol (docs/attestation-formats.md section 5, Trustee ``kbs_attestation_protocol.md``)::

    POST /kbs/v0/auth    {"version": "0.1.1", "tee": "snp", "extra-params":
                          {"supported-hash-algorithms": ["sha384", ...]}}
                     ->  Set-Cookie: kbs-session-id=...; {"nonce": "<base64>",
                          "extra-params": {"selected-hash-algorithm": "sha384"}}
    POST /kbs/v0/attest  {"runtime-data": {"nonce": ..., "tee-pubkey": JWK},
                          "tee-evidence": {...}}
                     ->  {"token": "<JWT signed by the broker>"}
    GET  /kbs/v0/resource/<repo>/<type>/<tag>
                     ->  {"protected", "encrypted_key", "iv", "ciphertext", "tag"}  (JWE)

REPORT_DATA binding (what Trustee's guest-components client does)::

    digest      = HASH(canonical_json({"nonce": nonce, "tee-pubkey": jwk}))
    REPORT_DATA = digest || zero bytes up to 64

with HASH the selected algorithm (``sha384`` unless the client asked otherwise; ``sha256`` and
``sha512`` are also offered). :func:`canonical_json` sorts object keys (recursively, by code
point), writes no whitespace (``,`` and ``:`` separators), keeps non-ASCII characters as UTF-8
and refuses floats: for the ASCII strings this protocol carries this is byte-identical to
RFC 8785 (JCS), which guest-components uses (``serde_json_canonicalizer``). When the evidence
is Trustee's composite form (it has ``additional_evidence``), newer clients bind
``{"additional-evidence": ..., "nonce": ..., "tee-pubkey": ...}`` instead; the broker accepts
exactly the form that matches the evidence it got.

The JWE is made and opened by joserfc: compact serialization split into its five parts and
returned as flattened JSON, so the ECDH-ES ephemeral key sits in the *protected* header as in
Trustee's broker; there is no ``aad`` member (Trustee leaves it out), so the AES-GCM additional
data is ``ASCII(protected)`` (RFC 7516 section 5.1 step 14).

Upstream clients: guest-components recomputes that additional data by re-serializing the
protected header it parsed (``kbs_types::ProtectedHeader::generate_aad``) instead of using the
received string. For ``RSA-OAEP-256`` (its default key) the header ``{"alg","enc"}``
re-serializes byte for byte; for ``ECDH-ES+A256KW`` joserfc writes the ``epk`` members as
``crv, x, y, kty`` while serde sorts them, so upstream EC clients would fail the GCM tag: use
RSA keys with them. jupyter-cc's own client opens the JWE with joserfc and is unaffected.

>>> canonical_json({"tee-pubkey": {"y": "1", "kty": "EC"}, "nonce": "n"})
b'{"nonce":"n","tee-pubkey":{"kty":"EC","y":"1"}}'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from jupyter_cc.decoding import b64decode_any
from jupyter_cc.errors import CCError, InputError

__all__ = [
    "API_PREFIX",
    "CONTENT_ENC",
    "EC_ALG",
    "HASH_ALGORITHMS",
    "JWE_MEMBERS",
    "MAX_BODY",
    "POLICY_HEADER",
    "PROTOCOL_VERSION",
    "RSA_ALG",
    "SESSION_COOKIE",
    "KbsError",
    "ResourcePath",
    "canonical_json",
    "decrypt_response",
    "encrypt_response",
    "error_body",
    "import_tee_pubkey",
    "report_data_for",
    "runtime_data_digest",
    "tee_pubkey_jwk",
]

PROTOCOL_VERSION = "0.1.1"
API_PREFIX = "/kbs/v0"
SESSION_COOKIE = "kbs-session-id"
POLICY_HEADER = "X-Jupyter-CC-Policy"
"""jupyter-cc's response header naming the policy that allowed a release (not in Trustee's protocol)."""
MAX_BODY = 1024 * 1024
"""Largest request body the broker reads (1 MiB); larger bodies get 413."""

HASH_ALGORITHMS = {"sha384": hashlib.sha384, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
"""Hash algorithms for the REPORT_DATA binding, in the broker's order of preference."""
DEFAULT_HASH = "sha384"

RSA_ALG = "RSA-OAEP-256"
EC_ALG = "ECDH-ES+A256KW"
CONTENT_ENC = "A256GCM"
_EC_CURVES = {"P-256": 32, "P-384": 48, "P-521": 66}
_MIN_RSA_BITS = 2048
JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
"""The members of the broker's flattened JWE, exactly as Trustee's ``kbs_types::Response``."""

_ERROR_TYPE = "https://github.com/confidential-containers/kbs/errors/"
_SEGMENT = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")


class KbsError(CCError):
    """A key broker request or record that cannot be served (bad request, unknown resource...)."""

    check = "key broker"


# --- canonical JSON and the REPORT_DATA binding ------------------------------------------------


def _no_floats(value: Any) -> None:
    if isinstance(value, float):
        raise InputError("canonical JSON of the runtime data must not contain numbers with fractions")
    if isinstance(value, Mapping):
        for v in value.values():
            _no_floats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _no_floats(v)


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8: the bytes whose hash the evidence binds (see module doc)."""
    _no_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def runtime_data_digest(
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    hash_algorithm: str = DEFAULT_HASH,
    *,
    additional_evidence: str | None = None,
) -> bytes:
    """``HASH(canonical_json(runtime data))`` for the nonce and the TEE's public key."""
    try:
        digest = HASH_ALGORITHMS[hash_algorithm]
    except KeyError:
        raise KbsError(
            f"hash algorithm {hash_algorithm!r} is not supported (use one of {', '.join(HASH_ALGORITHMS)})"
        ) from None
    doc: dict[str, Any] = {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)}
    if additional_evidence is not None:
        doc["additional-evidence"] = additional_evidence
    return digest(canonical_json(doc)).digest()


def report_data_for(digest: bytes) -> bytes:
    """The 64-byte REPORT_DATA carrying ``digest``: the digest, then zero bytes."""
    if len(digest) > 64:
        raise InputError(f"a REPORT_DATA digest is at most 64 bytes, got {len(digest)}")
    return digest.ljust(64, b"\x00")


# --- resource paths ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourcePath:
    """``repository/type/tag``: the id of one resource (each part letters, digits, ``._-``)."""

    repository: str
    type: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ResourcePath:
        """Parse ``repo/type/tag``; :class:`InputError` names what is wrong."""
        parts = text.strip("/").split("/")
        if len(parts) != 3:
            raise InputError(
                f"resource id {text!r} must have three parts, repository/type/tag",
                hint="for example default/key/dataset-1",
            )
        for part in parts:
            if not _SEGMENT.match(part) or part in (".", ".."):
                raise InputError(
                    f"resource id {text!r} has an invalid part {part!r}",
                    hint="use 1 to 128 letters, digits, '.', '_' or '-' per part",
                )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.repository}/{self.type}/{self.tag}"


# --- TEE public keys --------------------------------------------------------------------------


def tee_pubkey_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> dict[str, str]:
    """The ``tee-pubkey`` JWK of an ephemeral key pair, with exactly Trustee's members.

    EC: ``{kty, crv, alg: "ECDH-ES+A256KW", x, y}``; RSA: ``{kty, alg: "RSA-OAEP-256", n, e}``.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        d = ECKey.import_key(key.public_key()).as_dict(private=False)
        return {"kty": "EC", "crv": str(d["crv"]), "alg": EC_ALG, "x": str(d["x"]), "y": str(d["y"])}
    d = RSAKey.import_key(key.public_key()).as_dict(private=False)
    return {"kty": "RSA", "alg": RSA_ALG, "n": str(d["n"]), "e": str(d["e"])}


def import_tee_pubkey(jwk: Any) -> tuple[ECKey | RSAKey, str]:
    """Check a ``tee-pubkey`` JWK and return it as a joserfc key with its key-management alg.

    Accepted: EC P-256, P-384 or P-521 with ``ECDH-ES+A256KW``; RSA of at least 2048 bits with
    ``RSA-OAEP-256``. ``RSA1_5`` (deprecated by Trustee too) and private members are refused.

    Raises:
        KbsError: the key is malformed, private, too weak or names another algorithm.
    """
    if not isinstance(jwk, dict):
        raise KbsError("runtime-data.tee-pubkey must be a JWK object")
    if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi")):
        raise KbsError("runtime-data.tee-pubkey carries private key members; send only the public key")
    kty, alg = jwk.get("kty"), jwk.get("alg")
    try:
        if kty == "EC":
            if alg != EC_ALG:
                raise KbsError(f"an EC tee-pubkey must name alg {EC_ALG}, not {alg!r}")
            crv = jwk.get("crv")
            if crv not in _EC_CURVES:
                raise KbsError(f"tee-pubkey curve {crv!r} is not supported (use P-256, P-384 or P-521)")
            ec_key = ECKey.import_key(
                {"kty": "EC", "crv": crv, "x": str(jwk.get("x")), "y": str(jwk.get("y"))}
            )
            return ec_key, EC_ALG
        if kty == "RSA":
            if alg != RSA_ALG:
                raise KbsError(f"an RSA tee-pubkey must name alg {RSA_ALG}, not {alg!r}")
            n = jwk.get("n")
            bits = len(b64decode_any(n, what="tee-pubkey n")) * 8 if isinstance(n, str) else 0
            if bits < _MIN_RSA_BITS:
                raise KbsError(f"an RSA tee-pubkey of {bits} bits is too weak (at least {_MIN_RSA_BITS})")
            rsa_key = RSAKey.import_key({"kty": "RSA", "n": str(n), "e": str(jwk.get("e"))})
            return rsa_key, RSA_ALG
    except (JoseError, ValueError, TypeError, InputError) as exc:
        raise KbsError(f"runtime-data.tee-pubkey is not a valid {kty} public key ({exc})") from None
    raise KbsError(f"tee-pubkey key type {kty!r} is not supported (use EC or RSA)")


# --- the JWE ----------------------------------------------------------------------------------


def encrypt_response(jwk: Mapping[str, Any], plaintext: bytes) -> dict[str, str]:
    """Encrypt ``plaintext`` to the TEE's public key: Trustee's flattened JWE (see module doc)."""
    key, alg = import_tee_pubkey(dict(jwk))
    compact = jwe.encrypt_compact(
        {"alg": alg, "enc": CONTENT_ENC}, plaintext, key, algorithms=[alg, CONTENT_ENC]
    )
    return dict(zip(JWE_MEMBERS, compact.split("."), strict=True))


def decrypt_response(response: Any, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """Open the broker's JWE with the ephemeral private key; only the two key algs are allowed.

    Raises:
        KbsError: the response is not a flattened JWE or does not decrypt with this key.
    """
    if not isinstance(response, dict) or not all(isinstance(response.get(m), str) for m in JWE_MEMBERS):
        raise KbsError(
            "the broker's response is not a flattened JWE (expected " + ", ".join(JWE_MEMBERS) + ")"
        )
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        key: ECKey | RSAKey = ECKey.import_key(private_key)
        alg = EC_ALG
    else:
        key = RSAKey.import_key(private_key)
        alg = RSA_ALG
    try:
        return jwe.decrypt_json(response, key, algorithms=[alg, CONTENT_ENC]).plaintext or b""  # type: ignore[arg-type]
    except (JoseError, ValueError) as exc:
        raise KbsError(
            f"the broker's JWE does not decrypt with this session's key ({exc.__class__.__name__})",
            hint="the response was not made for this TEE key or was altered in transit",
        ) from None


def error_body(kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    """Trustee's ``ErrorInformation`` (``type``, ``detail``) plus jupyter-cc's extra members."""
    return {"type": _ERROR_TYPE + kind, "detail": detail, **extra}
