"""Forged Intel collateral: the real TCB info re-signed by a self-made "Intel SGX TCB Signing"."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from jupyter_cc.attest.tdx.collateral import parse_tcb_info

__all__ = ["resign_tcb_info"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(signer, hashes.SHA256())
    )


def resign_tcb_info(raw: bytes) -> tuple[bytes, bytes]:
    """(the TCB info re-signed, its issuer chain PEM) by a self-made root with Intel's names."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Intel SGX Root CA", root_key, "Intel SGX Root CA", root_key, True)
    leaf = _cert("Intel SGX TCB Signing", leaf_key, "Intel SGX Root CA", root_key, False)
    info = parse_tcb_info(raw)
    r, s = decode_dss_signature(leaf_key.sign(info.signed_bytes, ec.ECDSA(hashes.SHA256())))
    forged = raw.replace(
        info.signature.hex().encode(), (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex().encode()
    )
    if forged == raw:
        forged = raw.replace(
            info.signature.hex().upper().encode(),
            (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex().encode(),
        )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, root))
    return forged, pem
