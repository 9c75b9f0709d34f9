"""NVIDIA GPU evidence: the real H100 report and chain, and synthetic evidence built here."""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_cc.attest.certs import fingerprint
from jupyter_cc.attest.nvidia import (
    REQUEST_SIZE,
    SIGNATURE_SIZE,
    dice_fwid,
    parse_spdm_report,
    verify_nvidia,
)
from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.decoding import decode_blob
from jupyter_cc.errors import (
    BindingError,
    CCError,
    ChainError,
    FormatError,
    InputError,
    SignatureError,
)
from tests.support.tdx_builder import tlv

REPORT = "nvidia/h100.report.hex"
CHAIN = "nvidia/h100.chain.pem"
ROOT = "nvidia/device-identity-root.pem"
AT = datetime(2025, 1, 1, tzinfo=timezone.utc)
REAL_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
REAL_FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", re.S)


@dataclass(frozen=True)
class Real:
    report: bytes
    chain: bytes
    root: bytes

    @property
    def chain_without_root(self) -> bytes:
        return b"".join(PEM.findall(self.chain)[:-1])


@pytest.fixture(scope="module")
def real(read_vector: Callable[[str], bytes]) -> Real:
    return Real(
        report=decode_blob(read_vector(REPORT), what=REPORT),
        chain=read_vector(CHAIN),
        root=read_vector(ROOT),
    )


# --- the real H100 report -------------------------------------------------------------------


@pytest.mark.vectors
def test_real_report_parses(real: Real) -> None:
    report = parse_spdm_report(real.report)
    assert len(real.report) == 4117
    assert report.request[:4] == bytes.fromhex("11e001ff")
    assert report.nonce.hex() == REAL_NONCE
    assert len(report.blocks) == 64
    assert [b.index for b in report.blocks] == list(range(1, 65))
    assert all(len(b.value) == 48 and b.is_digest for b in report.blocks)
    assert report.blocks[1].value.hex().startswith("8048dfd18fe229bf")
    assert report.driver_version == "550.90.07"
    assert report.vbios_version == "96.00.9f.00.01"
    assert report.fwid is not None
    assert report.fwid.hex() == REAL_FWID
    assert report.signature_offset == len(report.response) - SIGNATURE_SIZE
    assert report.trailing == 0


@pytest.mark.vectors
def test_real_report_verifies_to_the_nvidia_root(real: Real) -> None:
    claims = verify_nvidia(real.report, real.chain, at=AT)
    assert claims.kind == "nvidia"
    # Without NVIDIA's RIMs the devtools (debug) state cannot be excluded: claimed, fail closed.
    assert claims.debug is True and claims.get("rim") == "unchecked"
    assert claims.simulated is False
    assert claims.report_data.hex() == REAL_NONCE
    details = claims.to_json()
    assert details["measurements"] == 64
    assert details["fwid"] == REAL_FWID
    assert details["nonce"] == REAL_NONCE
    assert details["driver_version"] == "550.90.07"
    assert details["vbios_version"] == "96.00.9f.00.01"
    assert details["root"] == "NVIDIA Device Identity CA"
    assert details["fwid_checked"] is True
    assert details["measurement_blocks"][1] == {
        "index": 2,
        "digest": parse_spdm_report(real.report).blocks[1].value.hex(),
    }


@pytest.mark.vectors
def test_real_chain_with_or_without_root(real: Real) -> None:
    assert len(PEM.findall(real.chain)) == 5
    verify_nvidia(real.report, real.chain, at=AT, root_pem=real.root)  # root given twice: fine
    verify_nvidia(real.report, real.chain_without_root, at=AT, root_pem=real.root)
    with pytest.raises(ChainError, match="not a self-signed root"):
        verify_nvidia(real.report, real.chain_without_root, at=AT)


@pytest.mark.vectors
def test_real_report_with_hardware_roots(real: Real) -> None:
    verify_nvidia(real.report, real.chain, at=AT, roots=TrustStore.hardware())


@pytest.mark.vectors
def test_real_report_not_trusted_without_the_pin(real: Real) -> None:
    other = TrustAnchor(name="someone else", fingerprint="00" * 32)
    with pytest.raises(ChainError, match="not pinned"):
        verify_nvidia(real.report, real.chain, at=AT, roots=TrustStore.of(other))


@pytest.mark.vectors
def test_real_report_nonce_binding(real: Real) -> None:
    verify_nvidia(real.report, real.chain, at=AT, nonce=bytes.fromhex(REAL_NONCE))
    with pytest.raises(BindingError, match=f"answers nonce {REAL_NONCE}, not the expected 00"):
        verify_nvidia(real.report, real.chain, at=AT, nonce=bytes(32))
    with pytest.raises(InputError, match="32 bytes"):
        verify_nvidia(real.report, real.chain, at=AT, nonce=b"short")


@pytest.mark.vectors
def test_naive_time_is_refused(real: Real) -> None:
    with pytest.raises(InputError, match="timezone"):
        verify_nvidia(real.report, real.chain, at=AT.replace(tzinfo=None))


@pytest.mark.vectors
def test_real_report_trailing_byte_is_tolerated(real: Real) -> None:
    claims = verify_nvidia(real.report + b"\x00", real.chain, at=AT)
    assert claims.get("trailing_bytes") == 1


@pytest.mark.vectors
@pytest.mark.parametrize(
    "offset",
    [
        4,  # request nonce
        REQUEST_SIZE + 20,  # a measurement digest
        REQUEST_SIZE + 3600,  # the response nonce
        4117 - 96 - 10,  # opaque data (FWID TLV)
        4117 - 50,  # the signature itself
        4117 - 1,
    ],
)
def test_real_report_flipped_bit_is_invalid(real: Real, offset: int) -> None:
    data = bytearray(real.report)
    data[offset] ^= 0x01
    with pytest.raises(SignatureError):
        verify_nvidia(bytes(data), real.chain, at=AT)


@pytest.mark.vectors
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_report_any_flipped_bit_is_refused(real: Real, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(real.report) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(real.report)
    mutated[offset] ^= 1 << bit
    with pytest.raises(CCError):
        verify_nvidia(bytes(mutated), real.chain, at=AT)


@pytest.mark.vectors
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_report_mutations_parse_or_raise_format_error(real: Real, data: st.DataObject) -> None:
    report = bytearray(real.report)
    start = data.draw(st.integers(0, len(report)))
    end = data.draw(st.integers(start, min(len(report), start + 16)))
    report[start:end] = data.draw(st.binary(max_size=16))
    with contextlib.suppress(FormatError):
        parse_spdm_report(bytes(report))


@pytest.mark.vectors
def test_real_report_truncated(real: Real) -> None:
    for size in (0, 10, REQUEST_SIZE, REQUEST_SIZE + 8, 3000, len(real.report) - 1):
        with pytest.raises(FormatError):
            parse_spdm_report(real.report[:size])


@pytest.mark.vectors
def test_real_leaf_dice_fwid(real: Real) -> None:
    leaf = x509.load_pem_x509_certificate(PEM.findall(real.chain)[0])
    fwid = dice_fwid(leaf)
    assert fwid is not None
    assert fwid.hex() == REAL_FWID


# --- synthetic evidence ---------------------------------------------------------------------


SHA384_OID = bytes.fromhex("0609608648016503040202")
SHA256_OID = bytes.fromhex("0609608648016503040201")


def nvidia_dice(fwid: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """NVIDIA's layout: SEQUENCE { INTEGER 1, SPKI, SEQUENCE { sha384, OCTET STRING fwid } }."""
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return tlv(0x30, tlv(0x02, b"\x01") + spki + tlv(0x30, SHA384_OID + tlv(0x04, fwid)))


def tcg_dice(fwid: bytes) -> bytes:
    """TCG DiceTcbInfo: vendor [0], fwids [6] (a SHA-256 and a SHA-384 FWID), flags [7] after."""
    fwids = tlv(0x30, SHA256_OID + tlv(0x04, b"\x11" * 32)) + tlv(0x30, SHA384_OID + tlv(0x04, fwid))
    return tlv(0x30, tlv(0x80, b"NVIDIA") + tlv(0xA6, fwids) + tlv(0x87, b"\x00\x00\x00\x00"))


ROOT_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "NVIDIA Device Identity CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NVIDIA"),
    ]
)
LEAF_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "GH100 A01 GSP FMC LF"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NVIDIA Corporation"),
    ]
)
NOW = datetime(2025, 3, 1, tzinfo=timezone.utc)
FWID = bytes(range(48))


@dataclass(frozen=True)
class Synthetic:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def roots(self) -> TrustStore:
        return TrustStore.of(TrustAnchor(name="test GPU root", fingerprint=fingerprint(self.root)))

    def leaf(self, dice: bytes | None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(LEAF_NAME)
            .issuer_name(ROOT_NAME)
            .public_key(self.leaf_key.public_key())
            .serial_number(2)
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
        )
        if dice is not None:
            ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), dice)
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(self.root_key, hashes.SHA384())

    def chain(self, dice: bytes | None, *, with_root: bool = True) -> bytes:
        certs = [self.leaf(dice), self.root] if with_root else [self.leaf(dice)]
        return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@pytest.fixture(scope="module")
def synth() -> Synthetic:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(ROOT_NAME)
        .issuer_name(ROOT_NAME)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    return Synthetic(root_key=root_key, root=root, leaf_key=ec.generate_private_key(ec.SECP384R1()))


def make_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    nonce: bytes = b"\x42" * 32,
    fwid: bytes | None = FWID,
    digests: int = 3,
    trailing: bytes = b"",
) -> bytes:
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    records = b""
    for index in range(1, digests + 1):
        value = bytes([index]) * 48
        dmtf = bytes([0x01]) + struct.pack("<H", len(value)) + value
        records += bytes([index, 0x01]) + struct.pack("<H", len(dmtf)) + dmtf
    opaque = struct.pack("<HH", 3, 10) + b"570.00.01\x00"
    if fwid is not None:
        opaque += struct.pack("<HH", 20, len(fwid)) + fwid
    response = (
        bytes([0x11, 0x60, 0x00, 0x00, digests])
        + len(records).to_bytes(3, "little")
        + records
        + b"\x07" * 32
        + struct.pack("<H", len(opaque))
        + opaque
    )
    der = key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big") + trailing


def test_synthetic_evidence_verifies_with_its_own_root(synth: Synthetic) -> None:
    claims = verify_nvidia(
        make_report(synth.leaf_key), synth.chain(nvidia_dice(FWID, synth.leaf_key)), at=NOW, roots=synth.roots
    )
    assert claims.get("fwid") == FWID.hex()
    assert claims.get("measurements") == 3
    assert claims.get("driver_version") == "570.00.01"
    assert "vbios_version" not in claims.details
    assert claims.get("root") == "test GPU root"
    assert claims.report_data == b"\x42" * 32


def test_synthetic_evidence_with_tcg_dice_layout(synth: Synthetic) -> None:
    # A DiceTcbInfo whose FWID is not in the last 48 bytes: found by structure, not offset.
    chain = synth.chain(tcg_dice(FWID))
    verify_nvidia(make_report(synth.leaf_key), chain, at=NOW, roots=synth.roots)


def test_synthetic_fwid_mismatch(synth: Synthetic) -> None:
    other = bytes(reversed(FWID))
    chain = synth.chain(nvidia_dice(other, synth.leaf_key))
    with pytest.raises(
        BindingError,
        match=r"FWID 0001020304050607\.\.\. differs from the leaf certificate's 2f2e2d2c2b2a2928",
    ):
        verify_nvidia(make_report(synth.leaf_key), chain, at=NOW, roots=synth.roots)


def test_synthetic_leaf_without_dice_extension(synth: Synthetic) -> None:
    with pytest.raises(BindingError, match="no DICE TcbInfo extension"):
        verify_nvidia(make_report(synth.leaf_key), synth.chain(None), at=NOW, roots=synth.roots)
    # A report without an FWID has nothing to bind: the check is skipped and says so.
    claims = verify_nvidia(
        make_report(synth.leaf_key, fwid=None), synth.chain(None), at=NOW, roots=synth.roots
    )
    assert claims.get("fwid") is None
    assert claims.get("fwid_checked") is False


def test_synthetic_evidence_is_not_trusted_by_default(synth: Synthetic) -> None:
    # The root has NVIDIA's subject names but not NVIDIA's fingerprint.
    chain = synth.chain(nvidia_dice(FWID, synth.leaf_key))
    report = make_report(synth.leaf_key)
    with pytest.raises(ChainError, match="not pinned"):
        verify_nvidia(report, chain, at=NOW)
    with pytest.raises(ChainError, match="not pinned"):
        verify_nvidia(report, chain, at=NOW, roots=TrustStore.hardware())


def test_synthetic_root_given_separately(synth: Synthetic) -> None:
    chain = synth.chain(nvidia_dice(FWID, synth.leaf_key), with_root=False)
    root_pem = synth.root.public_bytes(Encoding.PEM)
    verify_nvidia(make_report(synth.leaf_key), chain, at=NOW, roots=synth.roots, root_pem=root_pem)


@pytest.mark.vectors
def test_separate_root_conflicting_with_the_chain(synth: Synthetic, real: Real) -> None:
    chain = synth.chain(nvidia_dice(FWID, synth.leaf_key))
    with pytest.raises(ChainError, match="not the root certificate given separately"):
        verify_nvidia(make_report(synth.leaf_key), chain, at=NOW, roots=synth.roots, root_pem=real.root)


def test_synthetic_wrong_signer(synth: Synthetic) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SignatureError, match="does not verify with the leaf"):
        verify_nvidia(
            make_report(other), synth.chain(nvidia_dice(FWID, synth.leaf_key)), at=NOW, roots=synth.roots
        )


def test_synthetic_trailing_bytes_and_expiry(synth: Synthetic) -> None:
    chain = synth.chain(nvidia_dice(FWID, synth.leaf_key))
    claims = verify_nvidia(
        make_report(synth.leaf_key, trailing=b"\x00\xff"), chain, at=NOW, roots=synth.roots
    )
    assert claims.get("trailing_bytes") == 2
    with pytest.raises(ChainError, match="expired"):
        verify_nvidia(make_report(synth.leaf_key), chain, at=NOW + timedelta(days=400), roots=synth.roots)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ((0, b"\x12"), "SPDM 1.1 GET_MEASUREMENTS"),
        ((2, b"\x00"), "did not ask for a signature"),
        ((37, b"\x12"), "expected 11 60"),
        ((41, b"\x04"), "announces 4 measurement blocks but holds 3"),
        ((42, b"\xff\xff\x00"), "ends inside the measurement record"),
        ((46, b"\x02"), "only the DMTF format"),
        ((47, b"\xff\x00"), "ends inside measurement block 1"),
        ((47, b"\x40\x00"), "is 64 bytes but its DMTF value fills 51"),
        ((50, b"\x20\x00"), "DMTF value fills 35"),
    ],
)
def test_synthetic_format_errors(synth: Synthetic, patch: tuple[int, bytes], match: str) -> None:
    offset, data = patch
    report = bytearray(make_report(synth.leaf_key))
    report[offset : offset + len(data)] = data
    with pytest.raises(FormatError, match=match):
        parse_spdm_report(bytes(report))


def test_duplicate_measurement_index_and_opaque_field(synth: Synthetic) -> None:
    report = bytearray(make_report(synth.leaf_key))
    report[37 + 8 + 55] = 1  # second block claims index 1 as well
    with pytest.raises(FormatError, match="index 1 appears twice"):
        parse_spdm_report(bytes(report))


def test_bad_fwid_length(synth: Synthetic) -> None:
    with pytest.raises(FormatError, match="FWID is 32 bytes"):
        parse_spdm_report(make_report(synth.leaf_key, fwid=b"\x00" * 32))


@pytest.mark.parametrize(
    ("dice", "match"),
    [
        (b"", "not a single DER SEQUENCE"),
        (b"\x30\x05\x02\x01", "longer than its container"),
        (b"\x30\x00\x30\x00", "not a single DER SEQUENCE"),
        (tlv(0x30, tlv(0x02, b"\x01")), "no SHA-384 FWID"),
        (tlv(0x30, tlv(0x30, SHA384_OID + tlv(0x04, b"\x01" * 32))), "32-byte FWID"),
        (b"\x30\x84\x00\x00\x00\x01\x00", "bad DER length"),
        (b"\x30\x80\x00\x00", "bad DER length"),
        (b"\x3f\x01\x00", "high-tag-number"),
    ],
)
def test_malformed_dice_extension(synth: Synthetic, dice: bytes, match: str) -> None:
    leaf = synth.leaf(dice)
    with pytest.raises(FormatError, match=match):
        dice_fwid(leaf)


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=500)
@given(data=st.binary(max_size=600))
def test_any_bytes_parse_or_raise_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_spdm_report(data)


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_any_bytes_after_a_valid_header_parse_or_raise_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_spdm_report(bytes([0x11, 0xE0, 0x01, 0xFF]) + bytes(33) + bytes([0x11, 0x60]) + data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_synthetic_mutations_are_refused_with_a_ccerror(synth: Synthetic, data: st.DataObject) -> None:
    report = bytearray(make_report(synth.leaf_key))
    signed_end = len(report) - SIGNATURE_SIZE
    offset = data.draw(st.integers(0, signed_end - 1))
    report[offset] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CCError):
        verify_nvidia(
            bytes(report), synth.chain(nvidia_dice(FWID, synth.leaf_key)), at=NOW, roots=synth.roots
        )
