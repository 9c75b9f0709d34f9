"""Microsoft Azure Attestation (MAA) tokens: verify the RS256 JWT and expose its claims.

An MAA token is a JWS in compact form whose payload carries what MAA concluded about a
confidential VM (docs/attestation-formats.md section 3.3). Trust in it comes from the signing
key, which the caller fetched over TLS from the pinned MAA instance's ``/certs`` endpoint (MAA's
JWKS certificates are self-signed, so there is no offline chain; pitfall 8). Verification, in
order:

1. the token is three strict base64url segments (no ``+``, ``/`` or padding, canonical
   trailing bits), with a JSON header and payload;
2. the header names ``alg`` RS256 (``none``, HMAC and every other algorithm are refused) and a
   ``kid`` found exactly once in the JWKS; the key comes from ``n``/``e`` or ``x5c[0]`` (and
   both must agree when both are present);
3. the RSASSA-PKCS1-v1_5 SHA-256 signature verifies (by ``joserfc``, nothing hand-rolled);
4. ``exp`` (required) and ``nbf`` enclose the verification time, and ``iss`` is the expected
   instance when one is given.

The claims are returned as they are, plus the fields that the policy reads, mapped from the
isolation-TEE claims (else, for platform tokens, the top level) onto the names the hardware
verifiers use, so that ``[snp]``, ``[tdx]`` and ``[azure]`` rules are judged against the token:
``attestation_type``, ``compliance_status``, ``secure_boot``; for an SEV-SNP CVM
(``sevsnpvm``) ``measurement``, ``host_data``, ``vmpl`` and ``reported_tcb`` (``bootloader``,
``tee``, ``snp``, ``microcode`` from the ``x-ms-sevsnpvm-*-svn`` claims); for a TDX CVM
(``tdxvm``) ``mrtd`` and ``rtmr`` (the four ``tdx_rtmr*`` claims). A mapped claim whose value
has the wrong type is left out, so a rule on it fails closed. Nothing here decides whether
those values are acceptable.

>>> issuer = "https://sharedeus2.eus2.attest.azure.net"
>>> claims = verify_maa(token, jwks, at=utcnow(), issuer=issuer)  # doctest: +SKIP
>>> claim_path(claims.details, "x-ms-isolation-tee.x-ms-attestation-type")  # doctest: +SKIP
'sevsnpvm'
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from jupyter_cc.attest.claims import Claims
from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import (
    BindingError,
    FormatError,
    FreshnessError,
    InputError,
    SignatureError,
)

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence
    from jupyter_cc.attest.roots import TrustStore

__all__ = ["MISSING", "claim_path", "verify_evidence", "verify_maa"]

ALGORITHM = "RS256"
MIN_RSA_BITS = 2048
# Claims names that Claims.to_json or the convenience fields below already use at the top level.
RESERVED = frozenset(
    {
        "tee",
        "simulated",
        "debug",
        "report_data",
        "gpu",
        "attestation_type",
        "compliance_status",
        "secure_boot",
        "measurement",
        "host_data",
        "vmpl",
        "reported_tcb",
        "mrtd",
        "rtmr",
        "shadowed_claims",
    }
)
TEE = "x-ms-isolation-tee"

_SEGMENT = re.compile(r"\A[A-Za-z0-9_-]+\Z")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Sentinel: :func:`claim_path` without a default raises ``KeyError`` for an absent claim."""


# --- token decoding --------------------------------------------------------------------------


def _b64url(segment: str, what: str) -> bytes:
    """Strict base64url: URL-safe alphabet only, no padding, canonical (zero) trailing bits."""
    if not segment:
        raise FormatError(f"the MAA token's {what} is empty")
    if not _SEGMENT.match(segment):
        bad = sorted({c for c in segment if not (c.isascii() and (c.isalnum() or c in "-_"))})
        shown = "".join(bad[:5])
        raise FormatError(
            f"the MAA token's {what} is not base64url (found {shown!r}; JWS segments use the "
            "URL-safe alphabet without padding)",
            hint="pass the token exactly as MAA issued it",
        )
    if len(segment) % 4 == 1:
        raise FormatError(f"the MAA token's {what} has an impossible base64url length ({len(segment)})")
    raw = segment.encode("ascii")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise FormatError(f"the MAA token's {what} is not valid base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise FormatError(
            f"the MAA token's {what} is not canonical base64url (its last character carries stray bits)",
            hint="the token was altered; pass it exactly as MAA issued it",
        )
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        value = strict_json(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"the MAA token's {what} is not a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise FormatError(f"the MAA token's {what} is JSON but not an object")
    return value


# --- JWKS ------------------------------------------------------------------------------------


def _jwks_keys(jwks: bytes) -> list[Mapping[str, Any]]:
    try:
        doc = strict_json(jwks.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(
            f"the JWKS is not JSON ({exc})",
            hint="pass the JSON document served at <MAA instance>/certs",
        ) from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise InputError(
            'the JWKS has no "keys" list of objects',
            hint="pass the JSON document served at <MAA instance>/certs",
        )
    return keys


def _jwk_uint(jwk: Mapping[str, Any], name: str, kid: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise InputError(f"JWKS key '{kid}' has no RSA parameter '{name}'")
    try:
        raw = _b64url(value, f"JWKS parameter '{name}'")
    except FormatError:
        raise InputError(f"JWKS key '{kid}' parameter '{name}' is not base64url") from None
    return int.from_bytes(raw, "big")


def _x5c_key(jwk: Mapping[str, Any], kid: str) -> rsa.RSAPublicKey | None:
    chain = jwk.get("x5c")
    if chain is None:
        return None
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise InputError(f"JWKS key '{kid}' has an x5c that is not a list of base64 certificates")
    try:
        # RFC 7517 4.7: x5c entries are standard base64 (not base64url) DER certificates.
        der = base64.b64decode(chain[0].encode("ascii"), validate=True)
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InputError(f"JWKS key '{kid}' x5c[0] is not a base64 DER certificate ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise InputError(f"JWKS key '{kid}' x5c[0] certificate does not hold an RSA key (RS256 needs one)")
    return key


def _select_key(jwks: bytes, kid: str) -> rsa.RSAPublicKey:
    matches = [k for k in _jwks_keys(jwks) if k.get("kid") == kid]
    if not matches:
        raise SignatureError(
            f"the MAA token's signing key '{kid}' is not in the JWKS",
            hint="fetch the JWKS from the issuing instance's /certs endpoint again (MAA rotates keys)",
        )
    if len(matches) > 1:
        raise InputError(f"the JWKS lists key '{kid}' {len(matches)} times; it must be unique")
    jwk = matches[0]
    if jwk.get("kty") != "RSA":
        raise SignatureError(f"JWKS key '{kid}' has kty {jwk.get('kty')!r}, but RS256 needs an RSA key")
    if "alg" in jwk and jwk["alg"] != ALGORITHM:
        raise SignatureError(f"JWKS key '{kid}' is for {jwk['alg']!r}, but the token is {ALGORITHM}")
    from_cert = _x5c_key(jwk, kid)
    from_ne: rsa.RSAPublicKey | None = None
    if "n" in jwk or "e" in jwk:
        numbers = rsa.RSAPublicNumbers(_jwk_uint(jwk, "e", kid), _jwk_uint(jwk, "n", kid))
        try:
            from_ne = numbers.public_key()
        except ValueError as exc:
            raise InputError(f"JWKS key '{kid}' is not a valid RSA public key ({exc})") from None
    if (
        from_cert is not None
        and from_ne is not None
        and from_cert.public_numbers() != from_ne.public_numbers()
    ):
        raise BindingError(
            f"JWKS key '{kid}' has n/e that differ from the key in its x5c certificate",
            hint="the JWKS is inconsistent; fetch it again from the MAA instance",
        )
    key = from_cert if from_cert is not None else from_ne
    if key is None:
        raise InputError(f"JWKS key '{kid}' has neither n/e nor x5c")
    if key.key_size < MIN_RSA_BITS:
        raise SignatureError(
            f"JWKS key '{kid}' is {key.key_size}-bit RSA; keys under {MIN_RSA_BITS} bits are refused"
        )
    return key


# --- claims ----------------------------------------------------------------------------------


def _lookup(node: Any, path: str) -> Any:
    if path == "":
        return node
    if isinstance(node, Mapping):
        # The longest key that is a dotted prefix of the path wins; shorter ones are tried if
        # the rest of the path does not resolve beneath it.
        if path in node:
            return node[path]
        cut = path.rfind(".")
        while cut > 0:
            key, rest = path[:cut], path[cut + 1 :]
            if rest and key in node:
                found = _lookup(node[key], rest)
                if found is not MISSING:
                    return found
            cut = path.rfind(".", 0, cut)
        return MISSING
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        head, _, rest = path.partition(".")
        if head.isdigit() and head.isascii() and int(head) < len(node):
            return _lookup(node[int(head)], rest)
    return MISSING


def claim_path(claims: Mapping[str, Any], path: str, default: Any = MISSING) -> Any:
    """The claim at dotted ``path``, where a key may itself contain dots.

    At each level the longest key that is a prefix of the remaining path (ending at a dot) is
    tried first, so ``x-ms-isolation-tee.x-ms-attestation-type`` resolves the top-level key
    ``x-ms-isolation-tee`` and then ``x-ms-attestation-type`` beneath it. A decimal segment
    indexes a list. Returns ``default`` when the claim is absent, or raises ``KeyError`` when
    no default was given.

    >>> claim_path({"a.b": {"c": 1}}, "a.b.c")
    1
    >>> claim_path({"keys": [{"kid": "x"}]}, "keys.0.kid")
    'x'
    """
    if not path:
        raise KeyError(path)
    found = _lookup(claims, path)
    if found is MISSING:
        if default is MISSING:
            raise KeyError(path)
        return default
    return found


def _tee_or_top(claims: Mapping[str, Any], name: str) -> Any:
    """A claim from the isolation-TEE object (guest tokens), else top level (platform tokens)."""
    tee = claims.get(TEE)
    if isinstance(tee, Mapping) and name in tee:
        return tee[name]
    return claims.get(name, MISSING)


def _is_debug(claims: Mapping[str, Any], attestation_type: Any) -> bool:
    """Fail closed: any debug flag that is present and not exactly ``false`` means debug."""
    tee = claims.get(TEE)
    tee = tee if isinstance(tee, Mapping) else {}
    snp = [
        tee.get("x-ms-sevsnpvm-is-debuggable", MISSING),
        claims.get("x-ms-sevsnpvm-is-debuggable", MISSING),
    ]
    flags = [
        *snp,
        tee.get("tdx_td_attributes_debug", MISSING),
        claims.get("tdx_td_attributes_debug", MISSING),
        claims.get("x-ms-azurevm-bootdebug-enabled", MISSING),
        claims.get("x-ms-azurevm-kerneldebug-enabled", MISSING),
    ]
    if any(flag is not MISSING and flag is not False for flag in flags):
        return True
    # An SEV-SNP token that omits the debuggable claim (a custom MAA policy can) says nothing
    # about debugging; treat that as debug rather than assume the opposite.
    return attestation_type == "sevsnpvm" and all(flag is MISSING for flag in snp)


def _secure_boot(claims: Mapping[str, Any]) -> bool | None:
    values = [
        _lookup(claims, f"{TEE}.x-ms-runtime.vm-configuration.secure-boot"),
        claims.get("secureboot", MISSING),
    ]
    present = [v for v in values if v is not MISSING]
    if not present:
        return None
    return all(v is True for v in present)


def _report_data(claims: Mapping[str, Any]) -> bytes:
    for name in ("x-ms-sevsnpvm-reportdata", "tdx_report_data"):
        value = _tee_or_top(claims, name)
        if value is MISSING:
            continue
        if not isinstance(value, str):
            raise FormatError(f"the MAA claim {name} is not a hex string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise FormatError(f"the MAA claim {name} is not hex ({value[:20]!r}...)") from None
    return b""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _hex_text(value: Any, size: int) -> str | None:
    if (
        isinstance(value, str)
        and len(value) == size * 2
        and all(c in "0123456789abcdefABCDEF" for c in value)
    ):
        return value.lower()
    return None


def _uint(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# MAA's SEV-SNP SVN claims and the reported-TCB fields the policy's [snp] min_tcb names.
_SNP_TCB = (
    ("bootloader", "bootloader-svn"),
    ("tee", "tee-svn"),
    ("snp", "snpfw-svn"),
    ("microcode", "microcode-svn"),
)


def _snp_details(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The SEV-SNP claims of a ``sevsnpvm`` token under the names of :mod:`~jupyter_cc.attest.snp`."""
    tcb = {name: _uint(_tee_or_top(claims, f"x-ms-sevsnpvm-{svn}")) for name, svn in _SNP_TCB}
    return {
        "measurement": _hex_text(_tee_or_top(claims, "x-ms-sevsnpvm-launchmeasurement"), 48),
        "host_data": _hex_text(_tee_or_top(claims, "x-ms-sevsnpvm-hostdata"), 32),
        "vmpl": _uint(_tee_or_top(claims, "x-ms-sevsnpvm-vmpl")),
        "reported_tcb": {name: value for name, value in tcb.items() if value is not None},
    }


def _tdx_details(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The TDX claims of a ``tdxvm`` token under the names of the TDX quote verifier."""
    rtmr = [_hex_text(_tee_or_top(claims, f"tdx_rtmr{i}"), 48) for i in range(4)]
    return {
        "mrtd": _hex_text(_tee_or_top(claims, "tdx_mrtd"), 48),
        "rtmr": rtmr if all(r is not None for r in rtmr) else None,
    }


def _details(claims: dict[str, Any]) -> dict[str, Any]:
    details = {k: v for k, v in claims.items() if k not in RESERVED}
    shadowed = {k: v for k, v in claims.items() if k in RESERVED}
    attestation_type = _tee_or_top(claims, "x-ms-attestation-type")
    details.update(
        {
            "attestation_type": _text(attestation_type),
            "compliance_status": _text(_tee_or_top(claims, "x-ms-compliance-status")),
            "secure_boot": _secure_boot(claims),
            "measurement": None,
        }
    )
    if attestation_type == "sevsnpvm":
        details.update(_snp_details(claims))
    elif attestation_type == "tdxvm":
        details.update(_tdx_details(claims))
    if shadowed:
        details["shadowed_claims"] = shadowed
    return details


# --- verification ----------------------------------------------------------------------------


def _time(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(f"the MAA token's {name} claim is not a number of seconds ({value!r})")
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise FormatError(f"the MAA token's {name} claim {value!r} is not a representable time") from None


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_times(claims: Mapping[str, Any], at: datetime) -> None:
    exp = _time(claims, "exp")
    nbf = _time(claims, "nbf")
    if exp is None:
        raise FreshnessError(
            "the MAA token has no exp claim, so its validity cannot be bounded",
            hint="request a new token from MAA",
        )
    if at >= exp:
        raise FreshnessError(
            f"the MAA token expired at {_iso(exp)} (verification time {_iso(at)})",
            hint="request a new token, or pass --at to verify as of a past time",
        )
    if nbf is not None and at < nbf:
        raise FreshnessError(
            f"the MAA token is not valid before {_iso(nbf)} (verification time {_iso(at)})",
            hint="check the clock or pass --at with the time the token was issued",
        )


def _check_issuer(claims: Mapping[str, Any], issuer: str) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise BindingError(f"the MAA token has no iss claim; expected issuer {issuer}")
    if iss.rstrip("/") != issuer.rstrip("/"):
        raise BindingError(
            f"the MAA token was issued by {iss}, not by the expected instance {issuer}",
            hint="pass the JWKS and --issuer of the instance that issued the token",
        )


def _registry() -> JWSRegistry:
    # RS256 only; header members beyond the registered ones are allowed (only "crit" would make
    # them binding, and it is refused); room for headers that carry an x5c chain.
    registry = JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
    registry.max_header_length = 16384
    return registry


def verify_maa(token: str, jwks: bytes, *, at: datetime, issuer: str | None = None) -> Claims:
    """Verify an MAA token with the instance's JWKS and return its claims (kind ``maa``).

    Args:
        token: the JWT in compact form (surrounding whitespace is ignored).
        jwks: the JSON document the MAA instance served at ``/certs``.
        at: the verification time (timezone-aware).
        issuer: the expected ``iss`` (the MAA instance URL); a trailing slash is ignored.

    Raises:
        FormatError: the token is not a well-formed JWS with JSON header and payload.
        SignatureError: wrong algorithm, unknown ``kid``, or a signature that does not verify.
        FreshnessError: ``at`` is outside ``nbf`` .. ``exp`` (or the token has no ``exp``).
        BindingError: ``iss`` is not ``issuer``, or the JWKS key's n/e and x5c disagree.
        InputError: the JWKS is unreadable.
    """
    if at.tzinfo is None:
        raise InputError("the verification time must carry a timezone (use UTC)")
    if not isinstance(token, str):
        raise FormatError("the MAA token must be text")
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise FormatError(
            f"an MAA token is a JWS of three dot-separated parts, this input has {len(parts)}",
            hint="pass the token (header.payload.signature), not a JWE or a JSON response",
        )
    header = _json_object(_b64url(parts[0], "header"), "header")
    payload_raw = _b64url(parts[1], "payload")
    _b64url(parts[2], "signature")

    alg = header.get("alg")
    if alg != ALGORITHM:
        raise SignatureError(
            f"the MAA token's algorithm is {alg!r}; only {ALGORITHM} is accepted "
            "(unsigned 'none' and shared-secret HS* tokens are refused)",
        )
    if "crit" in header:
        raise FormatError(f"the MAA token's header marks extensions {header['crit']!r} as critical")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise FormatError("the MAA token's header names no key (kid)")
    public_key = _select_key(jwks, kid)
    try:
        jws.deserialize_compact(token, RSAKey.import_key(public_key), registry=_registry())
    except BadSignatureError:
        raise SignatureError(
            f"the MAA token's RS256 signature does not verify with key '{kid}': the token was "
            "altered or signed by another key",
            hint="fetch the JWKS from the instance that issued the token",
        ) from None
    except JoseError as exc:
        raise FormatError(f"the MAA token is not a valid JWS ({exc.error}: {exc.description})") from None

    claims = _json_object(payload_raw, "payload")
    _check_times(claims, at)
    if issuer is not None:
        _check_issuer(claims, issuer)
    attestation_type = _tee_or_top(claims, "x-ms-attestation-type")
    return Claims(
        kind="maa",
        simulated=False,
        debug=_is_debug(claims, attestation_type),
        report_data=_report_data(claims),
        details=_details(claims),
    )


def verify_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``maa``: ``ev.report`` is the token, ``ev.jwks`` its keys.

    ``roots`` is not used: an MAA token is trusted through the JWKS its instance serves.
    """
    token = ev.report.decode("ascii", "replace") if isinstance(ev.report, bytes) else ev.report
    jwks = ev.require(
        "jwks", "the issuer's JWKS", "pass --jwks with the keys the MAA instance serves at /certs"
    )
    return verify_maa(token.strip(), jwks, at=at, issuer=ev.issuer)
