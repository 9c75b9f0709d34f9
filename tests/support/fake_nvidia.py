"""NVIDIA's services on loopback, and the test PKIs that let them sign: RIM service and OCSP.

The RIM service follows NVIDIA's contract (design section 12): ``GET /v1/rim/{id}`` answers
``{"id": ..., "rim": <base64 SWID tag>, "rim_format": "SWIDTAG", ...}``, 404 for an unknown
id. The OCSP responder takes ``POST /`` with a DER ``application/ocsp-request`` and answers a DER
response signed by the certificate's issuer (as NVIDIA's responder answers for its CAs).

NVIDIA's keys are not ours, so answers about real certificates cannot be made here; tests
that need a *good* OCSP answer use :class:`GpuPki` and :class:`RimPki`, synthetic look-alikes
of the GPU device chain and the RIM signing chain, whose roots the test pins.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jupyter_cc.attest.certs import fingerprint
from jupyter_cc.attest.roots import TrustAnchor, TrustStore

__all__ = [
    "CertKey",
    "FakeNvidia",
    "GpuPki",
    "RimPki",
    "make_report",
    "make_swid",
    "ocsp_answer",
    "serve_nvidia",
    "sign_swid",
    "strip_signature",
]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
DSIG = "http://www.w3.org/2000/09/xmldsig#"


@dataclass
class CertKey:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _cert(
    cn: str, issuer: CertKey | None, *, ca: bool, ocsp_signing: bool = False, serial: int | None = None
) -> CertKey:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=3650))
    )
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    signer = issuer.key if issuer else key
    return CertKey(builder.sign(signer, hashes.SHA384()), key)


@dataclass
class GpuPki:
    """Root, identity CA, BROM CA and a GH100-named leaf: the shape of the real device chain."""

    root: CertKey = field(default_factory=lambda: _cert("Test Device Identity CA", None, ca=True))
    identity: CertKey = field(init=False)
    brom: CertKey = field(init=False)
    leaf: CertKey = field(init=False)

    def __post_init__(self) -> None:
        self.identity = _cert("Test GH100 Identity", self.root, ca=True)
        self.brom = _cert("GH100 A01 GSP BROM", self.identity, ca=True)
        self.leaf = _cert("GH100 A01 GSP FMC LF", self.brom, ca=False)

    def chain(self) -> list[CertKey]:
        return [self.leaf, self.brom, self.identity, self.root]

    def chain_pem(self) -> bytes:
        return b"".join(c.pem() for c in self.chain())

    def roots(self) -> TrustStore:
        return TrustStore.of(TrustAnchor(name="test device root", fingerprint=fingerprint(self.root.cert)))


@dataclass
class RimPki:
    """Root, CA and signer: the shape of NVIDIA's RIM signing chain."""

    root: CertKey = field(default_factory=lambda: _cert("Test CoRIM signing Root CA", None, ca=True))
    ca: CertKey = field(init=False)
    signer: CertKey = field(init=False)

    def __post_init__(self) -> None:
        self.ca = _cert("Test Reference Value CA", self.root, ca=True)
        self.signer = _cert("Test RIM Signer", self.ca, ca=False)

    def chain(self) -> list[CertKey]:
        return [self.signer, self.ca, self.root]

    def roots(self) -> TrustStore:
        return TrustStore.of(TrustAnchor(name="test RIM root", fingerprint=fingerprint(self.root.cert)))


# --- reports and RIMs -------------------------------------------------------------------------


def _tlv(type_: int, value: bytes) -> bytes:
    return struct.pack("<HH", type_, len(value)) + value


def make_report(
    leaf: CertKey,
    nonce: bytes,
    blocks: Mapping[int, bytes],
    *,
    driver: str = "545.00",
    vbios: bytes = bytes.fromhex("005e009601000000"),
    ppcie: bytes | None = None,
) -> bytes:
    """An SPDM 1.1 GET_MEASUREMENTS request and MEASUREMENTS response signed by ``leaf``."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    records = b""
    for index, value in sorted(blocks.items()):
        body = bytes([0x01]) + struct.pack("<H", len(value)) + value
        records += bytes([index, 0x01]) + struct.pack("<H", len(body)) + body
    opaque = (
        _tlv(3, driver.encode() + b"\x00")
        + _tlv(6, vbios)
        + _tlv(15, b"882\x00")
        + _tlv(17, b"1010\x00")
        + _tlv(18, b"0200\x00")
        + (_tlv(21, ppcie) if ppcie is not None else b"")
    )
    response = (
        bytes([0x11, 0x60, 0x00, 0x00, len(blocks)])
        + len(records).to_bytes(3, "little")
        + records
        + bytes(32)
        + struct.pack("<H", len(opaque))
        + opaque
    )
    der_sig = leaf.key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der_sig)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def make_swid(
    version: str, measurements: Mapping[int, Sequence[bytes]], *, inactive: Sequence[int] = ()
) -> bytes:
    """An unsigned SWID tag RIM with ``measurements`` (RIM index -> accepted digests)."""
    resources = []
    for index, values in sorted(measurements.items()):
        hashes_ = " ".join(f'ns2:Hash{i}="{v.hex()}"' for i, v in enumerate(values))
        active = "False" if index in inactive else "True"
        resources.append(
            f'<ns0:Resource type="Measurement" index="{index}" active="{active}" '
            f'alternatives="{len(values)}" {hashes_} name="Measurement_{index}" size="48"/>'
        )
    return (
        '<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns0="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" name="GH100" tagId="test" version="1.0">'
        f'<ns0:Meta colloquialVersion="{version}" product="GH100"/>'
        f"<ns0:Payload>{''.join(resources)}</ns0:Payload></SoftwareIdentity>"
    ).encode()


def strip_signature(xml: bytes) -> bytes:
    """``xml`` without its enveloped ds:Signature (to re-sign a real RIM with another key)."""
    from lxml import etree

    root = etree.fromstring(xml)
    for sig in root.findall(f"{{{DSIG}}}Signature"):
        root.remove(sig)
    return bytes(etree.tostring(root))


def sign_swid(xml: bytes, chain: Sequence[CertKey]) -> bytes:
    """Sign a SWID tag as NVIDIA does: enveloped, c14n 1.1, ecdsa-sha384, SHA-384 digests."""
    from lxml import etree
    from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod, XMLSigner, methods

    signer = XMLSigner(
        method=methods.enveloped,
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    key = chain[0].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    certs = [c.pem().decode() for c in chain]
    signed = signer.sign(etree.fromstring(xml), key=key, cert=certs)
    return bytes(etree.tostring(signed))


# --- OCSP -------------------------------------------------------------------------------------


def ocsp_answer(
    cert: x509.Certificate,
    issuer: CertKey,
    *,
    revoked: bool = False,
    this_update: datetime = T0,
    next_update: datetime | None = T0 + timedelta(days=7),
    signer: CertKey | None = None,
) -> bytes:
    """A DER OCSP response about ``cert``, signed by its issuer (or ``signer``)."""
    status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer.cert,
        algorithm=hashes.SHA384(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=this_update if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    )
    by = signer or issuer
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, by.cert)
    if signer is not None:
        builder = builder.certificates([signer.cert])
    return builder.sign(by.key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


# --- the services -----------------------------------------------------------------------------


@dataclass
class FakeNvidia:
    """RIMs by id, and what the OCSP responder knows: serial -> (issuer, revoked)."""

    rims: dict[str, bytes] = field(default_factory=dict)
    issuers: dict[int, tuple[x509.Certificate, CertKey, bool]] = field(default_factory=dict)
    next_update: datetime = T0 + timedelta(days=7)
    hits: list[str] = field(default_factory=list)
    url: str = ""

    def know(self, pairs: Sequence[tuple[CertKey, CertKey]], *, revoked: Sequence[CertKey] = ()) -> None:
        """Let the responder answer about each (certificate, issuer); ``revoked`` ones as revoked."""
        bad = {c.cert.serial_number for c in revoked}
        for cert, issuer in pairs:
            self.issuers[cert.cert.serial_number] = (cert.cert, issuer, cert.cert.serial_number in bad)

    def rim_answer(self, rim_id: str) -> tuple[int, bytes]:
        self.hits.append(f"rim {rim_id}")
        if rim_id not in self.rims:
            return 404, b'{"error": "not found"}'
        doc = {"id": rim_id, "rim": base64.b64encode(self.rims[rim_id]).decode(), "rim_format": "SWIDTAG"}
        return 200, json.dumps(doc).encode()

    def ocsp_answer(self, body: bytes) -> tuple[int, bytes]:
        request = ocsp.load_der_ocsp_request(body)
        self.hits.append(f"ocsp {request.serial_number:x}")
        known = self.issuers.get(request.serial_number)
        if known is None:
            unknown = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
            return 200, unknown.public_bytes(serialization.Encoding.DER)
        cert, issuer, revoked = known
        return 200, ocsp_answer(cert, issuer, revoked=revoked, next_update=self.next_update)


def _handler(service: FakeNvidia) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            prefix = "/v1/rim/"
            if self.path.startswith(prefix):
                self._send(*service.rim_answer(self.path[len(prefix) :]), "application/json")
            else:
                self._send(404, b"", "text/plain")

        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length", "0"))
            status, body = service.ocsp_answer(self.rfile.read(size))
            self._send(status, body, "application/ocsp-response")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve_nvidia(service: FakeNvidia) -> Iterator[FakeNvidia]:
    """Both services on one loopback port: RIMs under ``url``, OCSP by POST to ``url``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


BLOCKS = {i: bytes([i]) * 48 for i in range(1, 5)}  # SPDM blocks 1-4: RIM indices 0-3


def synthetic_rims(rim: RimPki, *, vbios_version: str = "96.00.5E.00.01") -> tuple[bytes, bytes]:
    """(driver RIM, VBIOS RIM) signed by ``rim`` for :data:`BLOCKS`: VBIOS 0-1, driver 2-3."""
    vbios = make_swid(
        vbios_version, {0: [BLOCKS[1]], 1: [bytes(48), BLOCKS[2]], 2: [bytes(48)]}, inactive=[2]
    )
    driver = make_swid("545.00", {2: [BLOCKS[3]], 3: [BLOCKS[4]]})
    return sign_swid(driver, rim.chain()), sign_swid(vbios, rim.chain())


def gpu_entry(gpu: GpuPki, nonce: bytes, blocks: Mapping[int, bytes] = BLOCKS) -> dict[str, str]:
    """A bundle ``gpus`` entry: a synthetic GPU's report for ``nonce`` and its chain."""
    report = make_report(gpu.leaf, nonce, blocks)
    return {"kind": "nvidia", "report": base64.b64encode(report).decode(), "chain": gpu.chain_pem().decode()}


def ocsp_pairs(gpu: GpuPki, rim: RimPki) -> list[tuple[CertKey, CertKey]]:
    """What the verifier asks about: the device chain below its leaf, and the RIM chain."""
    return [(gpu.brom, gpu.identity), (gpu.identity, gpu.root), (rim.signer, rim.ca), (rim.ca, rim.root)]
