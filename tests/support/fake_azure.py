"""Local HTTPS stand-ins for Microsoft Azure Attestation and Azure Key Vault (test support).

Azure is not reachable from the tests, so the ``akv://`` release is exercised against servers
on 127.0.0.1 that follow the documented REST contracts (docs/attestation-formats.md 3.2, 3.3
and 4), while the client runs its production code path unchanged:

* :class:`Pki` makes a throwaway CA, the servers' TLS certificates and the vault's JWS signing
  certificate; the client trusts it through ``ca_bundle`` as it would trust the system store.
* :class:`FakeMaa` answers ``POST /attest/SevSnpVm?api-version=2022-08-01`` after verifying the
  simulated SNP report with jupyter_cc's own SNP verifier (chain pinned to the simulator's ARK,
  the way MAA pins AMD's) and checking ``SHA-256(runtimeData) == REPORT_DATA[0:32]``; it signs
  an RS256 token with its own key, echoes the runtime data as ``x-ms-runtime`` and serves its
  JWKS at ``/certs``.
* :class:`FakeKeyVault` answers ``POST /keys/{name}[/{version}]/release?api-version=7.x``: the
  first unauthenticated request gets the 401 bearer challenge real Key Vault sends (which the
  SDK's challenge policy parses), the bearer token is checked, the MAA token is verified and
  the key's release policy evaluated with :mod:`jupyter_cc.keys.skr_policy`; a release is a JWS
  signed by a certificate chaining to the CA, wrapping the key to the first RSA key in the
  token's ``x-ms-runtime.keys`` (RSA-OAEP, then AES key wrap with padding).
* :func:`route_azure_names` makes ``*.vault.azure.net`` and the MAA host resolve to those
  servers (by patching ``socket.getaddrinfo`` in the test process only), so the client uses the
  real URL forms, the SDK's challenge-resource check included.

Each server records what it saw, has knobs for the failure cases, bounds request bodies, and
stops itself after ``lifetime_s`` even if a test forgets to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jws
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from jupyter_cc.attest import snp
from jupyter_cc.attest.maa import claim_path, verify_maa
from jupyter_cc.attest.sim import SimulatedTee
from jupyter_cc.errors import CCError
from jupyter_cc.keys import skr_policy

MAA_HOST = "sharedeus2.eus2.attest.azure.net"
VAULT_DOMAIN = "vault.azure.net"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BEARER = "fake-entra-access-token"
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
)
MAX_BODY = 1024 * 1024
OAEP_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now() -> datetime:
    return datetime.now(timezone.utc)


# --- certificates ----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyter-cc tests"),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, start: datetime, *, days: int
) -> x509.CertificateBuilder:
    """A certificate for ``key`` valid ``days`` days from ``start``, before its extensions."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension allowing what is named and nothing else."""
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


@dataclass
class Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def der_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode("ascii")

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert = folder / f"{stem}.pem"
        key = folder / f"{stem}.key"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key


class Pki:
    """A throwaway CA that issues TLS server and JWS signing certificates (WebPKI profile)."""

    def __init__(self, name: str = "jupyter-cc test CA") -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        start = now() - timedelta(hours=1)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(_name(name), _name(name), key, start, days=2)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        self.ca = Issued(cert, key)

    def issue(self, *dns_names: str, cn: str | None = None) -> Issued:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        start = now() - timedelta(hours=1)
        cert = (
            _builder(_name(cn or dns_names[0]), self.ca.cert.subject, key, start, days=1)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage("digital_signature", "key_encipherment"), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()), critical=False
            )
            .sign(self.ca.key, hashes.SHA256())
        )
        return Issued(cert, key)

    def write_ca(self, folder: Path) -> Path:
        path = folder / "test-ca.pem"
        path.write_bytes(self.ca.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def server_context(self, issued: Issued, folder: Path, stem: str) -> ssl.SSLContext:
        cert, key = issued.write(folder, stem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        return context


# --- the HTTPS server ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str, str, Message, bytes], Reply]


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, context: ssl.SSLContext, handle: Handler) -> None:
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.context = context
        self.handle_request_ = handle

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.settimeout(10)
        try:
            return self.context.wrap_socket(sock, server_side=True), address
        except (OSError, ssl.SSLError):
            sock.close()
            raise


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Reply(413, {"error": {"code": "RequestTooLarge", "message": "body too large"}}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.server.handle_request_(self.command, self.path, self.headers, body)
        except Exception as exc:  # a bug in the fake: answer 500 so the test fails loudly
            reply = Reply(500, {"error": {"code": "FakeServerBug", "message": repr(exc)}})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


class _Service:
    """A TLS server on 127.0.0.1 running in a thread; stops on :meth:`stop` or after lifetime_s."""

    def __init__(self, context: ssl.SSLContext, *, lifetime_s: float = 120.0) -> None:
        self._server = _TlsServer(context, self.handle)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()
        self._timer.start()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def handle(self, method: str, path: str, headers: Message, body: bytes) -> Reply:
        raise NotImplementedError


def _error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, dict(headers))


# --- MAA -------------------------------------------------------------------------------------


class FakeMaa(_Service):
    """Microsoft Azure Attestation for simulated SNP evidence (SevSnpVm platform attestation).

    Knobs: ``lifetime`` (token validity; negative makes expired tokens), ``echo_keys`` (False
    replaces the runtime keys with a stranger's key), ``sign_key`` (sign with a key not in the
    JWKS), ``extra_claims`` (merged into every token).
    """

    def __init__(self, pki: Pki, folder: Path, sim_dir: Path, *, host: str = MAA_HOST) -> None:
        super().__init__(pki.server_context(pki.issue(host), folder, "maa-tls"))
        self.host = host
        self.issuer = f"https://{host}"
        self.sim_dir = sim_dir
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = b64url(hashlib.sha256(b"fake maa " + os.urandom(8)).digest())
        self.lifetime = timedelta(hours=8)
        self.echo_keys = True
        self.sign_key: rsa.RSAPrivateKey | None = None
        self.extra_claims: dict[str, Any] = {}
        self.seen: list[tuple[str, str]] = []
        self.attest_bodies: list[dict[str, Any]] = []
        public = RSAKey.import_key(self._key.public_key()).as_dict(private=False)
        self.jwks = json.dumps(
            {"keys": [{"kid": self.kid, "kty": "RSA", "n": public["n"], "e": public["e"]}]}
        ).encode()

    def handle(self, method: str, path: str, headers: Message, body: bytes) -> Reply:
        url = urlsplit(path)
        self.seen.append((method, url.path))
        if method == "GET" and url.path == "/certs":
            return Reply(200, json.loads(self.jwks))
        if method != "POST" or url.path not in ("/attest/SevSnpVm", "/attest/TdxVm"):
            return _error(404, "NotFound", f"no route {method} {url.path}")
        if parse_qs(url.query).get("api-version") != ["2022-08-01"] or url.path != "/attest/SevSnpVm":
            return _error(
                400, "InvalidParameter", "this fake attests SevSnpVm with api-version 2022-08-01 only"
            )
        try:
            request = json.loads(body)
            self.attest_bodies.append(request)
            return Reply(200, {"token": self._attest(request)})
        except (CCError, KeyError, TypeError, ValueError) as exc:
            return _error(400, "InvalidParameter", f"attestation failed: {exc}")

    def _attest(self, request: Mapping[str, Any]) -> str:
        runtime = request["runtimeData"]
        if runtime["dataType"] != "JSON":
            raise ValueError("runtimeData.dataType must be JSON")
        runtime_bytes = b64url_decode(runtime["data"])
        runtime_json = json.loads(runtime_bytes)
        inner = json.loads(b64url_decode(request["report"]))
        report = b64url_decode(inner["SnpReport"])
        certs = x509.load_pem_x509_certificates(b64url_decode(inner["VcekCertChain"]))
        tee = SimulatedTee.load(self.sim_dir)
        claims = snp.verify_report(
            snp.parse_report(report), certs[0], certs[1:], at=now(), roots=tee.trust_store(), kind="sim-snp"
        )
        if claims.report_data[:32] != hashlib.sha256(runtime_bytes).digest():
            raise ValueError("REPORT_DATA[0:32] is not SHA-256 of the runtime data")
        if not self.echo_keys:
            stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
            jwk = RSAKey.import_key(stranger).as_dict(private=False)
            runtime_json = {"keys": [{"kid": "stranger", "kty": "RSA", "n": jwk["n"], "e": jwk["e"]}]}
        issued = int(now().timestamp())
        payload = {
            "iss": self.issuer,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(self.lifetime.total_seconds()),
            "jti": secrets.token_hex(32),
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "x-ms-policy-hash": b64url(hashlib.sha256(b"default policy").digest()),
            "x-ms-runtime": runtime_json,
            "x-ms-sevsnpvm-is-debuggable": claims.debug,
            "x-ms-sevsnpvm-launchmeasurement": claims.details["measurement"],
            "x-ms-sevsnpvm-hostdata": claims.details["host_data"],
            "x-ms-sevsnpvm-reportdata": claims.report_data.hex(),
            "x-ms-sevsnpvm-vmpl": claims.details["vmpl"],
            "x-ms-sevsnpvm-guestsvn": claims.details["guest_svn"],
            **self.extra_claims,
        }
        header = {"alg": "RS256", "jku": f"{self.issuer}/certs", "kid": self.kid, "typ": "JWT"}
        key = RSAKey.import_key(self.sign_key or self._key)
        return jws.serialize_compact(header, json.dumps(payload).encode(), key, algorithms=["RS256"])


# --- Key Vault -------------------------------------------------------------------------------


@dataclass
class VaultKey:
    material: bytes
    kty: str
    policy: bytes
    version: str
    exportable: bool = True


class FakeKeyVault(_Service):
    """Azure Key Vault's release operation (``POST /keys/{name}[/{version}]/release``).

    Knobs: ``tamper_signature`` (flip a signature byte), ``signer`` (sign the JWS with another
    certificate), ``oaep_hash`` (wrap the KEK with another hash than the ``enc`` names).
    """

    def __init__(self, pki: Pki, folder: Path, maa_jwks: Callable[[], bytes]) -> None:
        super().__init__(pki.server_context(pki.issue(f"*.{VAULT_DOMAIN}"), folder, "vault-tls"))
        self.pki = pki
        self.maa_jwks = maa_jwks
        self.signer: Issued = pki.issue(f"*.{VAULT_DOMAIN}", cn="Key Vault release signer")
        self.chain: list[x509.Certificate] = [self.signer.cert, pki.ca.cert]
        self.keys: dict[str, list[VaultKey]] = {}
        self.tamper_signature = False
        self.oaep_hash: Callable[[], hashes.HashAlgorithm] | None = None
        self.seen: list[dict[str, Any]] = []

    def add_key(self, name: str, material: bytes, policy: Mapping[str, Any], *, kty: str = "oct-HSM") -> str:
        version = secrets.token_hex(16)
        data = json.dumps(policy).encode()
        self.keys.setdefault(name.lower(), []).append(VaultKey(material, kty, data, version))
        return version

    def handle(self, method: str, path: str, headers: Message, body: bytes) -> Reply:
        url = urlsplit(path)
        auth = headers.get("Authorization")
        record: dict[str, Any] = {"method": method, "path": url.path, "authorization": auth, "body": body}
        self.seen.append(record)
        reply = self._release(method, url.path, url.query, headers, auth, body)
        record["status"] = reply.status
        return reply

    def _release(
        self, method: str, path: str, query: str, headers: Message, auth: str | None, body: bytes
    ) -> Reply:
        segments = path.split("/")
        if (
            method != "POST"
            or len(segments) not in (4, 5)
            or segments[1] != "keys"
            or segments[-1] != "release"
        ):
            return _error(404, "NotFound", f"no route {method} {path}")
        api = parse_qs(query).get("api-version", [""])[0]
        if api not in ("7.3", "7.4", "7.5", "7.6"):
            return _error(400, "BadParameter", "The release operation needs api-version 7.3 or later.")
        if auth is None:
            return _error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                **{"WWW-Authenticate": CHALLENGE},
            )
        if auth != f"Bearer {BEARER}":
            return _error(401, "Unauthorized", "AKV10032: Invalid issuer.", **{"WWW-Authenticate": CHALLENGE})
        name = segments[2]
        versions = self.keys.get(name.lower())
        # The SDK sends /keys/{name}//release (an empty version) for the latest version.
        wanted = segments[3] if len(segments) == 5 and segments[3] else None
        key = None
        if versions:
            key = versions[-1] if wanted is None else next((k for k in versions if k.version == wanted), None)
        if key is None:
            return _error(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        try:
            request = json.loads(body)
            target = request["target"]
            enc = request.get("enc", "RSA_AES_KEY_WRAP_256")
        except (ValueError, KeyError, TypeError):
            return _error(400, "BadParameter", "The request body is not a release request.")
        if enc not in OAEP_HASHES:
            return _error(400, "BadParameter", f"Unsupported enc {enc!r}.")
        try:
            verify_maa(target, self.maa_jwks(), at=now())
        except CCError as exc:
            return _error(
                400, "BadParameter", f"Target environment attestation statement cannot be verified: {exc}"
            )
        claims = json.loads(b64url_decode(target.split(".")[1]))
        decision = skr_policy.evaluate(skr_policy.parse_release_policy(key.policy), claims)
        if not decision.allowed:
            return _error(
                403,
                "Forbidden",
                "Target environment attestation statement does not satisfy the key release policy: "
                f"{decision.reason}.",
            )
        wrap_to = next(
            (
                k
                for k in claim_path(claims, "x-ms-runtime.keys", [])
                if isinstance(k, dict) and k.get("kty") == "RSA"
            ),
            None,
        )
        if wrap_to is None:
            return _error(400, "BadParameter", "The attestation token carries no RSA key to wrap to.")
        host = (headers.get("Host") or "").split(":")[0]
        kid = f"https://{host}/keys/{name}/{key.version}"
        return Reply(200, {"value": self._jws(kid, key, enc, wrap_to, api)})

    def _jws(self, kid: str, key: VaultKey, enc: str, wrap_to: Mapping[str, Any], api: str) -> str:
        n, e = (int.from_bytes(b64url_decode(wrap_to[p]), "big") for p in ("n", "e"))
        public = rsa.RSAPublicNumbers(e, n).public_key()
        kek = os.urandom(32)
        oaep_hash = (self.oaep_hash or OAEP_HASHES[enc])()
        encrypted_kek = public.encrypt(
            kek, padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=None)
        )
        ciphertext = encrypted_kek + aes_key_wrap_with_padding(kek, key.material)
        key_hsm = {
            "schema_version": "1.0",
            "header": {"kid": wrap_to.get("kid"), "alg": "dir", "enc": enc},
            "ciphertext": b64url(ciphertext),
        }
        payload = {
            "request": {"api-version": api, "enc": enc, "kid": kid},
            "response": {
                "key": {
                    "key": {
                        "kid": kid,
                        "kty": key.kty,
                        "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
                        "key_hsm": b64url(json.dumps(key_hsm).encode()),
                    },
                    "attributes": {
                        "enabled": True,
                        "exportable": True,
                        "recoveryLevel": "Recoverable+Purgeable",
                    },
                    "release_policy": {
                        "contentType": "application/json; charset=utf-8",
                        "data": b64url(key.policy),
                        "immutable": False,
                    },
                }
            },
        }
        leaf_der = self.chain[0].public_bytes(serialization.Encoding.DER)
        header = {
            "alg": "RS256",
            "kid": kid,
            "x5t#S256": b64url(hashlib.sha256(leaf_der).digest()),
            "x5c": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in self.chain
            ],
        }
        registry = JWSRegistry(algorithms=["RS256"], strict_check_header=False)
        registry.max_header_length = 64 * 1024
        value = jws.serialize_compact(
            header, json.dumps(payload).encode(), RSAKey.import_key(self.signer.key), registry=registry
        )
        if self.tamper_signature:
            head, body, signature = value.split(".")
            raw = bytearray(b64url_decode(signature))
            raw[len(raw) // 2] ^= 0x01
            value = f"{head}.{body}.{b64url(bytes(raw))}"
        return value


# --- name resolution -------------------------------------------------------------------------


@contextmanager
def route_azure_names(routes: Callable[[str], int | None]) -> Iterator[None]:
    """Resolve the names ``routes`` maps (host -> local port) to 127.0.0.1 at that port.

    Only this process is affected and only while the context is open; every other name goes
    to the real resolver. Port 443 of a routed name becomes the local port, so clients use the
    production URLs (``https://<vault>.vault.azure.net``) unchanged.
    """
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        local = routes(name.lower()) if isinstance(name, str) else None
        if local is None:
            return real(host, port, family, type, proto, flags)
        if family not in (0, socket.AF_UNSPEC, socket.AF_INET):
            raise socket.gaierror(socket.EAI_FAMILY, "routed names are IPv4 only")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", local))]

    socket.getaddrinfo = fake
    try:
        yield
    finally:
        socket.getaddrinfo = real
