"""Azure Key Vault Secure Key Release into this TEE: ``akv://vault/keys/name[/version]``.

:func:`release_akv` is what :func:`jupyter_cc.keys.release` calls for ``akv://`` URIs, inside
the confidential kernel. The steps, numbered as in the code:

1. **Wrapping key.** An ephemeral RSA key pair is made in this process. Its public half, as a
   JWK set ``{"keys": [{"kid", "kty": "RSA", "key_ops": ["encrypt"], "n", "e"}]}`` serialized
   compactly with sorted keys, is the *runtime data*. The private half never leaves this
   process and is never logged.
2. **Attest to MAA.** Fresh CPU evidence is collected in-process with
   ``REPORT_DATA = SHA-256(runtime data) || 32 zero bytes`` — the binding MAA checks for
   ``SevSnpVm``/``TdxVm`` requests and the one Azure's HCL uses for its own runtime data
   (docs/attestation-formats.md 3.1). The evidence and runtime data go to
   ``POST {maa}/attest/SevSnpVm?api-version=2022-08-01`` (SNP) or
   ``/attest/TdxVm?api-version=2023-04-01-preview`` (TDX); MAA answers ``{"token": JWT}`` and
   echoes the runtime data as the ``x-ms-runtime`` claim.
3. **Verify the token.** Before it is used, the token is verified with
   :func:`jupyter_cc.attest.maa.verify_maa` against the JWKS fetched over TLS from
   ``{maa}/certs`` (the pinned instance; the token's ``jku`` is ignored), its issuer must be
   that instance, its ``x-ms-runtime.keys`` must contain the ephemeral key (Key Vault wraps to
   the key found there), and its report data claim, when present, must be this release's.
4. **Release.** ``azure-keyvault-keys`` ``KeyClient.release_key`` with an ``azure-identity``
   credential (``DefaultAzureCredential`` unless one is given): the SDK enforces HTTPS and
   does Key Vault's bearer-challenge authentication. Key Vault evaluates the key's release
   policy against the token and answers a JWS.
5. **Verify the JWS.** ``alg`` RS256 (or another RSA JWS algorithm) with an ``x5c`` chain; the
   signature must verify with ``x5c[0]``, whose DNS names must cover the vault host and which
   must chain to a trusted root (the system store, or ``ca_bundle``/``jws_roots``). The
   payload must name the key asked for and the wrapping algorithm asked for.
6. **Unwrap.** ``response.key.key.key_hsm`` is base64url JSON ``{schema_version, header,
   ciphertext}``; the first modulus-size bytes of the ciphertext are RSA-OAEP (SHA-1 for
   ``CKM_RSA_AES_KEY_WRAP``, SHA-256 for ``RSA_AES_KEY_WRAP_256``, SHA-384 for
   ``RSA_AES_KEY_WRAP_384``; MGF1 with the same hash) of an AES key-encryption key, the rest is
   AES Key Wrap with Padding (RFC 5649) of the key material: raw bytes for ``oct`` keys,
   PKCS#8 DER for RSA and EC keys.

Every failure is a :class:`AkvReleaseError`: one sentence naming the URI, the step and the
reason (for the release step also Key Vault's HTTP status, error code and message). No message
contains the MAA token, the bearer token or any key material.

Not supported: Azure CVMs whose only evidence source is the vTPM (``az-snp-vtpm``,
``az-tdx-vtpm``). There the hardware report binds the HCL's runtime data, whose keys live in
the vTPM, so Key Vault would wrap to a TPM-held key that needs TPM2 RSA-OAEP decryption.

>>> key = release_akv("akv://myvault/keys/dataset-key",
...                   maa_endpoint="https://sharedeus2.eus2.attest.azure.net")  # doctest: +SKIP
>>> key
ReleasedKey(key_id='https://myvault.vault.azure.net/keys/dataset-key/0f1e...', fingerprint='...')
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import json
import os
import re
import secrets
import ssl
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from jupyter_cc.attest.certs import utcnow
from jupyter_cc.attest.maa import claim_path, verify_maa
from jupyter_cc.decoding import b64decode_any, b64url_encode, strict_json
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.guest.collectors import Collected, collect_cpu_evidence
from jupyter_cc.keys import KeyReleaseError, ReleasedKey

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "ALGORITHMS",
    "AkvReleaseError",
    "AkvUri",
    "parse_akv_uri",
    "release_akv",
    "report_data_for",
    "runtime_data_for",
    "unwrap_key_hsm",
    "verify_release_jws",
]

# claim_path treats its own MISSING as "no default"; this marks an absent claim instead.
_ABSENT: Any = object()

# The enc values Key Vault accepts and the OAEP hash each one names (sidecar RsaAESKeyUnwrap).
ALGORITHMS: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
JWS_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# MAA attest paths and API versions per evidence kind (docs/attestation-formats.md 3.2).
MAA_SNP = ("SevSnpVm", "2022-08-01")
MAA_TDX = ("TdxVm", "2023-04-01-preview")
DEFAULT_VAULT_URL = "https://{vault}.vault.azure.net"
DEFAULT_API_VERSION = "7.4"
POLICY_NAME = "akv release policy"
WRAPPING_KEY_SIZES = (2048, 3072, 4096)
MAX_RESPONSE = 1024 * 1024
MAX_X5C = 8
MIN_SIGNER_BITS = 2048

_VAULT = re.compile(r"\A[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]\Z")
_KEY_NAME = re.compile(r"\A[A-Za-z0-9-]{1,127}\Z")
_VERSION = re.compile(r"\A[A-Za-z0-9]{1,64}\Z")
_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")


class AkvReleaseError(KeyReleaseError):
    """A step of an ``akv://`` release failed.

    Attributes:
        step: which step (``attest to MAA``, ``MAA token verification``, ``Key Vault
            release``, ``JWS verification``, ``unwrap``).
        status: Key Vault's HTTP status, for the release step when it answered.
        code: Key Vault's error code (``Forbidden``, ``KeyNotFound``, ...), when it gave one.
    """

    check = "key release"

    def __init__(
        self,
        uri: str,
        step: str,
        why: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"Key Vault release of {uri} failed at {step}: {why.rstrip('.')}", hint=hint)
        self.step = step
        self.status = status
        self.code = code


# --- the URI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AkvUri:
    """``akv://vault/keys/name[/version]``, parsed."""

    vault: str
    name: str
    version: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"akv://{self.vault}/keys/{self.name}{tail}"


def parse_akv_uri(uri: str) -> AkvUri:
    """Parse and check an ``akv://`` URI (vault 3-24 characters, key name up to 127).

    Raises:
        InputError: not of the form ``akv://vault-name/keys/key-name[/version]``.
    """
    form = "write akv://vault-name/keys/key-name[/version]"
    parts = urlsplit(uri)
    if parts.scheme.lower() != "akv":
        raise InputError(f"{uri!r} is not an akv:// URI", hint=form)
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise InputError(
            f"{uri!r} has a query, fragment, user or port, which akv:// URIs do not take", hint=form
        )
    vault = parts.netloc
    if not _VAULT.match(vault):
        raise InputError(
            f"{uri!r} names vault {vault!r}; a vault name is 3-24 letters, digits and hyphens", hint=form
        )
    segments = parts.path.split("/")
    if len(segments) not in (3, 4) or segments[0] != "" or segments[1] != "keys":
        raise InputError(f"{uri!r} does not name a key", hint=form)
    name = segments[2]
    if not _KEY_NAME.match(name):
        raise InputError(f"{uri!r} names key {name!r}; a key name is 1-127 letters, digits and hyphens")
    version = segments[3] if len(segments) == 4 else None
    if version is not None and not _VERSION.match(version):
        raise InputError(f"{uri!r} has key version {version!r}; a version is letters and digits")
    return AkvUri(vault=vault, name=name, version=version)


# --- step 1: the wrapping key and its binding ------------------------------------------------


class _WrappingKey:
    """The ephemeral RSA key pair Key Vault wraps to; it never leaves this object or process."""

    __slots__ = ("_private", "jwk", "kid")

    def __init__(self, bits: int) -> None:
        if bits not in WRAPPING_KEY_SIZES:
            raise InputError(f"the wrapping key size must be one of {WRAPPING_KEY_SIZES}, not {bits}")
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.kid = f"jupyter-cc-{secrets.token_hex(8)}"
        public = RSAKey.import_key(self._private.public_key()).as_dict(private=False)
        self.jwk: dict[str, Any] = {"kid": self.kid, "kty": "RSA", "key_ops": ["encrypt"]}
        self.jwk.update({"n": public["n"], "e": public["e"]})

    def __repr__(self) -> str:
        return f"_WrappingKey(kid={self.kid!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("the ephemeral wrapping key cannot be pickled")

    @property
    def size(self) -> int:
        return int(self._private.key_size) // 8

    def decrypt(self, data: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
        oaep = padding.OAEP(mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=None)
        return self._private.decrypt(data, oaep)


def runtime_data_for(jwk: Mapping[str, Any]) -> bytes:
    """The runtime data carrying a public JWK: ``{"keys": [jwk]}``, compact, keys sorted."""
    return json.dumps({"keys": [dict(jwk)]}, separators=(",", ":"), sort_keys=True).encode("utf-8")


def report_data_for(runtime_data: bytes) -> bytes:
    """REPORT_DATA binding runtime data: SHA-256 of it, then 32 zero bytes (MAA and the HCL)."""
    return hashlib.sha256(runtime_data).digest() + bytes(32)


# --- step 2: attest to MAA -------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the error it is, never followed


def _ssl_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the CA bundle {os.fspath(ca_bundle)} ({exc})") from None


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _service_error(body: bytes) -> str:
    """``code: message`` from an Azure error body ``{"error": {"code", "message"}}``, if any."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return ""
    code, message = error.get("code"), error.get("message")
    parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
    return _one_line(": ".join(parts))


def _https(
    url: str,
    *,
    body: Mapping[str, Any] | None,
    context: ssl.SSLContext,
    timeout: float,
    fail: Callable[[str], AkvReleaseError],
) -> bytes:
    """GET (no body) or POST JSON over TLS; the response body, at most 1 MiB."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    where = urlsplit(url)
    shown = f"{where.scheme}://{where.netloc}{where.path}"
    try:
        with opener.open(request, timeout=timeout) as response:
            payload: bytes = response.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _service_error(exc.read(64 * 1024))
        raise fail(f"{shown} answered HTTP {exc.code}" + (f" ({detail})" if detail else "")) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise fail(
                f"the TLS certificate of {where.netloc} is not trusted ({reason.verify_message})"
            ) from None
        raise fail(f"{shown} could not be reached ({_one_line(str(reason))})") from None
    except (OSError, ValueError) as exc:
        raise fail(f"{shown} could not be reached ({_one_line(str(exc))})") from None
    if len(payload) > MAX_RESPONSE:
        raise fail(f"the response of {shown} is larger than {MAX_RESPONSE} bytes")
    return payload


def _maa_request(
    collected: Collected, runtime_data: bytes, sim_dir: Path | None, fail: Callable[[str], AkvReleaseError]
) -> tuple[tuple[str, str], dict[str, Any]]:
    """The MAA attest path and request body for the collected evidence."""
    runtime = {"data": b64url_encode(runtime_data), "dataType": "JSON"}
    evidence = collected.evidence
    if collected.kind in ("az-snp-vtpm", "az-tdx-vtpm"):
        raise fail(
            f"the evidence is {collected.kind} (Azure vTPM): its hardware report binds the HCL's runtime "
            "data, whose keys are held by the vTPM, so Key Vault would wrap the key to a TPM-held key, "
            "which this client cannot decrypt"
        )
    report = b64decode_any(evidence["report"], what="the collected report")
    if collected.kind == "tdx":
        return MAA_TDX, {"quote": b64url_encode(report), "runtimeData": runtime}
    if collected.kind == "sim-snp":
        from jupyter_cc.attest.sim import SimulatedTee

        tee = SimulatedTee.load(sim_dir)
        chain = tee.vcek.public_bytes(serialization.Encoding.PEM) + tee.chain_pem()
    elif collected.kind == "snp":
        vcek = evidence.get("vcek")
        if not vcek:
            raise fail(
                "the SNP evidence came without a VCEK certificate, which MAA needs (VcekCertChain)",
            )
        chain = (vcek + evidence.get("chain", "")).encode("ascii")
    else:
        raise fail(f"MAA cannot attest {collected.kind} evidence")
    inner = {"SnpReport": b64url_encode(report), "VcekCertChain": b64url_encode(chain)}
    encoded = b64url_encode(json.dumps(inner, separators=(",", ":")).encode("utf-8"))
    return MAA_SNP, {"report": encoded, "runtimeData": runtime}


def _maa_endpoint(maa_endpoint: str | None) -> str:
    endpoint = maa_endpoint or os.environ.get("JUPYTER_CC_MAA_ENDPOINT")
    if not endpoint:
        raise InputError(
            "no MAA endpoint is given for the akv:// release",
            hint="pass maa_endpoint= or set JUPYTER_CC_MAA_ENDPOINT, e.g. https://sharedeus2.eus2.attest.azure.net",
        )
    parts = urlsplit(endpoint)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path.strip("/")
        or parts.query
        or parts.username
    ):
        raise InputError(
            f"the MAA endpoint {endpoint!r} is not an https://host URL",
            hint="give the attestation instance's base URL, e.g. https://sharedeus2.eus2.attest.azure.net",
        )
    return f"https://{parts.netloc}"


# --- step 3: the token -----------------------------------------------------------------------


def _same_key(entry: Any, ours: Mapping[str, Any]) -> bool:
    return (
        isinstance(entry, Mapping)
        and entry.get("kty") == "RSA"
        and all(entry.get(name) == ours[name] for name in ("n", "e"))
    )


def _check_runtime_keys(details: Mapping[str, Any], jwk: Mapping[str, Any]) -> str | None:
    """Why the token does not carry ``jwk`` in ``x-ms-runtime.keys`` (None when it does)."""
    keys = claim_path(details, "x-ms-runtime.keys", _ABSENT)
    if keys is _ABSENT:
        return (
            "the MAA token has no x-ms-runtime.keys claim, so it does not carry this release's wrapping key"
        )
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        return "the MAA token's x-ms-runtime.keys claim is not a list of keys"
    if not any(_same_key(entry, jwk) for entry in keys):
        return (
            "the MAA token's x-ms-runtime.keys do not include this release's ephemeral wrapping key, "
            "so Key Vault would wrap the key to another key"
        )
    return None


# --- step 5: the release JWS -----------------------------------------------------------------


def _jws_registry(alg: str) -> JWSRegistry:
    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    registry.max_header_length = 64 * 1024  # the header carries the x5c chain
    registry.max_payload_length = MAX_RESPONSE
    return registry


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    if not segment or not _B64URL.match(segment):
        raise ValueError(f"the JWS {what} is not base64url")
    raw = segment.encode("ascii")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        value = strict_json(data.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"the JWS {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"the JWS {what} is not a JSON object")
    return value


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = san.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def verify_release_jws(
    value: str, *, vault_host: str, roots: Sequence[x509.Certificate], at: datetime
) -> dict[str, Any]:
    """Verify Key Vault's release JWS and return its payload.

    The header's ``alg`` must be an RSA JWS algorithm and ``x5c`` a chain whose first
    certificate's key verifies the signature; that certificate must name ``vault_host`` in its
    subject alternative names and chain to one of ``roots`` at time ``at`` (``x5t#S256``, when
    present, must be its thumbprint).

    Raises:
        ValueError: any of these checks failed; the message says which (no payload content).
    """
    if not isinstance(value, str) or value.count(".") != 2:
        raise ValueError("the release response is not a compact JWS (header.payload.signature)")
    header = _segment_json(value.split(".", 1)[0], "header")
    alg = header.get("alg")
    if alg not in JWS_ALGORITHMS:
        raise ValueError(f"the JWS algorithm is {alg!r}; only {', '.join(JWS_ALGORITHMS)} are accepted")
    if "crit" in header:
        raise ValueError("the JWS header marks extensions as critical, which this client does not understand")
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or len(chain) > MAX_X5C:
        raise ValueError(f"the JWS header has no x5c certificate chain (1 to {MAX_X5C} certificates)")
    certs: list[x509.Certificate] = []
    for i, entry in enumerate(chain):
        try:
            # RFC 7515 4.1.6: x5c entries are standard base64 DER.
            certs.append(x509.load_der_x509_certificate(base64.b64decode(str(entry), validate=True)))
        except (binascii.Error, ValueError):
            raise ValueError(f"x5c[{i}] of the JWS header is not a base64 DER certificate") from None
    leaf = certs[0]
    thumbprint = header.get("x5t#S256")
    if thumbprint is not None:
        digest = b64url_encode(hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest())
        if thumbprint != digest:
            raise ValueError("the JWS header's x5t#S256 is not the thumbprint of x5c[0]")
    public_key = leaf.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_SIGNER_BITS:
        raise ValueError(f"x5c[0] does not hold an RSA key of at least {MIN_SIGNER_BITS} bits")
    try:
        # (a) the signature, by joserfc
        verified = jws.deserialize_compact(
            value, RSAKey.import_key(public_key), algorithms=[alg], registry=_jws_registry(alg)
        )
    except BadSignatureError:
        raise ValueError(f"the JWS {alg} signature does not verify with its x5c[0] certificate") from None
    except JoseError as exc:
        raise ValueError(f"the JWS is malformed ({exc.error})") from None
    # (b) the signer is the vault: its certificate names the vault host ...
    names = _dns_names(leaf)
    if not any(_name_matches(n, vault_host) for n in names):
        shown = ", ".join(names[:4]) or "no DNS names"
        raise ValueError(f"the JWS signing certificate is for {shown}, not the vault host {vault_host}")
    # (c) ... and chains to a trusted root, checked with the WebPKI server profile.
    if not roots:
        raise ValueError("no trusted root certificates are available to check the JWS signer")
    try:
        subject: DNSName | IPAddress
        try:
            subject = IPAddress(ipaddress.ip_address(vault_host))
        except ValueError:
            subject = DNSName(vault_host)
        verifier = PolicyBuilder().store(Store(list(roots))).time(at).build_server_verifier(subject)
        verifier.verify(leaf, certs[1:])
    except VerificationError as exc:
        raise ValueError(f"the JWS signing certificate does not chain to a trusted root ({exc})") from None
    try:
        payload = strict_json(verified.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("the JWS payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the JWS payload is not a JSON object")
    return payload


# --- step 6: unwrap --------------------------------------------------------------------------


def unwrap_key_hsm(
    key_hsm: str, algorithm: str, decrypt: Callable[[bytes, hashes.HashAlgorithm], bytes], size: int
) -> bytes:
    """Unwrap a release response's ``key_hsm`` (step 6 of the module docstring).

    Args:
        key_hsm: base64url JSON ``{schema_version, header, ciphertext}``.
        algorithm: the ``enc`` that was asked for; the blob's header must agree.
        decrypt: RSA-OAEP decryption with the wrapping key (given the OAEP hash).
        size: the wrapping key's modulus size in bytes.

    Raises:
        ValueError: the blob is malformed, names another algorithm, or does not unwrap.
    """
    try:
        blob = strict_json(b64decode_any(key_hsm, what="key_hsm").decode("utf-8"))
    except (InputError, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("key_hsm is not base64url JSON") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("ciphertext"), str):
        raise ValueError("key_hsm has no ciphertext")
    header = blob.get("header")
    enc = header.get("enc") if isinstance(header, dict) else None
    if enc is not None and enc != algorithm:
        raise ValueError(f"the key was wrapped with {enc!r}, not the {algorithm} asked for")
    try:
        ciphertext = b64decode_any(blob["ciphertext"], what="the key_hsm ciphertext")
    except InputError:
        raise ValueError("the key_hsm ciphertext is not base64url") from None
    if len(ciphertext) < size + 16 or (len(ciphertext) - size) % 8:
        raise ValueError(
            f"the key_hsm ciphertext is {len(ciphertext)} bytes; a {size * 8}-bit RSA block and an "
            "RFC 5649 wrapped key (16 bytes or more, a multiple of 8) are expected"
        )
    hash_algorithm = ALGORITHMS[algorithm]()
    try:
        kek = decrypt(ciphertext[:size], hash_algorithm)
    except ValueError:
        raise ValueError(
            f"RSA-OAEP ({hash_algorithm.name.upper()}) decryption of the key-encryption key failed: it was "
            "wrapped to another key or with another hash"
        ) from None
    if len(kek) not in (16, 24, 32):
        raise ValueError(f"the key-encryption key is {len(kek)} bytes, not an AES key")
    try:
        return aes_key_unwrap_with_padding(kek, ciphertext[size:])
    except InvalidUnwrap:
        raise ValueError(
            "the AES key wrap with padding (RFC 5649) does not unwrap: the ciphertext was altered"
        ) from None


def _released_material(kty: Any, material: bytes) -> bytes:
    """Check the unwrapped bytes are what ``kty`` says: raw for oct, PKCS#8 DER for RSA/EC."""
    if kty in ("oct", "oct-HSM"):
        if not material:
            raise ValueError("the released symmetric key is empty")
        return material
    if kty in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
        try:
            serialization.load_der_private_key(material, password=None)
        except (ValueError, TypeError):
            raise ValueError(f"the released {kty} key is not PKCS#8 DER") from None
        return material
    raise ValueError(f"the released key has type {kty!r}, which this client does not understand")


def _check_kid(kid: Any, vault_host: str, target: AkvUri) -> str:
    if not isinstance(kid, str):
        raise ValueError("the released key has no kid")
    parts = urlsplit(kid)
    segments = parts.path.split("/")
    if (
        parts.scheme != "https"
        or (parts.hostname or "").lower() != vault_host.lower()
        or len(segments) != 4
        or segments[1] != "keys"
        or segments[2].lower() != target.name.lower()
        or (target.version is not None and segments[3].lower() != target.version.lower())
    ):
        raise ValueError(f"the released key is {kid}, not the key {target.name} of {vault_host} asked for")
    return kid


# --- trust roots -----------------------------------------------------------------------------


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM text that parses; system bundles may hold a few that do not."""
    out: list[x509.Certificate] = []
    with warnings.catch_warnings():
        # Old roots with non-positive serial numbers warn; they are skipped or kept, not errors.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S):
            try:
                out.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return out


@functools.lru_cache(maxsize=1)
def _system_roots() -> tuple[x509.Certificate, ...]:
    """The system CA store, as the TLS stack uses it (falling back to certifi)."""
    paths = ssl.get_default_verify_paths()
    files = [p for p in (os.environ.get("SSL_CERT_FILE"), paths.cafile) if p and Path(p).is_file()]
    for file in files:
        certs = _pem_certificates(Path(file).read_bytes())
        if certs:
            return tuple(certs)
    if paths.capath and Path(paths.capath).is_dir():
        certs = []
        for entry in sorted(Path(paths.capath).iterdir()):
            if entry.is_file() and entry.suffix in (".pem", ".crt", ".0"):
                certs += _pem_certificates(entry.read_bytes())
        if certs:
            return tuple(certs)
    try:
        import certifi
    except ImportError:
        return ()
    return tuple(_pem_certificates(Path(certifi.where()).read_bytes()))


def _trust_roots(
    jws_roots: Sequence[x509.Certificate] | None, ca_bundle: str | os.PathLike[str] | None
) -> Sequence[x509.Certificate]:
    if jws_roots is not None:
        return list(jws_roots)
    if ca_bundle is not None:
        try:
            return _pem_certificates(Path(ca_bundle).read_bytes())
        except OSError as exc:
            raise InputError(f"cannot read the CA bundle {ca_bundle} ({exc.strerror})") from None
    return _system_roots()


# --- the release -----------------------------------------------------------------------------


def _key_vault_release(
    vault_url: str,
    target: AkvUri,
    token: str,
    *,
    credential: TokenCredential | None,
    algorithm: str,
    api_version: str,
    ca_bundle: str | os.PathLike[str] | None,
    timeout: float,
    fail: Callable[..., AkvReleaseError],
) -> str:
    """Step 4: ``KeyClient.release_key`` through the Azure SDK; the JWS Key Vault answered."""
    from azure.core.exceptions import AzureError, HttpResponseError
    from azure.keyvault.keys import KeyClient, KeyExportEncryptionAlgorithm

    owned = None
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = owned = DefaultAzureCredential()
    options: dict[str, Any] = {
        "api_version": api_version,
        "connection_timeout": timeout,
        "read_timeout": timeout,
    }
    if ca_bundle is not None:
        options["connection_verify"] = os.fspath(ca_bundle)
    try:
        with KeyClient(vault_url, credential, **options) as client:
            result = client.release_key(
                target.name,
                token,
                version=target.version,
                algorithm=KeyExportEncryptionAlgorithm(algorithm),
            )
    except HttpResponseError as exc:
        status = exc.status_code
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None) if error is not None else None
        message = getattr(error, "message", None) if error is not None else None
        detail = ": ".join(str(p) for p in (code, message) if p) or (exc.reason or "no error details")
        raise fail(
            f"Key Vault answered HTTP {status} ({_one_line(detail.replace(token, '<token>'), 400)})",
            status=status,
            code=code if isinstance(code, str) else None,
        ) from None
    except AzureError as exc:
        # Connection, TLS and credential failures; the first line of the SDK's message says which.
        text = str(exc.message or exc).strip() or type(exc).__name__
        first = text.splitlines()[0].replace(token, "<token>")
        raise fail(f"{type(exc).__name__}: {_one_line(first)}") from None
    finally:
        if owned is not None:
            owned.close()
    value = result.value
    if not isinstance(value, str):
        raise fail("Key Vault's answer has no value (the JWS)")
    return value


def release_akv(
    uri: str,
    *,
    credential: TokenCredential | None = None,
    maa_endpoint: str | None = None,
    tee: str | None = None,
    sim_dir: Path | None = None,
    algorithm: str = "RSA_AES_KEY_WRAP_256",
    vault_url_template: str = DEFAULT_VAULT_URL,
    ca_bundle: str | os.PathLike[str] | None = None,
    jws_roots: Sequence[x509.Certificate] | None = None,
    maa_jwks: bytes | None = None,
    api_version: str = DEFAULT_API_VERSION,
    key_size: int = 2048,
    timeout: float = 30.0,
    clock: Callable[[], datetime] = utcnow,
) -> ReleasedKey:
    """Release the Key Vault key ``uri`` names to this TEE (steps in the module docstring).

    Args:
        uri: ``akv://vault-name/keys/key-name[/version]``.
        credential: an ``azure-identity`` credential (anything with ``get_token``); None means
            ``DefaultAzureCredential()`` (managed identity on an Azure VM).
        maa_endpoint: the MAA instance, e.g. ``https://sharedeus2.eus2.attest.azure.net``; None
            means ``$JUPYTER_CC_MAA_ENDPOINT``. It must be the authority the key's release
            policy names.
        tee: the evidence source (``auto``, ``sim``, ``snp``, ``tdx``); None means
            ``$JUPYTER_CC_TEE``, else ``auto``.
        sim_dir: the simulated TEE's folder for ``tee="sim"``.
        algorithm: the ``enc`` Key Vault wraps with: ``RSA_AES_KEY_WRAP_256`` (default),
            ``RSA_AES_KEY_WRAP_384`` or ``CKM_RSA_AES_KEY_WRAP`` (OAEP with SHA-1).
        vault_url_template: the vault URL with ``{vault}`` for the vault name (other clouds:
            ``https://{vault}.vault.azure.cn``).
        ca_bundle: a PEM file of the CAs to trust for TLS to MAA and Key Vault and for the JWS
            signer; None means the system store.
        jws_roots: the roots for the JWS signer only, overriding ``ca_bundle``/the system store.
        maa_jwks: MAA's signing keys (the ``/certs`` document) when they are pinned; None means
            fetch them from ``{maa_endpoint}/certs`` over TLS.
        api_version: the Key Vault REST API version (7.3 or later has release).
        key_size: the ephemeral RSA wrapping key's size in bits (2048, 3072 or 4096).
        timeout: seconds for each network call.
        clock: the current time (UTC), for the token and certificate checks.

    Raises:
        InputError: the URI, the MAA endpoint or an option is malformed.
        EvidenceError: this machine could not produce evidence.
        AkvReleaseError: a step failed; the message names it (a subclass of
            ``jupyter_cc.keys.KeyReleaseError``).
    """
    target = parse_akv_uri(uri)
    shown = str(target)
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"unknown key wrapping algorithm {algorithm!r}", hint=f"use one of {', '.join(ALGORITHMS)}"
        )
    maa = _maa_endpoint(maa_endpoint)
    try:
        vault_url = vault_url_template.format(vault=target.vault).rstrip("/")
    except (KeyError, IndexError, ValueError):
        raise InputError(f"the vault URL template {vault_url_template!r} takes only {{vault}}") from None
    vault_host = urlsplit(vault_url).hostname
    if not vault_url.startswith("https://") or not vault_host:
        raise InputError(f"the vault URL {vault_url!r} is not an https URL")
    tee = tee or os.environ.get("JUPYTER_CC_TEE") or "auto"
    context = _ssl_context(ca_bundle)

    def failure(step: str) -> Callable[..., AkvReleaseError]:
        def make(why: str, **extra: Any) -> AkvReleaseError:
            return AkvReleaseError(shown, step, why, **extra)

        return make

    # (1) the ephemeral wrapping key, bound into the evidence through the runtime data
    wrapping = _WrappingKey(key_size)
    runtime_data = runtime_data_for(wrapping.jwk)
    report_data = report_data_for(runtime_data)

    # (2) fresh evidence, attested by MAA
    attest = failure("attest to MAA")
    collected, _unavailable = collect_cpu_evidence(report_data, tee=tee, sim_dir=sim_dir)
    (path, api), body = _maa_request(collected, runtime_data, sim_dir, attest)
    answer = _https(
        f"{maa}/attest/{path}?api-version={api}", body=body, context=context, timeout=timeout, fail=attest
    )
    try:
        doc = strict_json(answer.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise attest("MAA's answer is not JSON") from None
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise attest("MAA's answer has no token")

    # (3) the token, verified before it is shown to anyone
    check_token = failure("MAA token verification")
    jwks = maa_jwks
    if jwks is None:
        jwks = _https(f"{maa}/certs", body=None, context=context, timeout=timeout, fail=check_token)
    try:
        claims = verify_maa(token, jwks, at=clock(), issuer=maa)
    except CCError as exc:
        raise check_token(exc.message) from None
    why = _check_runtime_keys(claims.details, wrapping.jwk)
    if why:
        raise check_token(why)
    if claims.report_data and claims.report_data != report_data:
        raise check_token("the MAA token's report data is not this release's (it attests other evidence)")

    # (4) the release
    value = _key_vault_release(
        vault_url,
        target,
        token,
        credential=credential,
        algorithm=algorithm,
        api_version=api_version,
        ca_bundle=ca_bundle,
        timeout=timeout,
        fail=failure("Key Vault release"),
    )

    # (5) the JWS, and what it says was released
    check_jws = failure("JWS verification")
    try:
        roots = _trust_roots(jws_roots, ca_bundle)
        payload = verify_release_jws(value, vault_host=vault_host, roots=roots, at=clock())
        key = claim_path(payload, "response.key.key", _ABSENT)
        if not isinstance(key, Mapping):
            raise ValueError("the JWS payload has no response.key.key")
        kid = _check_kid(key.get("kid"), vault_host, target)
        requested = claim_path(payload, "request.enc", None)
        if requested is not None and requested != algorithm:
            raise ValueError(f"the vault says it used {requested!r}, not the {algorithm} asked for")
        key_hsm = key.get("key_hsm")
        if not isinstance(key_hsm, str):
            raise ValueError("the released key has no key_hsm")
    except ValueError as exc:
        raise check_jws(str(exc)) from None

    # (6) unwrap with the ephemeral key
    try:
        material = _released_material(
            key.get("kty"), unwrap_key_hsm(key_hsm, algorithm, wrapping.decrypt, wrapping.size)
        )
    except ValueError as exc:
        raise failure("unwrap")(str(exc)) from None
    del wrapping
    return ReleasedKey(material, key_id=kid, uri=uri, policy=POLICY_NAME)
