"""An upstream-shaped KBS 0.4.0 client, written from the public protocol description.

It builds every request the way guest-components' ``kbs_protocol`` RCAR client does (Trustee
``kbs_attestation_protocol.md``, ``kbs_types``), independently of jupyter-cc's own client, so the
broker is tested against what an upstream TEE really sends:

* bodies are serde_json's: compact, members in struct order (``Request``: version, tee,
  extra-params; ``Attestation``: init-data, runtime-data, tee-evidence; an absent ``init-data``
  is ``null``); the EC ``tee-pubkey`` is ``{"kty", "crv", "alg", "x", "y"}``;
* the cookie jar sends back ``kbs-session-id``;
* the runtime data of the primary evidence is RFC 8785 JSON of ``{"tee-pubkey", "nonce",
  "additional-evidence"}``, devices get ``{"tee-pubkey", "nonce"}``, hashed with the selected
  algorithm (sha384 when the challenge names none);
* the JWE is opened as ``kbs_types::ProtectedHeader::generate_aad`` does: the parsed header is
  re-serialized (``alg``, ``enc``, then the other members, with serde_json's map order: sorted,
  or insertion order under ``preserve_order``) and that is the AES-GCM additional data.

Attesters: ``sample`` (``{"svn", "report_data"}``) is built here; other evidence is handed in by
the test through ``evidence=``, already in its attester's shape.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

__all__ = ["ErrorInformation", "UpstreamClient", "UpstreamError", "jcs"]

PROTOCOL = "0.4.0"
HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def serde(value: Any) -> bytes:
    """serde_json::to_vec: compact, members in the order given."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def jcs(value: Any) -> bytes:
    """RFC 8785 for the ASCII strings and objects this protocol carries (keys by UTF-16 code unit)."""

    def canon(v: Any) -> str:
        if isinstance(v, dict):
            items = sorted(v.items(), key=lambda kv: kv[0].encode("utf-16-be"))
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canon(x) for k, x in items) + "}"
        if isinstance(v, list):
            return "[" + ",".join(canon(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)

    return canon(value).encode()


@dataclass
class ErrorInformation:
    """``kbs_types::ErrorInformation`` as the client got it."""

    status: int
    type: str
    detail: str


class UpstreamError(Exception):
    def __init__(self, step: str, info: ErrorInformation) -> None:
        super().__init__(f"{step}: HTTP {info.status} {info.type} {info.detail}")
        self.step = step
        self.info = info


@dataclass
class UpstreamClient:
    """One TEE key pair and cookie jar, as one ``KbsClient`` holds them."""

    port: int
    tee: str = "sample"
    hashes: list[str] = field(default_factory=lambda: ["sha256", "sha384", "sha512"])
    map_order: str = "sorted"  # how serde_json re-serializes the JWE header: sorted | insertion
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.pubkey = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": b64u(n.x.to_bytes(32, "big")),
            "y": b64u(n.y.to_bytes(32, "big")),
        }
        self.cookie: str | None = None
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.nonce = ""
        self.algorithm = "sha384"
        self.token: str | None = None

    def close(self) -> None:
        self.conn.close()

    # --- HTTP --------------------------------------------------------------------------------

    def send(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.cookie:
            headers["Cookie"] = f"kbs-session-id={self.cookie}"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        for header in resp.headers.get_all("Set-Cookie") or ():
            if header.startswith("kbs-session-id="):
                self.cookie = header.split(";")[0].split("=", 1)[1]
        return resp.status, raw, resp

    @staticmethod
    def error(status: int, raw: bytes) -> ErrorInformation:
        """What the client's ``resp.json::<ErrorInformation>()`` reads, or a failure to read it."""
        doc = json.loads(raw)  # upstream fails here on a non-JSON body (tornado's HTML 404, ...)
        assert isinstance(doc, dict) and isinstance(doc["type"], str) and isinstance(doc["detail"], str)
        return ErrorInformation(status, doc["type"], doc["detail"])

    # --- RCAR --------------------------------------------------------------------------------

    def request_body(self, version: str = PROTOCOL) -> bytes:
        return serde(
            {"version": version, "tee": self.tee, "extra-params": {"supported-hash-algorithms": self.hashes}}
        )

    def auth(self, body: bytes | None = None) -> dict[str, Any]:
        status, raw, _ = self.send("POST", "/kbs/v0/auth", body if body is not None else self.request_body())
        if status != 200:
            raise UpstreamError("auth", self.error(status, raw))
        challenge = json.loads(raw)
        self.nonce = challenge["nonce"]
        extra = challenge.get("extra-params")
        selected = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
        self.algorithm = str(selected).lower() if selected is not None else "sha384"
        assert self.algorithm in HASHES
        return challenge

    def runtime_digest(self, additional: str = "", *, nonce: str | None = None) -> bytes:
        doc = {"tee-pubkey": self.pubkey, "nonce": nonce or self.nonce, "additional-evidence": additional}
        return HASHES[self.algorithm](jcs(doc)).digest()

    def device_digest(self, *, nonce: str | None = None) -> bytes:
        return HASHES[self.algorithm](jcs({"tee-pubkey": self.pubkey, "nonce": nonce or self.nonce})).digest()

    def sample_evidence(self, report_data: bytes | None = None) -> dict[str, Any]:
        """The sample attester's evidence for the primary runtime digest."""
        data = report_data if report_data is not None else self.runtime_digest()
        return {"svn": "1", "report_data": base64.b64encode(data).decode()}

    def attestation_body(
        self,
        evidence: Any = None,
        *,
        additional: str = "",
        init_data: dict[str, str] | None = None,
        nonce: str | None = None,
    ) -> bytes:
        primary = evidence if evidence is not None else self.sample_evidence(self.runtime_digest(additional))
        return serde(
            {
                "init-data": init_data,
                "runtime-data": {"nonce": nonce or self.nonce, "tee-pubkey": self.pubkey},
                "tee-evidence": {"primary_evidence": primary, "additional_evidence": additional},
            }
        )

    def attest(self, body: bytes | None = None) -> str:
        status, raw, _ = self.send(
            "POST", "/kbs/v0/attest", body if body is not None else self.attestation_body()
        )
        if status != 200:
            raise UpstreamError("attest", self.error(status, raw))
        self.token = json.loads(raw)["token"]
        assert isinstance(self.token, str)
        return self.token

    def resource(self, rid: str) -> bytes:
        status, raw, _ = self.send("GET", f"/kbs/v0/resource/{rid}")
        if status != 200:
            raise UpstreamError("resource", self.error(status, raw))
        return self.decrypt(json.loads(raw))

    # --- the JWE, as TeeKeyPair::decrypt_response ----------------------------------------------

    def generate_aad(self, protected: str) -> bytes:
        header = json.loads(unb64u(protected))
        others = {k: v for k, v in header.items() if k not in ("alg", "enc")}
        if self.map_order == "sorted":
            others = json.loads(json.dumps(others, sort_keys=True))  # BTreeMap at every level
        doc = {"alg": header["alg"], "enc": header["enc"], **others}
        return b64u(serde(doc)).encode()

    def decrypt(self, response: dict[str, Any]) -> bytes:
        assert set(response) >= {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
        header = json.loads(unb64u(response["protected"]))
        assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM"
        epk = header["epk"]
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(unb64u(epk["x"]), "big"), int.from_bytes(unb64u(epk["y"]), "big"), ec.SECP256R1()
        ).public_key()
        z = self.key.exchange(ec.ECDH(), peer)
        alg = b"ECDH-ES+A256KW"
        other = len(alg).to_bytes(4, "big") + alg + bytes(8) + (256).to_bytes(4, "big")
        kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
        cek = aes_key_unwrap(kek, unb64u(response["encrypted_key"]))
        sealed = unb64u(response["ciphertext"]) + unb64u(response["tag"])
        try:
            return AESGCM(cek).decrypt(
                unb64u(response["iv"]), sealed, self.generate_aad(response["protected"])
            )
        except InvalidTag:
            raise AssertionError(
                f"the JWE does not open with the {self.map_order} re-serialized header"
            ) from None

    def get_resource(self, rid: str) -> bytes:
        """The whole handshake then the resource, as ``KbsClient::get_resource`` does."""
        self.auth()
        self.attest()
        return self.resource(rid)


def random_nonce() -> str:
    return base64.b64encode(os.urandom(32)).decode()
