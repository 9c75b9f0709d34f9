"""A local server answering as trustee's KBS 0.4.0 does, for testing jupyter-cc's client against it.

Written from trustee's public behaviour (``kbs/src/api_server.rs``, ``attestation/backend.rs``,
``error.rs``, ``jwe``), not its code:

* ``POST /kbs/v0/auth``: the version must be exactly 0.4.0; answers ``Set-Cookie:
  kbs-session-id=<uuid>`` and ``{"nonce": <base64 32 bytes>, "extra-params": ""}`` (the generic
  challenge: no ``selected-hash-algorithm``, so the client uses sha384);
* ``POST /kbs/v0/attest``: cookie and session required, the nonce must match, the evidence is
  checked by a sample verifier (``{"svn", "report_data"}`` binding the primary runtime data);
  answers ``{"token": <JWT>}``;
* ``GET /kbs/v0/resource/<repo>/<type>/<tag>``: the session's token, the resource policy
  (``deny`` names resources it refuses), then the JWE to the TEE key: header ``{"alg", "enc",
  "epk": {"crv", "kty", "x", "y"}}`` (``epk_order`` changes that order, ``aad="resorted"`` makes
  the GCM additional data the sorted re-serialization instead of the sent string), no ``aad``;
* errors: ErrorInformation JSON, 401 for everything but ``PolicyDeny`` (403) and
  ``InvalidRequestPath`` / ``PluginNotFound`` (404); a missing resource is 401
  ``PluginInternalError``, as trustee's resource plugin answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

__all__ = ["FakeTrustee", "serve_trustee"]

PREFIX = "https://github.com/confidential-containers/kbs/errors/"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jcs(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class FakeTrustee:
    """What the fake KBS holds and how it answers (tests change the knobs)."""

    resources: dict[str, bytes] = field(default_factory=dict)
    deny: set[str] = field(default_factory=set)
    epk_order: tuple[str, ...] = ("crv", "kty", "x", "y")
    aad: str = "sent"  # "sent": ASCII(protected); "resorted": the sorted re-serialization
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def jwe(self, jwk: dict[str, Any], payload: bytes) -> dict[str, str]:
        cek = os.urandom(32)
        if jwk["kty"] == "EC":
            peer = ec.EllipticCurvePublicNumbers(
                int.from_bytes(_unb64u(jwk["x"]), "big"),
                int.from_bytes(_unb64u(jwk["y"]), "big"),
                ec.SECP256R1(),
            ).public_key()
            eph = ec.generate_private_key(ec.SECP256R1())
            alg = b"ECDH-ES+A256KW"
            other = len(alg).to_bytes(4, "big") + alg + bytes(8) + (256).to_bytes(4, "big")
            kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(eph.exchange(ec.ECDH(), peer))
            encrypted_key = aes_key_wrap(kek, cek)
            n = eph.public_key().public_numbers()
            values = {
                "crv": "P-256",
                "kty": "EC",
                "x": _b64u(n.x.to_bytes(32, "big")),
                "y": _b64u(n.y.to_bytes(32, "big")),
            }
            header: dict[str, Any] = {
                "alg": alg.decode(),
                "enc": "A256GCM",
                "epk": {k: values[k] for k in self.epk_order},
            }
        else:
            public = rsa.RSAPublicNumbers(
                int.from_bytes(_unb64u(jwk["e"]), "big"), int.from_bytes(_unb64u(jwk["n"]), "big")
            ).public_key()
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            encrypted_key = public.encrypt(cek, oaep)
            header = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
        protected = _b64u(json.dumps(header, separators=(",", ":")).encode())
        if self.aad == "resorted":
            aad = _b64u(json.dumps(header, sort_keys=True, separators=(",", ":")).encode()).encode()
        else:
            aad = protected.encode()
        iv = os.urandom(12)
        sealed = AESGCM(cek).encrypt(iv, payload, aad)
        return {
            "protected": protected,
            "encrypted_key": _b64u(encrypted_key),
            "iv": _b64u(iv),
            "ciphertext": _b64u(sealed[:-16]),
            "tag": _b64u(sealed[-16:]),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def kbs(self) -> FakeTrustee:
        return self.server.kbs

    def _answer(self, status: int, doc: Any, cookie: str | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", f"kbs-session-id={cookie}; Path=/kbs; Max-Age=300")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, kind: str, detail: str) -> None:
        self._answer(status, {"type": PREFIX + kind, "detail": detail})

    def _cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "kbs-session-id":
                return value
        return None

    def _body(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        doc = json.loads(raw)
        self.kbs.requests.append((self.command, self.path, doc))
        return doc

    def do_POST(self) -> None:
        if self.path == "/kbs/v0/auth":
            self._auth()
        elif self.path == "/kbs/v0/attest":
            self._attest()
        else:
            self._error(404, "PluginNotFound", f"Plugin {self.path.split('/')[3]} not found")

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if len(parts) != 7 or parts[:4] != ["", "kbs", "v0", "resource"]:
            self._error(404, "PluginNotFound", f"Plugin {parts[3] if len(parts) > 3 else ''} not found")
            return
        self._resource("/".join(parts[4:]))

    def _auth(self) -> None:
        try:
            request = self._body()
            if request["version"] != "0.4.0":
                mismatch = f"expect =0.4.0 while the request is {request['version']}"
                raise ValueError(f"KBS Client Protocol Version Mismatch: {mismatch}")
            assert isinstance(request["tee"], str)
        except (ValueError, KeyError, AssertionError) as exc:
            self._error(401, "AttestationError", f"Attestation error: RCAR handshake Auth failed: {exc}")
            return
        sid = str(uuid.uuid4())
        nonce = base64.b64encode(os.urandom(32)).decode()
        self.kbs.sessions[sid] = {"tee": request["tee"], "nonce": nonce, "token": None, "pubkey": None}
        self._answer(200, {"nonce": nonce, "extra-params": ""}, cookie=sid)

    def _attest(self) -> None:
        try:
            session = self.kbs.sessions[self._cookie() or ""]
            att = self._body()
            runtime = att["runtime-data"]
            if runtime["nonce"] != session["nonce"]:
                raise ValueError("nonce mismatch")
            composite = att["tee-evidence"]
            doc = {
                "tee-pubkey": runtime["tee-pubkey"],
                "nonce": runtime["nonce"],
                "additional-evidence": composite["additional_evidence"],
            }
            expected = hashlib.sha384(_jcs(doc)).digest()
            evidence = composite["primary_evidence"]
            if session["tee"] != "sample" or base64.b64decode(evidence["report_data"]) != expected:
                raise ValueError("verify TEE evidence failed")
        except (ValueError, KeyError, TypeError):
            self._error(401, "AttestationError", "Attestation error: RCAR handshake Attest failed")
            return
        session["pubkey"] = runtime["tee-pubkey"]
        session["token"] = (
            _b64u(b'{"alg":"ES256"}') + "." + _b64u(json.dumps({"submods": {}}).encode()) + ".sig"
        )
        self._answer(200, {"token": session["token"]}, cookie=self._cookie())

    def _resource(self, rid: str) -> None:
        session = self.kbs.sessions.get(self._cookie() or "")
        if session is None or session["token"] is None:
            self._error(401, "TokenNotFound", "Attestation Token not found")
            return
        if rid in self.kbs.deny:
            self._error(403, "PolicyDeny", "Access denied by policy")
            return
        if rid not in self.kbs.resources:
            self._error(401, "PluginInternalError", "Plugin internal error")
            return
        self._answer(200, self.kbs.jwe(session["pubkey"], self.kbs.resources[rid]))


class _Server(ThreadingHTTPServer):
    kbs: FakeTrustee
    daemon_threads = True


@contextmanager
def serve_trustee(kbs: FakeTrustee) -> Iterator[int]:
    """Serve ``kbs`` on a free loopback port for the ``with`` block; yields the port."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.kbs = kbs
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
