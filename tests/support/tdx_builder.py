"""Mint synthetic TDX quotes and PCS collateral, signed by a test PKI with Intel-like names.

The real vector covers one v4 quote; this builder covers the rest (v5 with TDX 1.0 and 1.5
bodies, chosen TCB values, upper-case FMSPC in collateral, revoked certificates) with the same
byte layout, so parse and verify run the same code as for real evidence. Nothing here is trusted
by default: tests pass ``TrustStore.of(pki.anchor)`` to accept it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from jupyter_cc.attest.certs import fingerprint
from jupyter_cc.attest.roots import TrustAnchor

NOT_BEFORE = datetime(2020, 1, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=timezone.utc)
SGX_OID = "1.2.840.113741.1.13.1"
QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")


# --- DER -----------------------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def der_int(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def pair(oid: str, value: bytes) -> bytes:
    return tlv(0x30, der_oid(oid) + value)


def sgx_extension(*, fmspc: bytes, pce_id: bytes, cpu_svn_components: Sequence[int], pce_svn: int) -> bytes:
    tcb = b"".join(pair(f"{SGX_OID}.2.{i + 1}", der_int(v)) for i, v in enumerate(cpu_svn_components))
    tcb += pair(f"{SGX_OID}.2.17", der_int(pce_svn))
    tcb += pair(f"{SGX_OID}.2.18", tlv(0x04, bytes(cpu_svn_components)))
    return tlv(
        0x30,
        pair(f"{SGX_OID}.1", tlv(0x04, bytes(range(16))))
        + pair(f"{SGX_OID}.2", tlv(0x30, tcb))
        + pair(f"{SGX_OID}.3", tlv(0x04, pce_id))
        + pair(f"{SGX_OID}.4", tlv(0x04, fmspc))
        + pair(f"{SGX_OID}.5", tlv(0x0A, b"\x00")),
    )


# --- PKI -----------------------------------------------------------------------------------------


def intel_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


_serial = iter(range(1000, 10**6))


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: Sequence[x509.ExtensionType] = (),
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(intel_name(cn))
        .issuer_name(intel_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(next(_serial))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class SyntheticPki:
    """A root, Platform CA, PCK leaf and TCB signing certificate, all P-256, Intel names."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    platform_key: ec.EllipticCurvePrivateKey
    platform: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    signing: x509.Certificate
    fmspc: bytes
    pce_id: bytes

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor(name="Test Intel SGX Root CA", fingerprint=fingerprint(self.root))

    def pck_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.pck, self.platform, self.root))

    def collateral_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.signing, self.root))

    def crl(self, issuer: str, revoked: Sequence[int] = (), *, next_update: datetime = NOT_AFTER) -> bytes:
        key, cert = (self.root_key, self.root) if issuer == "root" else (self.platform_key, self.platform)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(NOT_BEFORE)
            .next_update(next_update)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOT_BEFORE + timedelta(days=1))
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def make_pki(
    *,
    fmspc: bytes = bytes.fromhex("00806f050000"),
    pce_id: bytes = b"\x00\x00",
    cpu_svn_components: Sequence[int] = (5, 5, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0),
    pce_svn: int = 11,
    root_cn: str = "Intel SGX Root CA",
) -> SyntheticPki:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    root = make_cert(root_cn, keys[0], root_cn, keys[0], ca=True)
    platform = make_cert("Intel SGX PCK Platform CA", keys[1], root_cn, keys[0], ca=True)
    ext = sgx_extension(fmspc=fmspc, pce_id=pce_id, cpu_svn_components=cpu_svn_components, pce_svn=pce_svn)
    pck = make_cert(
        "Intel SGX PCK Certificate",
        keys[2],
        "Intel SGX PCK Platform CA",
        keys[1],
        ca=False,
        extensions=[x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), ext)],
    )
    signing = make_cert("Intel SGX TCB Signing", keys[3], root_cn, keys[0], ca=False)
    return SyntheticPki(keys[0], root, keys[1], platform, keys[2], pck, keys[3], signing, fmspc, pce_id)


# --- quotes --------------------------------------------------------------------------------------


def raw_sig(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class QuoteSpec:
    version: int = 4
    body_type: int = 2
    tee_tcb_svn: bytes = bytes([3, 0, 5]) + bytes(13)
    mrsignerseam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    td_attributes: bytes = bytes.fromhex("0000001000000000")
    xfam: bytes = bytes.fromhex("e71a060000000000")
    mrtd: bytes = bytes(range(48))
    rtmr: tuple[bytes, ...] = tuple(bytes([i + 1]) * 48 for i in range(4))
    report_data: bytes = bytes(range(64))
    tee_tcb_svn2: bytes = bytes([4, 0, 5]) + bytes(13)
    mrservicetd: bytes = b"\x5a" * 48
    qe_isvsvn: int = 4
    qe_isvprodid: int = 2
    qe_mrsigner: bytes = QE_MRSIGNER
    qe_attributes: bytes = QE_ATTRIBUTES
    qe_auth_data: bytes = bytes(range(32))
    extra: bytes = b""
    nul_terminate: bool = True


def build_body(spec: QuoteSpec) -> bytes:
    body = (
        spec.tee_tcb_svn
        + bytes(48)  # MRSEAM
        + spec.mrsignerseam
        + spec.seam_attributes
        + spec.td_attributes
        + spec.xfam
        + spec.mrtd
        + b"\x11" * 48  # MRCONFIGID
        + b"\x22" * 48  # MROWNER
        + b"\x33" * 48  # MROWNERCONFIG
        + b"".join(spec.rtmr)
        + spec.report_data
    )
    if spec.body_type == 3:
        body += spec.tee_tcb_svn2 + spec.mrservicetd
    return body


def build_quote(pki: SyntheticPki, spec: QuoteSpec | None = None) -> bytes:
    """A quote whose every signature and binding verifies with ``pki``."""
    spec = spec or QuoteSpec()
    attestation = ec.generate_private_key(ec.SECP256R1())
    nums = attestation.public_key().public_numbers()
    att_pub = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    header = (
        struct.pack("<HHIHH", spec.version, 2, 0x81, 0, 0)
        + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
        + bytes(20)
    )
    body = build_body(spec)
    if spec.version == 5:
        header += struct.pack("<HI", spec.body_type, len(body))
    signed = header + body
    qe = bytearray(384)
    qe[48:64] = spec.qe_attributes
    qe[128:160] = spec.qe_mrsigner
    qe[256:258] = spec.qe_isvprodid.to_bytes(2, "little")
    qe[258:260] = spec.qe_isvsvn.to_bytes(2, "little")
    qe[320:352] = hashlib.sha256(att_pub + spec.qe_auth_data).digest()
    pem = pki.pck_chain_pem() + (b"\x00" if spec.nul_terminate else b"")
    cert_data = (
        bytes(qe)
        + raw_sig(pki.pck_key, bytes(qe))
        + struct.pack("<H", len(spec.qe_auth_data))
        + spec.qe_auth_data
        + struct.pack("<HI", 5, len(pem))
        + pem
    )
    sig_data = raw_sig(attestation, signed) + att_pub + struct.pack("<HI", 6, len(cert_data)) + cert_data
    return signed + struct.pack("<I", len(sig_data)) + sig_data + spec.extra


# --- collateral ----------------------------------------------------------------------------------


def signed_document(key: ec.EllipticCurvePrivateKey, name: str, body: dict[str, Any]) -> bytes:
    text = json.dumps(body, separators=(",", ":")).encode()
    return b'{"%s":%s,"signature":"%s"}' % (name.encode(), text, raw_sig(key, text).hex().encode())


def level(
    status: str,
    *,
    sgx: Sequence[int] = (5, 5, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0),
    pcesvn: int = 11,
    tdx: Sequence[int] = (3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    advisories: Sequence[str] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tcb": {
            "sgxtcbcomponents": [{"svn": v} for v in sgx],
            "pcesvn": pcesvn,
            "tdxtcbcomponents": [{"svn": v} for v in tdx],
        },
        "tcbDate": "2023-02-15T00:00:00Z",
        "tcbStatus": status,
    }
    if advisories:
        out["advisoryIDs"] = list(advisories)
    return out


def tcb_info(
    pki: SyntheticPki,
    *,
    fmspc: str | None = None,
    levels: Sequence[dict[str, Any]] | None = None,
    module_identities: Sequence[dict[str, Any]] | None = None,
    next_update: str = "2039-01-01T00:00:00Z",
    version: int = 3,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "id": "TDX",
        "version": version,
        "issueDate": "2020-06-01T00:00:00Z",
        "nextUpdate": next_update,
        "fmspc": fmspc if fmspc is not None else pki.fmspc.hex(),
        "pceId": pki.pce_id.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
    }
    if module_identities is not None:
        body["tdxModuleIdentities"] = list(module_identities)
    body["tcbLevels"] = list(levels) if levels is not None else [level("UpToDate")]
    return signed_document(key or pki.signing_key, "tcbInfo", body)


def qe_identity(
    pki: SyntheticPki,
    *,
    levels: Sequence[tuple[int, str]] = ((4, "UpToDate"), (2, "OutOfDate")),
    next_update: str = "2039-01-01T00:00:00Z",
) -> bytes:
    body = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": "2020-06-01T00:00:00Z",
        "nextUpdate": next_update,
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": 2,
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2023-02-15T00:00:00Z", "tcbStatus": status}
            for svn, status in levels
        ],
    }
    return signed_document(pki.signing_key, "enclaveIdentity", body)
