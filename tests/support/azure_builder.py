"""Synthetic Azure CVM evidence for tests: HCL reports, runtime JSON, TDREPORTs, TPM quotes.

Real evidence (../shared/vectors/azure) covers one SNP and one TDX HCL report. These builders
make the variations the real files cannot: other hash types and NV sizes, runtime JSON in the
other base64 alphabet, TPM quotes signed by a key the test holds, and SEV-SNP reports signed by
a throwaway VCEK/ASK/ARK chain (pinned in a test TrustStore, never a hardware root).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from jupyter_cc.attest import snp
from jupyter_cc.attest.certs import fingerprint
from jupyter_cc.attest.roots import TrustAnchor, TrustStore

HASHES: dict[int, Callable[[bytes], bytes]] = {
    1: lambda b: hashlib.sha256(b).digest(),
    2: lambda b: hashlib.sha384(b).digest(),
    3: lambda b: hashlib.sha512(b).digest(),
}
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64std(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


def int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def jwk(kid: str, key: rsa.RSAPublicKey, encode: Callable[[bytes], str] = b64url) -> dict[str, Any]:
    nums = key.public_numbers()
    ops = ["sign"] if kid == "HCLAkPub" else ["encrypt"]
    return {
        "kid": kid,
        "key_ops": ops,
        "kty": "RSA",
        "e": encode(int_bytes(nums.e)),
        "n": encode(int_bytes(nums.n)),
    }


def runtime_json(
    ak: rsa.RSAPublicKey,
    ek: rsa.RSAPublicKey | None = None,
    *,
    secure_boot: bool = True,
    user_data: bytes = bytes(64),
    encode: Callable[[bytes], str] = b64url,
) -> bytes:
    """Runtime JSON shaped like Azure's (compact, keys first)."""
    keys = [jwk("HCLAkPub", ak, encode)] + ([jwk("HCLEkPub", ek, encode)] if ek is not None else [])
    doc = {
        "keys": keys,
        "vm-configuration": {
            "console-enabled": True,
            "secure-boot": secure_boot,
            "tpm-enabled": True,
            "vmUniqueId": "00000000-0000-0000-0000-000000000000",
        },
        "user-data": user_data.hex().upper(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def hcl_report(
    hw_report: bytes,
    variable_data: bytes,
    *,
    report_type: int = 2,
    hash_type: int = 1,
    nv_size: int | None = 2600,
    bind: bool = True,
    header_version: int = 2,
) -> bytes:
    """An HCL report around ``hw_report`` (padded to 1184); ``bind`` writes hash(var data) into it."""
    hw = bytearray(hw_report.ljust(1184, b"\x00"))
    if bind:
        digest = HASHES[hash_type](variable_data)
        off = 0x50 if report_type == 2 else 0x80
        hw[off : off + len(digest)] = digest
    out = bytearray(b"HCLA")
    out += struct.pack("<4I", header_version, 0x4D4 + len(variable_data), 2, 0) + bytes(12)
    out += hw
    out += struct.pack("<5I", 20 + len(variable_data), 1, report_type, hash_type, len(variable_data))
    out += variable_data
    if nv_size is not None:
        out = out.ljust(nv_size, b"\x00")
    return bytes(out)


def td_report(
    report_data: bytes = bytes(64),
    *,
    mrtd: bytes = b"\x11" * 48,
    rtmr: Sequence[bytes] = (b"\x21" * 48, b"\x22" * 48, b"\x23" * 48, b"\x24" * 48),
) -> bytes:
    """A 1024-byte TDREPORT with the given REPORTDATA, MRTD and RTMRs (MAC not computed)."""
    out = bytearray(1024)
    out[0:4] = bytes([0x81, 0x00, 0x01, 0x00])
    out[0x80:0xC0] = report_data
    info = 512
    out[info + 16 : info + 64] = mrtd
    for i, value in enumerate(rtmr):
        out[info + 208 + 48 * i : info + 256 + 48 * i] = value
    return bytes(out)


def tpms_attest(
    nonce: bytes = b"challenge",
    *,
    pcrs: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7, 14),
    digest: bytes = b"\x9d" * 32,
    signer: bytes = b"\x00\x0b" + b"\x55" * 32,
) -> bytes:
    """A marshalled TPMS_ATTEST of type quote (big-endian, as a TPM writes it)."""
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    out = struct.pack(">IH", 0xFF544347, 0x8018)
    out += struct.pack(">H", len(signer)) + signer
    out += struct.pack(">H", len(nonce)) + nonce
    out += struct.pack(">QIIB", 0x3356D0FD, 3, 0, 1)
    out += struct.pack(">Q", 0x2020031200120003)
    out += struct.pack(">IHB", 1, 0x000B, len(bitmap)) + bytes(bitmap)
    out += struct.pack(">H", len(digest)) + digest
    return out


def tpm_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def tpmt_signature(raw: bytes, *, alg: int = 0x0014, hash_alg: int = 0x000B) -> bytes:
    return struct.pack(">HHH", alg, hash_alg, len(raw)) + raw


# --- a throwaway SEV-SNP signer ---------------------------------------------------------------


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


class SnpSigner:
    """Signs v3 Milan SEV-SNP reports with a VCEK from a test-only ARK/ASK chain."""

    TCB = bytes([3, 0, 0, 0, 0, 0, 8, 115])

    def __init__(self) -> None:
        self.chip_id = hashlib.sha512(b"azure-builder chip").digest()
        self._vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark_key = ec.generate_private_key(ec.SECP384R1())
        ask_key = ec.generate_private_key(ec.SECP384R1())

        def cert(
            cn: str, issuer: str, pub: Any, signer: Any, ca: bool, exts: Sequence[Any] = ()
        ) -> x509.Certificate:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(pub)
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - timedelta(days=365))
                .not_valid_after(NOW + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            for e in exts:
                b = b.add_extension(e, critical=False)
            return b.sign(signer, hashes.SHA384())

        amd = snp.AMD_OID
        vcek_exts = [
            _ext(f"{amd}.2", b"\x16\x08Milan-B0"),
            _ext(f"{amd}.3.1", _der_int(3)),
            _ext(f"{amd}.3.2", _der_int(0)),
            _ext(f"{amd}.3.3", _der_int(8)),
            _ext(f"{amd}.3.8", _der_int(115)),
            _ext(f"{amd}.4", self.chip_id),
        ]
        self.ark = cert("TEST-ARK", "TEST-ARK", ark_key.public_key(), ark_key, True)
        self.ask = cert("TEST-ASK", "TEST-ARK", ask_key.public_key(), ark_key, True)
        self.vcek = cert("SEV-VCEK", "TEST-ASK", self._vcek_key.public_key(), ask_key, False, vcek_exts)
        self.chain = [self.ask, self.ark]
        self._ark_key = ark_key
        self.roots = TrustStore.of(
            TrustAnchor(name="TEST-ARK", fingerprint=fingerprint(self.ark), product="Milan")
        )

    def crl(self, revoked: Sequence[int] = (), *, next_update: datetime | None = None) -> bytes:
        """A DER CRL issued by the test ARK (as AMD KDS's ``/vcek/v1/{product}/crl`` is)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(NOW - timedelta(days=30))
            .next_update(next_update or NOW + timedelta(days=7))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
            )
        return builder.sign(self._ark_key, hashes.SHA384()).public_bytes(Encoding.DER)

    def report(self, report_data: bytes = bytes(64), *, measurement: bytes = b"\x42" * 48) -> bytes:
        body = bytearray(snp.REPORT_SIZE)
        struct.pack_into("<IIQ", body, 0, 3, 0, (1 << 17) | (1 << 16))
        struct.pack_into("<II", body, 0x30, 0, 1)
        body[0x38:0x40] = self.TCB
        body[0x50:0x90] = report_data.ljust(64, b"\x00")
        body[0x90:0xC0] = measurement
        body[0x180:0x188] = self.TCB
        body[0x188:0x18B] = bytes([0x19, 0x01, 0x01])
        body[0x1A0:0x1E0] = self.chip_id
        body[0x1E0:0x1E8] = self.TCB
        body[0x1F0:0x1F8] = self.TCB
        return self.sign(bytes(body))

    def sign(self, report: bytes) -> bytes:
        body = bytearray(report)
        body[0x2A0:] = bytes(len(body) - 0x2A0)
        der = self._vcek_key.sign(bytes(body[: snp.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        body[0x2A0:0x2E8] = r.to_bytes(72, "little")
        body[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(body)
