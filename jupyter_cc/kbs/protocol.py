"""The Trustee KBS protocol (RCAR) as the broker and the ``kbs://`` client both speak it.

Shared by :mod:`jupyter_cc.kbs.server` and :mod:`jupyter_cc.keys.kbs_client`, so the two sides
cannot drift apart: request and response shapes, the canonical JSON whose hash the evidence
binds, resource paths, the TEE public key as a JWK, and the JWE a resource travels in.

Protocol: Trustee KBS attestation protocol 0.4.x, as guest-components (since June 2025) and
trustee's KBS speak it (docs/attestation-formats.md section 5, Trustee
``kbs_attestation_protocol.md``, ``kbs_types``)::

    POST /kbs/v0/auth    {"version": "0.4.0", "tee": "snp", "extra-params":
                          {"supported-hash-algorithms": ["sha384", ...]}}
                     ->  Set-Cookie: kbs-session-id=...; {"nonce": "<base64>",
                          "extra-params": {"selected-hash-algorithm": "sha384"}}
    POST /kbs/v0/attest  {"init-data": {"format": "toml", "body": "..."} (optional),
                          "runtime-data": {"nonce": ..., "tee-pubkey": JWK},
                          "tee-evidence": {"primary_evidence": {...},
                                           "additional_evidence": "<JSON text or empty>"}}
                     ->  {"token": "<JWT signed by the broker>"}
    GET  /kbs/v0/resource/<repo>/<type>/<tag>
                     ->  {"protected", "encrypted_key", "iv", "ciphertext", "tag"}  (JWE)

Errors are ``ErrorInformation`` (``{"type": ".../kbs/errors/<Name>", "detail": ...}``) with
trustee's status codes: 401 for every RCAR failure (:data:`ERR_ATTESTATION`) and for a resource
asked without an attested session (:data:`ERR_UNATTESTED`), 403 for a policy denial, 404 for a path
no route serves.

REPORT_DATA binding (what guest-components does)::

    primary     = HASH(canonical_json({"additional-evidence": additional_evidence,
                                       "nonce": nonce, "tee-pubkey": jwk}))
    device      = HASH(canonical_json({"nonce": nonce, "tee-pubkey": jwk}))   (additional evidence)
    REPORT_DATA = digest || zero bytes up to 64

with HASH the selected algorithm (``sha384`` unless the client asked otherwise; ``sha256`` and
``sha512`` are also offered). ``additional_evidence`` is the exact string the client sent (empty
when it has no devices). :func:`canonical_json` sorts object keys (recursively, by code point),
writes no whitespace (``,`` and ``:`` separators), keeps non-ASCII characters as UTF-8 and
refuses floats: for the ASCII strings this protocol carries this is byte-identical to RFC 8785
(JCS), which guest-components uses (``serde_json_canonicalizer``).

The JWE is made here with ``cryptography`` (RFC 7516/7518): ``RSA-OAEP-256`` or
``ECDH-ES+A256KW`` (Concat KDF, empty PartyU/PartyV info) to the TEE key, ``A256GCM`` content,
no ``aad`` member (trustee leaves it out), AES-GCM additional data ``ASCII(protected)``.
Upstream clients recompute that additional data by re-serializing the header they parsed
(``kbs_types::ProtectedHeader::generate_aad``: ``alg``, ``enc``, then the other members in
serde_json's map order, sorted unless ``preserve_order``). So the broker writes the protected
header with every object's keys sorted, compact: ``{"alg","enc","epk":{"crv","kty","x","y"}}``
re-serializes to the same bytes sorted, in struct order and in insertion order alike.
:func:`decrypt_response` uses the received ``protected`` string first (RFC 7516) and then those
re-serializations, so it opens JWEs from trustee and from brokers that order the header
otherwise. Upstream guest-components has made EC P-256 (``ECDH-ES+A256KW``) its default TEE
key since December 2024; RSA-OAEP-256 still works both ways.

>>> canonical_json({"tee-pubkey": {"y": "1", "kty": "EC"}, "nonce": "n"})
b'{"nonce":"n","tee-pubkey":{"kty":"EC","y":"1"}}'
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from jupyter_cc.decoding import b64decode_any
from jupyter_cc.errors import CCError, InputError

__all__ = [
    "API_PREFIX",
    "CONTENT_ENC",
    "EC_ALG",
    "ERR_ATTESTATION",
    "ERR_PATH",
    "ERR_PLUGIN",
    "ERR_POLICY",
    "ERR_RESOURCE",
    "ERR_UNATTESTED",
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
    "parse_version",
    "protected_header",
    "report_data_for",
    "runtime_data_digest",
    "tee_pubkey_jwk",
]

PROTOCOL_VERSION = "0.4.0"
"""The protocol version our client sends; the broker accepts any 0.4.x (trustee: exactly 0.4.0)."""
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
ERR_ATTESTATION = "AttestationError"
"""trustee's type for every failed ``auth`` or ``attest`` (401)."""
ERR_UNATTESTED = "TokenNotFound"
"""trustee's type for a resource asked without an attested session or valid token (401)."""
ERR_POLICY = "PolicyDeny"
"""trustee's type for a resource policy denial (403)."""
ERR_PATH = "InvalidRequestPath"
"""trustee's type for a path no route serves (404)."""
ERR_PLUGIN = "PluginNotFound"
"""trustee's type for ``/kbs/v0/<name>`` with no such plugin (404)."""
ERR_RESOURCE = "ResourceNotFound"
"""An unknown resource (404; trustee's resource plugin answers 401 PluginInternalError)."""
_VERSION = re.compile(r"\A0\.4\.(0|[1-9][0-9]{0,5})\Z")
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


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise KbsError(f"the broker's JWE member {what} is not base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def protected_header(header: Mapping[str, Any]) -> str:
    """The ``protected`` member for ``header``: compact JSON, keys sorted at every level, base64url.

    Sorted keys make the bytes the same however a client re-serializes the parsed header (see
    the module docstring), so upstream clients recompute exactly this AES-GCM additional data.
    """
    return _b64u(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _concat_kdf(z: bytes, alg: str, apu: bytes = b"", apv: bytes = b"") -> bytes:
    """RFC 7518 section 4.6.2: the 256-bit key-wrapping key for ``ECDH-ES+A256KW``."""

    def part(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    other = part(alg.encode("ascii")) + part(apu) + part(apv) + (256).to_bytes(4, "big")
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other).derive(z)


def _ec_public(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[str(jwk["crv"])]
    x = int.from_bytes(b64decode_any(str(jwk["x"]), what="x"), "big")
    y = int.from_bytes(b64decode_any(str(jwk["y"]), what="y"), "big")
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()


def _ec_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    size = _EC_CURVES[crv]
    numbers = key.public_numbers()
    return {
        "crv": crv,
        "kty": "EC",
        "x": _b64u(numbers.x.to_bytes(size, "big")),
        "y": _b64u(numbers.y.to_bytes(size, "big")),
    }


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _recipient(jwk: Mapping[str, Any]) -> tuple[str, ec.EllipticCurvePublicKey | rsa.RSAPublicKey]:
    """The checked ``tee-pubkey`` (:func:`import_tee_pubkey`) as a ``cryptography`` key, and its alg."""
    _key, alg = import_tee_pubkey(dict(jwk))
    if alg == EC_ALG:
        try:
            return alg, _ec_public(jwk)
        except (ValueError, KeyError, InputError):
            raise KbsError("runtime-data.tee-pubkey is not a point on its curve") from None
    n = int.from_bytes(b64decode_any(str(jwk["n"]), what="n"), "big")
    e = int.from_bytes(b64decode_any(str(jwk["e"]), what="e"), "big")
    return alg, rsa.RSAPublicNumbers(e, n).public_key()


@functools.lru_cache(maxsize=1024)
def _recipient_of(
    members: tuple[tuple[str, str], ...],
) -> tuple[str, ec.EllipticCurvePublicKey | rsa.RSAPublicKey]:
    """:func:`_recipient` of a JWK given as its sorted string members, kept: an attested session's
    key is checked and parsed once, not at every release (a refused key raises and is not kept)."""
    return _recipient(dict(members))


def encrypt_response(jwk: Mapping[str, Any], plaintext: bytes) -> dict[str, str]:
    """Encrypt ``plaintext`` to the TEE's public key: trustee's flattened JWE (see module doc)."""
    if all(isinstance(k, str) and isinstance(v, str) for k, v in jwk.items()):
        alg, peer = _recipient_of(tuple(sorted(jwk.items())))
    else:
        alg, peer = _recipient(jwk)  # refused by import_tee_pubkey, with its reason
    cek = os.urandom(32)
    header: dict[str, Any] = {"alg": alg, "enc": CONTENT_ENC}
    if isinstance(peer, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(peer.curve)
        kek = _concat_kdf(ephemeral.exchange(ec.ECDH(), peer), EC_ALG)
        encrypted_key = aes_key_wrap(kek, cek)
        header["epk"] = _ec_jwk(ephemeral.public_key())
    else:
        encrypted_key = peer.encrypt(cek, _OAEP)
    protected = protected_header(header)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": _b64u(encrypted_key),
        "iv": _b64u(iv),
        "ciphertext": _b64u(sealed[:-16]),
        "tag": _b64u(sealed[-16:]),
    }


def _header_of(protected: str) -> dict[str, Any]:
    try:
        header = json.loads(_unb64u(protected, "protected"))
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise KbsError("the broker's JWE protected header is not a JSON object")
    return header


def _aad_candidates(protected: str, header: dict[str, Any], aad: Any) -> Iterator[bytes]:
    """The received header first (RFC 7516), then the re-serializations upstream clients make
    (made only if the received one does not open the JWE)."""
    suffix = f".{aad}" if isinstance(aad, str) and aad else ""
    yield (protected + suffix).encode("ascii")
    rest = {k: header[k] for k in sorted(header) if k not in ("alg", "enc")}
    struct_order = {"alg": header.get("alg"), "enc": header.get("enc"), **rest}
    compact = (",", ":")
    forms = [
        _b64u(json.dumps(header, sort_keys=True, separators=compact).encode("utf-8")),
        _b64u(json.dumps(struct_order, separators=compact).encode("utf-8")),
        _b64u(json.dumps(header, separators=compact).encode("utf-8")),
    ]
    for form in dict.fromkeys(forms):
        if form != protected:
            yield (form + suffix).encode("ascii")


def _unwrap_cek(
    header: dict[str, Any], encrypted_key: bytes, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> bytes:
    alg = header.get("alg")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if alg != EC_ALG:
            raise KbsError(f"the broker's JWE uses alg {alg!r}, not {EC_ALG} for this EC key")
        epk = header.get("epk")
        if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") not in _EC_CURVES:
            raise KbsError("the broker's JWE has no usable epk (ephemeral EC key) in its protected header")
        peer = _ec_public(epk)
        if peer.curve.name != key.curve.name:
            raise KbsError("the broker's JWE epk is on another curve than this session's key")
        apu = _unb64u(header.get("apu", ""), "apu")
        apv = _unb64u(header.get("apv", ""), "apv")
        kek = _concat_kdf(key.exchange(ec.ECDH(), peer), EC_ALG, apu, apv)
        return aes_key_unwrap(kek, encrypted_key)
    if alg != RSA_ALG:
        raise KbsError(f"the broker's JWE uses alg {alg!r}, not {RSA_ALG} for this RSA key")
    return key.decrypt(encrypted_key, _OAEP)


def decrypt_response(response: Any, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """Open the broker's JWE with the ephemeral private key; only the two key algs are allowed.

    The AES-GCM tag decides: the additional data is the received ``protected`` string, or one of
    the re-serializations of its header (module docstring), so a JWE opens whatever order the
    broker wrote its header in, and a tampered one never does.

    Raises:
        KbsError: the response is not a flattened JWE or does not decrypt with this key.
    """
    if not isinstance(response, dict) or not all(isinstance(response.get(m), str) for m in JWE_MEMBERS):
        raise KbsError(
            "the broker's response is not a flattened JWE (expected " + ", ".join(JWE_MEMBERS) + ")"
        )
    header = _header_of(response["protected"])
    if header.get("enc") != CONTENT_ENC:
        raise KbsError(f"the broker's JWE uses enc {header.get('enc')!r}, not {CONTENT_ENC}")
    iv = _unb64u(response["iv"], "iv")
    sealed = _unb64u(response["ciphertext"], "ciphertext") + _unb64u(response["tag"], "tag")
    try:
        cek = _unwrap_cek(header, _unb64u(response["encrypted_key"], "encrypted_key"), private_key)
        if len(cek) != 32 or len(iv) != 12:
            raise ValueError("wrong key or IV size")
        cipher = AESGCM(cek)
    except (InvalidUnwrap, ValueError, KeyError, InputError) as exc:
        raise KbsError(
            f"the broker's JWE does not decrypt with this session's key ({exc.__class__.__name__})",
            hint="the response was not made for this TEE key or was altered in transit",
        ) from None
    for aad in _aad_candidates(response["protected"], header, response.get("aad")):
        try:
            return cipher.decrypt(iv, sealed, aad)
        except InvalidTag:
            continue
    raise KbsError(
        "the broker's JWE does not decrypt with this session's key (InvalidTag)",
        hint="the response was not made for this TEE key or was altered in transit",
    )


def parse_version(version: Any) -> str:
    """Check a ``Request.version``: any 0.4.x; :class:`KbsError` with one sentence otherwise."""
    if isinstance(version, str) and _VERSION.match(version):
        return version
    raise KbsError(
        f"KBS protocol version {str(version)[:40]!r} is not supported: this broker speaks 0.4.x "
        f"(as trustee's KBS 0.4.0 and guest-components since June 2025)"
    )


def error_body(kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    """Trustee's ``ErrorInformation`` (``type``, ``detail``) plus jupyter-cc's extra members."""
    return {"type": _ERROR_TYPE + kind, "detail": detail, **extra}
