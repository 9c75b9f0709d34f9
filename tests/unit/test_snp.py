"""SEV-SNP: real reports verify as the vectors README says; every tampering is refused by name."""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timezone

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_cc.attest import snp
from jupyter_cc.attest.certs import fingerprint, load_certificate, load_certificates, verify_chain
from jupyter_cc.attest.roots import AMD_ARKS, TrustStore
from jupyter_cc.attest.sim import SimulatedTee
from jupyter_cc.decoding import decode_blob
from jupyter_cc.errors import (
    CCError,
    ChainError,
    CollateralError,
    EvidenceError,
    FormatError,
    SignatureError,
    TcbError,
)
from jupyter_cc.policy import Policy, appraise

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
MILAN_MEASUREMENT = (
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
)


@pytest.fixture(scope="module")
def milan(read_vector):  # type: ignore[no-untyped-def]
    report = decode_blob(read_vector("snp/milan-v2.report.hex"))
    vcek = load_certificate(read_vector("snp/milan-v2.vcek.der"))
    chain = load_certificates(read_vector("amd/ask_ark_milan.pem"))
    return report, vcek, chain


def test_real_milan_v2_report_verifies_to_the_pinned_ark(milan) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    claims = snp.verify_report(snp.parse_report(report), vcek, chain, at=AT)
    assert claims.kind == "snp"
    assert not claims.simulated
    assert not claims.debug
    assert claims.get("measurement") == MILAN_MEASUREMENT
    assert claims.report_data.hex().startswith("d447b55d197491bf")
    assert dict(claims.get("reported_tcb")) == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims.get("policy") == 0x30000
    assert claims.get("vmpl") == 0
    assert claims.get("product") == "Milan"  # v2: from the VCEK's product name
    assert claims.get("report_version") == 2
    assert claims.get("signing_key") == "vcek"
    assert claims.get("root") == "ARK-Milan"
    # No AMD CRL was given, so revocation is unchecked: every policy refuses that unless it
    # says allow_unchecked_revocation = true.
    assert claims.get("revocation") == "unchecked"
    assert [r.rule for r in appraise(claims, Policy()).reasons] == ["collateral.revocation"]
    assert appraise(claims, Policy(collateral_allow_unchecked_revocation=True)).passed


def test_milan_report_with_the_genoa_chain_is_refused(milan, read_vector) -> None:  # type: ignore[no-untyped-def]
    report, vcek, _ = milan
    genoa = load_certificates(read_vector("amd/ask_ark_genoa.pem"))
    with pytest.raises(ChainError, match="not 'CN=SEV-Genoa"):
        snp.verify_report(snp.parse_report(report), vcek, genoa, at=AT)


def test_debug_report_signature_is_valid_but_the_default_policy_rejects_it(read_vector) -> None:  # type: ignore[no-untyped-def]
    report = snp.parse_report(read_vector("snp/milan-v2-debug.report.bin"))
    vcek = load_certificate(read_vector("snp/milan-v2-debug.vcek.der"))
    claims = snp.verify_report(report, vcek, load_certificates(read_vector("amd/ask_ark_milan.pem")), at=AT)
    assert claims.debug
    assert claims.get("policy") == 0xB0000
    # Judged under a policy that allows unchecked revocation (no AMD CRL in the vectors), so
    # the debug rule is the one refusal.
    unchecked_ok = Policy(collateral_allow_unchecked_revocation=True)
    verdict = appraise(claims, unchecked_ok)
    assert not verdict.passed
    assert [r.rule for r in verdict.reasons] == ["allow_debug"]
    assert "allow_debug" in [r.rule for r in appraise(claims, Policy()).reasons]
    assert appraise(claims, Policy(allow_debug=True, collateral_allow_unchecked_revocation=True)).passed


def test_a_vcek_of_another_chip_is_refused(milan, read_vector) -> None:  # type: ignore[no-untyped-def]
    report, _, chain = milan
    other = load_certificate(read_vector("snp/milan-v2-debug.vcek.der"))
    with pytest.raises(SignatureError):
        snp.verify_report(snp.parse_report(report), other, chain, at=AT)


# Header fields whose flip changes how the report parses (version, algorithm, policy, signer).
_SEMANTIC = (
    set(range(0x000, 0x004)) | set(range(0x008, 0x010)) | set(range(0x034, 0x038)) | set(range(0x048, 0x050))
)


_RESERVED_V2 = {o for start, end in (*snp._MBZ_COMMON, *snp._MBZ_V2) for o in range(start, end)}


def test_every_flipped_bit_in_the_signed_part_is_refused(milan) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    for offset in range(snp.SIGNED_SIZE):
        for bit in (0, 5):
            tampered = bytearray(report)
            tampered[offset] ^= 1 << bit
            with pytest.raises(EvidenceError) as info:
                snp.verify_report(snp.parse_report(bytes(tampered)), vcek, chain, at=AT)
            if offset in _RESERVED_V2:
                assert isinstance(info.value, FormatError), (offset, info.value)
            elif offset not in _SEMANTIC:
                assert isinstance(info.value, SignatureError), (offset, info.value)


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2E8, 0x2E8 + 47])
def test_flipped_signature_bits_are_refused(milan, offset: int) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    tampered = bytearray(report)
    tampered[offset] ^= 0x10
    with pytest.raises(SignatureError):
        snp.verify_report(snp.parse_report(bytes(tampered)), vcek, chain, at=AT)


@pytest.mark.parametrize("offset", [0x2A0 + 48, 0x2E8 + 71, 0x330, 0x49F])
def test_bits_beyond_the_signature_must_be_zero(milan, offset: int) -> None:  # type: ignore[no-untyped-def]
    tampered = bytearray(milan[0])
    tampered[offset] ^= 0x01
    with pytest.raises(FormatError, match="reserved"):
        snp.parse_report(bytes(tampered))


@pytest.mark.parametrize("size", [0, 1, 0x2A0, 0x49F, 0x4A1, 4096])
def test_truncated_or_oversized_reports_are_refused(milan, size: int) -> None:  # type: ignore[no-untyped-def]
    data = (milan[0] * 4)[:size]
    with pytest.raises(FormatError, match="1184 bytes"):
        snp.parse_report(data)


def test_swapped_certificates_are_refused(milan) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    with pytest.raises(FormatError, match="not a VCEK or VLEK"):
        snp.verify_report(snp.parse_report(report), chain[0], [vcek, chain[1]], at=AT)
    with pytest.raises(ChainError):
        snp.verify_report(snp.parse_report(report), vcek, [chain[1], chain[0]], at=AT)
    with pytest.raises(ChainError, match="not a self-signed root"):
        snp.verify_report(snp.parse_report(report), vcek, [chain[0]], at=AT)


def test_chain_imitating_amd_names_but_ending_at_a_self_made_root_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    forged = SimulatedTee.load_or_create(tmp_path / "forged", organization="Advanced Micro Devices")
    assert forged.chain[-1].subject.rfc4514_string() == "O=Advanced Micro Devices,CN=ARK-Milan"
    report = snp.parse_report(forged.mint(b"\x00" * 64))
    with pytest.raises(ChainError, match="is not pinned"):
        snp.verify_report(report, forged.vcek, list(forged.chain), at=datetime.now(timezone.utc))


def test_expired_certificates_are_refused_unless_the_time_is_pinned(sim_tee) -> None:  # type: ignore[no-untyped-def]
    report = snp.parse_report(sim_tee.mint(b"\x00" * 64))
    later = datetime(2090, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ChainError, match="expired"):
        snp.verify_report(report, sim_tee.vcek, list(sim_tee.chain), at=later, roots=sim_tee.trust_store())
    earlier = datetime(2001, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ChainError, match="not valid before"):
        snp.verify_report(report, sim_tee.vcek, list(sim_tee.chain), at=earlier, roots=sim_tee.trust_store())


@pytest.mark.parametrize("version", [2, 3, 5])
def test_report_versions_two_three_and_five_verify(sim_tee, version: int) -> None:  # type: ignore[no-untyped-def]
    raw = sim_tee.mint(b"\x07" * 64, version=version)
    report = snp.parse_report(raw)
    assert report.version == version
    assert (report.cpuid is None) == (version == 2)
    assert (report.current_mit_vector is None) == (version < 5)
    claims = sim_tee.verify(raw, at=datetime.now(timezone.utc))
    assert claims.get("product") == "Milan"
    assert claims.get("report_version") == version


def test_reported_tcb_must_equal_the_vcek_tcb(sim_tee, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Sign a report whose REPORTED_TCB differs from the VCEK's SPLs: the signature is valid,
    # the TCB comparison must still refuse it.
    monkeypatch.setattr("jupyter_cc.attest.sim._tcb_bytes", lambda tcb: bytes([3, 0, 0, 0, 0, 0, 9, 115]))
    raw = sim_tee.mint(b"\x00" * 64)
    with pytest.raises(TcbError, match="snp is 9 but the VCEK was issued for 8"):
        sim_tee.verify(raw, at=datetime.now(timezone.utc))


def test_chip_id_must_equal_the_vcek_hwid(sim_tee, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = SimulatedTee.load_or_create(tmp_path / "other")
    # Same chain, another chip: sign with our key but claim the other chip's id.
    impostor = SimulatedTee(vcek=sim_tee.vcek, chain=sim_tee.chain, chip_id=other.chip_id, _key=sim_tee._key)
    with pytest.raises(ChainError, match="CHIP_ID"):
        sim_tee.verify(impostor.mint(b"\x00" * 64), at=datetime.now(timezone.utc))


@pytest.mark.parametrize("product", ["milan", "genoa", "turin"])
def test_amd_chains_end_at_the_pinned_arks(read_vector, product: str) -> None:  # type: ignore[no-untyped-def]
    for suffix in ("", "_vlek"):
        ask, ark = load_certificates(read_vector(f"amd/ask_ark_{product}{suffix}.pem"))
        assert fingerprint(ark) == AMD_ARKS[product.capitalize()].fingerprint
        assert ark.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"  # RSA-PSS
        anchor = verify_chain([ask, ark], roots=TrustStore.hardware(), at=AT)
        assert anchor.name == f"ARK-{product.capitalize()}"


def test_turin_vcek_has_an_eight_byte_hwid_and_fmc(read_vector) -> None:  # type: ignore[no-untyped-def]
    cert = load_certificate(read_vector("snp/turin.vcek.der"))
    info = snp.parse_vek(cert)
    assert info.product == "Turin"
    assert info.hwid is not None
    assert len(info.hwid) == 8
    assert "fmc" in info.spl
    chain = load_certificates(read_vector("amd/ask_ark_turin.pem"))
    issued = datetime(2025, 1, 1, tzinfo=timezone.utc)  # this VCEK was issued in November 2024
    assert verify_chain([cert, *chain], roots=TrustStore.hardware(), at=issued).name == "ARK-Turin"
    milan = load_certificates(read_vector("amd/ask_ark_milan.pem"))
    with pytest.raises(ChainError):
        verify_chain([cert, *milan], roots=TrustStore.hardware(), at=issued)


def test_tcb_layouts_per_product() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 5, 6])
    assert snp.TcbVersion.decode(raw, "Milan") == snp.TcbVersion(bootloader=1, tee=2, snp=5, microcode=6)
    assert snp.TcbVersion.decode(raw, "Turin") == snp.TcbVersion(
        fmc=1, bootloader=2, tee=3, snp=4, microcode=6
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (bytes(range(64)), bytes(range(64))),
        (b"\x04\x40" + bytes(range(64)), bytes(range(64))),
        (bytes(range(8)), bytes(range(8))),
        (b"\x04\x08" + bytes(range(8)), bytes(range(8))),
    ],
)
def test_hwid_accepts_raw_and_tagged_forms(raw: bytes, expected: bytes) -> None:
    assert snp._hwid(raw) == expected


@pytest.mark.parametrize("raw", [b"", bytes(63), bytes(65), b"\x04\x41" + bytes(64), bytes(9)])
def test_hwid_refuses_other_lengths(raw: bytes) -> None:
    with pytest.raises(FormatError):
        snp._hwid(raw)


def test_product_from_cpuid() -> None:
    assert snp.product_from_cpuid(0x19, 0x01) == "Milan"
    assert snp.product_from_cpuid(0x19, 0x11) == "Genoa"
    assert snp.product_from_cpuid(0x19, 0xA0) == "Genoa"
    assert snp.product_from_cpuid(0x1A, 0x02) == "Turin"
    assert snp.product_from_cpuid(0x17, 0x01) is None


def test_certificate_table_is_split_by_role() -> None:
    import uuid

    vcek, ark = b"V" * 10, b"A" * 7
    entries = [("63da758d-e664-4564-adc5-f4b93be8accd", vcek), ("c0b406a4-a803-4952-9743-3fb6014cd0ae", ark)]
    header_len = 24 * (len(entries) + 1)
    table, blobs, offset = b"", b"", header_len
    for guid, blob in entries:
        table += uuid.UUID(guid).bytes_le + struct.pack("<II", offset, len(blob))
        blobs += blob
        offset += len(blob)
    data = table + bytes(24) + blobs
    assert snp.parse_cert_table(data) == {"vcek": vcek, "ark": ark}
    with pytest.raises(FormatError, match="terminator"):
        snp.parse_cert_table(bytes(23))
    bad = uuid.UUID(entries[0][0]).bytes_le + struct.pack("<II", 10_000, 5) + bytes(24)
    with pytest.raises(FormatError, match="outside"):
        snp.parse_cert_table(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=2048))
def test_any_bytes_parse_or_raise_a_ccerror(data: bytes) -> None:
    try:
        snp.parse_report(data)
        snp.parse_cert_table(data)
    except CCError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=snp.REPORT_SIZE, max_size=snp.REPORT_SIZE))
def test_any_report_sized_bytes_parse_or_raise_a_ccerror(data: bytes) -> None:
    with contextlib.suppress(CCError):
        snp.parse_report(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_reports_never_verify_and_fail_cleanly(milan, data) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    tampered = bytearray(report)
    index = data.draw(st.integers(0, snp.REPORT_SIZE - 1))
    tampered[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CCError):
        snp.verify_report(snp.parse_report(bytes(tampered)), vcek, chain, at=AT)


def test_a_pinned_root_of_another_vendor_or_product_is_not_an_ark(sim_tee) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.attest.roots import TrustAnchor

    ark = sim_tee.chain[-1]
    report = snp.parse_report(sim_tee.mint(bytes(64)))
    for product in (None, "Genoa"):
        store = TrustStore.of(TrustAnchor(name="Some CA", fingerprint=fingerprint(ark), product=product))
        with pytest.raises(ChainError, match="chain ends at Some CA"):
            snp.verify_report(
                report, sim_tee.vcek, list(sim_tee.chain), at=datetime.now(timezone.utc), roots=store
            )


def test_real_report_claims_say_revocation_unchecked_without_a_crl(milan) -> None:  # type: ignore[no-untyped-def]
    report, vcek, chain = milan
    claims = snp.verify_report(snp.parse_report(report), vcek, chain, at=AT)
    assert claims.get("revocation") == "unchecked"
    assert "collateral_stale_days" not in claims.details


def test_a_crl_from_a_self_made_ark_is_refused_for_the_real_chain(milan, read_vector) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    report, vcek, chain = milan
    # AMD's ARK name, to the last attribute, on a CRL signed by a key of the attacker's.
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(chain[-1].subject)
        .last_update(AT - timedelta(days=1))
        .next_update(AT + timedelta(days=7))
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )
    with pytest.raises(CollateralError, match="not signed by the 'ARK-Milan'"):
        snp.verify_report(snp.parse_report(report), vcek, chain, at=AT, crls=[forged])
    genoa = load_certificates(read_vector("amd/ask_ark_genoa.pem"))[-1]
    other = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(genoa.subject)
        .last_update(AT - timedelta(days=1))
        .next_update(AT + timedelta(days=7))
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )
    with pytest.raises(CollateralError, match=r"CN=ARK-Genoa.* is not for the VCEK chain"):
        snp.verify_report(snp.parse_report(report), vcek, chain, at=AT, crls=[other])
