"""TDX quotes and collateral: the real SPR quote and PCS collateral, synthetic v4/v5 quotes, negatives."""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.attest.tdx import collateral as tc
from jupyter_cc.attest.tdx import parse_quote, pck_chain, verify_quote, verify_tdx
from jupyter_cc.attest.tdx import pck as tp
from jupyter_cc.attest.tdx import tcb as tt
from jupyter_cc.errors import (
    BindingError,
    CCError,
    ChainError,
    CollateralError,
    FormatError,
    InputError,
    SignatureError,
    TcbError,
)
from tests.support.tdx_builder import (
    QuoteSpec,
    SyntheticPki,
    build_quote,
    level,
    make_pki,
    qe_identity,
    tcb_info,
)

QUOTE = "tdx/spr-e4-v4.quote.bin"
# Inside the validity of the PCS collateral (TCB info 2023-06-18..07-18, QE identity
# 2023-06-08..07-08), the PCK CRL (..2023-07-08), the Root CA CRL and every certificate.
COLLATERAL_TIME = datetime(2023, 7, 1, tzinfo=timezone.utc)
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
SYNTH_TIME = datetime(2024, 6, 1, tzinfo=timezone.utc)

# Offsets in a v4 quote (docs/attestation-formats.md 2.3): signature data starts at 636.
SIG = 636
ATT_KEY = SIG + 64
QE_REPORT = SIG + 134
QE_AUTH = SIG + 584  # after the 2-byte auth data length


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


@pytest.fixture(scope="module")
def quote_bytes(read_vector) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(read_vector(QUOTE))


@pytest.fixture(scope="module")
def collateral(read_vector) -> tc.TdxCollateral:  # type: ignore[no-untyped-def]
    return tc.load_collateral(
        tcb_info=read_vector("tdx/tcb-info-50806f000000.json"),
        qe_identity=read_vector("tdx/qe-identity.json"),
        issuer_chain=read_vector("tdx/tcb-info-issuer-chain.pem"),
        crls=[read_vector("tdx/root-ca-crl.der"), read_vector("tdx/pck-platform-crl.der")],
    )


@pytest.fixture(scope="module")
def pki() -> SyntheticPki:
    return make_pki()


def synth_roots(pki: SyntheticPki) -> TrustStore:
    return TrustStore.of(pki.anchor)


# --- the real v4 quote -----------------------------------------------------------------------


def test_real_quote_verifies(quote_bytes: bytes) -> None:
    quote = parse_quote(quote_bytes)
    assert quote.version == 4
    assert len(quote.extra_bytes) == 39
    # The vector README calls these zero bytes; go-tdx-guest's test file appends this text.
    assert quote.extra_bytes == b"\nextra bytes(only for testing purpose)\n"
    assert len(quote.qe_auth_data) == 32
    claims = verify_quote(quote, at=COLLATERAL_TIME)
    assert claims.kind == "tdx"
    assert not claims.simulated
    assert not claims.debug
    assert claims.report_data.hex().startswith("6c62dec1b8191749")
    assert claims.get("mrtd").startswith("6363b8043668a3ad")
    assert claims.get("quote_version") == 4
    assert claims.get("body_type") == 2
    assert claims.get("fmspc") == "50806f000000"
    assert claims.get("root") == "Intel SGX Root CA"
    assert len(claims.get("rtmr")) == 4
    assert all(len(r) == 96 for r in claims.get("rtmr"))
    assert claims.get("tee_tcb_svn") == "03000400000000000000000000000000"
    assert "tcb_status" not in claims.details
    out = claims.to_json()
    assert out["tee"] == "tdx"
    assert out["rtmr"] == list(claims.get("rtmr"))


def test_real_quote_chain_and_extensions(quote_bytes: bytes) -> None:
    chain = pck_chain(parse_quote(quote_bytes))
    pck = tp.parse_pck_extensions(chain[0])
    assert pck.fmspc_hex == "50806f000000"
    assert pck.pce_id_hex == "0000"
    assert pck.pce_svn == 11
    assert len(pck.cpu_svn_components) == 16
    assert bytes(pck.cpu_svn_components) == pck.cpu_svn


def test_real_quote_expired_pck_chain(quote_bytes: bytes) -> None:
    # The PCK leaf is valid until 2029-09-20.
    with pytest.raises(ChainError, match="expired"):
        verify_quote(parse_quote(quote_bytes), at=datetime(2030, 1, 1, tzinfo=timezone.utc))


def test_real_collateral_signatures_valid(collateral: tc.TdxCollateral) -> None:
    anchor = tt.verify_collateral(collateral, at=COLLATERAL_TIME)
    assert anchor.name == "Intel SGX Root CA"
    assert collateral.tcb_info.id == "TDX"
    assert collateral.qe_identity.id == "TD_QE"
    assert collateral.tcb_info.signed_bytes.startswith(b'{"id":"TDX"')


def test_real_qe_identity_up_to_date(quote_bytes: bytes, collateral: tc.TdxCollateral) -> None:
    match = tp.match_qe_report(parse_quote(quote_bytes).qe_report, collateral.qe_identity)
    assert match.status == "UpToDate"


def test_real_quote_no_tcb_level_matches(quote_bytes: bytes, collateral: tc.TdxCollateral) -> None:
    # go-tdx-guest's own test expects this of its sample TCB info and quote.
    with pytest.raises(TcbError, match="no TCB level in the TCB info matches the platform"):
        verify_quote(parse_quote(quote_bytes), at=COLLATERAL_TIME, collateral=collateral)


def test_real_collateral_through_verify_tdx(read_vector, quote_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TcbError, match="no TCB level"):
        verify_tdx(
            quote_bytes,
            at=COLLATERAL_TIME,
            tcb_info=read_vector("tdx/tcb-info-50806f000000.json"),
            qe_identity=read_vector("tdx/qe-identity.json"),
            collateral_chain=read_vector("tdx/qe-identity-issuer-chain.pem"),
            crls=[read_vector("tdx/root-ca-crl.der"), read_vector("tdx/pck-platform-crl.der")],
        )


def test_real_collateral_is_stale_now(read_vector, quote_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CollateralError, match="stale") as info:
        verify_tdx(
            quote_bytes,
            at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            tcb_info=read_vector("tdx/tcb-info-50806f000000.json"),
            qe_identity=read_vector("tdx/qe-identity.json"),
            collateral_chain=read_vector("tdx/tcb-info-issuer-chain.pem"),
        )
    assert "--at" in info.value.diagnostics()


def test_real_crls(read_vector, quote_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    platform = tc.load_crl(read_vector("tdx/pck-platform-crl.der"))
    root = tc.load_crl(read_vector("tdx/root-ca-crl.der"))
    assert len(list(platform)) == 44
    assert len(list(root)) == 0
    chain = pck_chain(parse_quote(quote_bytes))
    assert tt.check_revocation([root, platform], chain, at=COLLATERAL_TIME) == 2
    with pytest.raises(CollateralError, match="stale"):
        tt.check_revocation([platform], chain, at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    # A CRL verified with the wrong issuer key fails, whatever its issuer name says.
    other = make_pki()
    with pytest.raises(CollateralError, match="not signed"):
        tt.check_revocation([platform], [other.pck, other.platform, other.root], at=COLLATERAL_TIME)


def test_tampered_tcb_info(read_vector) -> None:  # type: ignore[no-untyped-def]
    raw = read_vector("tdx/tcb-info-50806f000000.json")
    chain = read_vector("tdx/tcb-info-issuer-chain.pem")
    qe = read_vector("tdx/qe-identity.json")
    # The genuine document first, so its signature check is cached: the cache must answer only
    # for those exact bytes, never for an edited copy.
    tt.verify_collateral(
        tc.load_collateral(tcb_info=raw, qe_identity=qe, issuer_chain=chain), at=COLLATERAL_TIME
    )
    tampered = raw.replace(b'"pcesvn":11', b'"pcesvn":10', 1)
    assert tampered != raw
    bad = tc.load_collateral(tcb_info=tampered, qe_identity=qe, issuer_chain=chain)
    with pytest.raises(SignatureError, match="TCB info signature"):
        tt.verify_collateral(bad, at=COLLATERAL_TIME)
    # Whitespace inside the signed value breaks it too: the exact bytes are signed.
    spaced = raw.replace(b'"version":3,', b'"version": 3,', 1)
    bad = tc.load_collateral(tcb_info=spaced, qe_identity=qe, issuer_chain=chain)
    with pytest.raises(SignatureError):
        tt.verify_collateral(bad, at=COLLATERAL_TIME)
    # Whitespace outside it does not.
    outside = raw.replace(b'{"tcbInfo":', b'{ "tcbInfo" :\n', 1)
    ok = tc.load_collateral(tcb_info=outside, qe_identity=qe, issuer_chain=chain)
    tt.verify_collateral(ok, at=COLLATERAL_TIME)


def test_tampered_qe_identity(read_vector) -> None:  # type: ignore[no-untyped-def]
    raw = read_vector("tdx/qe-identity.json")
    tampered = raw.replace(b'"isvsvn":4', b'"isvsvn":3', 1)
    bad = tc.load_collateral(
        tcb_info=read_vector("tdx/tcb-info-50806f000000.json"),
        qe_identity=tampered,
        issuer_chain=read_vector("tdx/tcb-info-issuer-chain.pem"),
    )
    with pytest.raises(SignatureError, match="QE identity signature"):
        tt.verify_collateral(bad, at=COLLATERAL_TIME)


def test_collateral_json_is_checked(read_vector) -> None:  # type: ignore[no-untyped-def]
    raw = read_vector("tdx/tcb-info-50806f000000.json")
    with pytest.raises(InputError):
        tc.parse_tcb_info(b"not json")
    with pytest.raises(InputError):
        tc.parse_tcb_info(raw.rstrip()[:-1])
    with pytest.raises(InputError, match="tcbInfo"):
        tc.parse_tcb_info(read_vector("tdx/qe-identity.json"))
    duplicate = raw.rstrip()[:-1] + b',"tcbInfo":{}}'
    with pytest.raises(InputError):
        tc.parse_tcb_info(duplicate)
    with pytest.raises(CollateralError, match="signature"):
        tc.parse_tcb_info(raw.replace(b'"signature":"', b'"signature":"zz', 1))


# --- negatives on the real quote ------------------------------------------------------------


@pytest.mark.parametrize("offset", [20, 40, 48, 48 + 136, 48 + 520, 631])
def test_flipped_header_or_body(quote_bytes: bytes, offset: int) -> None:
    with pytest.raises(SignatureError, match="TDX quote signature"):
        verify_quote(parse_quote(flip(quote_bytes, offset)), at=COLLATERAL_TIME)


@pytest.mark.parametrize("offset", [QE_REPORT, QE_REPORT + 64, QE_REPORT + 320, QE_REPORT + 383])
def test_flipped_qe_report(quote_bytes: bytes, offset: int) -> None:
    with pytest.raises(SignatureError, match="QE report signature"):
        verify_quote(parse_quote(flip(quote_bytes, offset)), at=COLLATERAL_TIME)


@pytest.mark.parametrize("offset", [QE_AUTH, QE_AUTH + 31])
def test_flipped_qe_auth_data(quote_bytes: bytes, offset: int) -> None:
    with pytest.raises(BindingError, match="REPORTDATA"):
        verify_quote(parse_quote(flip(quote_bytes, offset)), at=COLLATERAL_TIME)


@pytest.mark.parametrize("offset", [ATT_KEY, ATT_KEY + 31, ATT_KEY + 32, ATT_KEY + 63])
def test_flipped_attestation_key(quote_bytes: bytes, offset: int) -> None:
    with pytest.raises((SignatureError, BindingError)):
        verify_quote(parse_quote(flip(quote_bytes, offset)), at=COLLATERAL_TIME)


@pytest.mark.parametrize("offset", [SIG, SIG + 63])
def test_flipped_quote_signature(quote_bytes: bytes, offset: int) -> None:
    with pytest.raises(SignatureError):
        verify_quote(parse_quote(flip(quote_bytes, offset)), at=COLLATERAL_TIME)


def test_truncated(quote_bytes: bytes) -> None:
    signed_end = len(quote_bytes) - 39
    lengths = [
        *range(0, 700, 7),
        *range(700, signed_end, 97),
        47,
        48,
        631,
        632,
        635,
        636,
        1218,
        signed_end - 1,
    ]
    for n in lengths:
        with pytest.raises(FormatError):
            parse_quote(quote_bytes[:n])
    # Cutting only padding is fine.
    assert parse_quote(quote_bytes[:signed_end]).extra_bytes == b""


def test_garbage(quote_bytes: bytes) -> None:
    import random

    rng = random.Random(7)
    for size in (10, 1000, 5000, 100_000):
        with pytest.raises(FormatError):
            parse_quote(bytes(rng.getrandbits(8) for _ in range(size)))
    # A plausible header with absurd lengths.
    with pytest.raises(FormatError):
        parse_quote(quote_bytes[:632] + b"\xff\xff\xff\xff" + quote_bytes[636:])
    with pytest.raises(FormatError, match="certification data"):
        parse_quote(quote_bytes[: SIG + 130] + b"\xff\xff\xff\x7f" + quote_bytes[SIG + 134 :])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x03\x00", "version"),
        (2, b"\x03\x00", "attestation key type"),
        (4, b"\x00\x00\x00\x00", "TEE type"),
        (SIG + 128, b"\x05\x00", "certification data type"),
        (SIG + 584 + 32, b"\x04\x00", "PCK certificate chain"),
    ],
)
def test_wrong_types(quote_bytes: bytes, offset: int, value: bytes, message: str) -> None:
    data = quote_bytes[:offset] + value + quote_bytes[offset + len(value) :]
    with pytest.raises(FormatError, match=message):
        parse_quote(data)


def replace_pck_chain(quote_bytes: bytes, pem: bytes) -> bytes:
    """The real quote with its embedded PCK chain replaced (lengths fixed up)."""
    q = parse_quote(quote_bytes)
    cert = (
        q.qe_report.raw
        + q.qe_report_signature
        + struct.pack("<H", len(q.qe_auth_data))
        + q.qe_auth_data
        + struct.pack("<HI", 5, len(pem))
        + pem
    )
    sig = q.signature + q.attestation_key + struct.pack("<HI", 6, len(cert)) + cert
    return q.signed_bytes + struct.pack("<I", len(sig)) + sig + q.extra_bytes


def test_self_made_chain_with_intel_names(quote_bytes: bytes, pki: SyntheticPki) -> None:
    forged = parse_quote(replace_pck_chain(quote_bytes, pki.pck_chain_pem()))
    with pytest.raises(ChainError, match="not pinned"):
        verify_quote(forged, at=COLLATERAL_TIME)
    # Trusting the forger's root gets past the chain, but the QE report was signed by Intel's PCK.
    with pytest.raises(SignatureError, match="QE report"):
        verify_quote(forged, at=COLLATERAL_TIME, roots=synth_roots(pki))


def test_pck_chain_must_have_three_certificates(quote_bytes: bytes, pki: SyntheticPki) -> None:
    two = b"".join(c for c in pki.pck_chain_pem().split(b"-----END CERTIFICATE-----\n")[:2])
    with pytest.raises(FormatError):
        pck_chain(parse_quote(replace_pck_chain(quote_bytes, two + b"-----END CERTIFICATE-----\n")))
    with pytest.raises(FormatError, match="PEM"):
        pck_chain(parse_quote(replace_pck_chain(quote_bytes, b"garbage")))


def test_verify_tdx_needs_all_collateral(read_vector, quote_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="--tcb-info given without --qe-identity, --collateral-chain"):
        verify_tdx(quote_bytes, at=COLLATERAL_TIME, tcb_info=read_vector("tdx/tcb-info-50806f000000.json"))
    with pytest.raises(InputError, match="without --tcb-info"):
        verify_tdx(
            quote_bytes,
            at=COLLATERAL_TIME,
            qe_identity=b"{}",
            collateral_chain=read_vector("tdx/tcb-info-issuer-chain.pem"),
        )
    with pytest.raises(InputError, match="CRL"):
        verify_tdx(quote_bytes, at=COLLATERAL_TIME, crls=[b"not a crl"])
    claims = verify_tdx(quote_bytes, at=COLLATERAL_TIME, crls=[read_vector("tdx/pck-platform-crl.der")])
    assert claims.get("mrtd").startswith("6363b8043668a3ad")


# --- synthetic quotes: v4, v5 (TDX 1.0 and 1.5) ----------------------------------------------


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3)])
def test_synthetic_quote_end_to_end(pki: SyntheticPki, version: int, body_type: int) -> None:
    spec = QuoteSpec(version=version, body_type=body_type, extra=b"\x00" * 70)
    quote = parse_quote(build_quote(pki, spec))
    assert quote.version == version
    assert quote.body_type == body_type
    assert len(quote.extra_bytes) == 70
    claims = verify_quote(quote, at=SYNTH_TIME, roots=synth_roots(pki))
    assert claims.get("quote_version") == version
    assert claims.get("body_type") == body_type
    assert claims.get("mrtd") == spec.mrtd.hex()
    assert claims.get("rtmr") == tuple(r.hex() for r in spec.rtmr)
    assert claims.report_data == spec.report_data
    assert claims.get("fmspc") == pki.fmspc.hex()
    assert claims.get("td_attributes") == spec.td_attributes.hex()
    assert not claims.debug
    if body_type == 3:
        assert claims.get("tee_tcb_svn2") == spec.tee_tcb_svn2.hex()
        assert claims.get("mrservicetd") == spec.mrservicetd.hex()
    else:
        assert "mrservicetd" not in claims.details
    with pytest.raises(ChainError, match="not pinned"):
        verify_quote(quote, at=SYNTH_TIME)


@pytest.mark.parametrize(("version", "body_type"), [(5, 2), (5, 3)])
def test_synthetic_v5_tampering(pki: SyntheticPki, version: int, body_type: int) -> None:
    data = build_quote(pki, QuoteSpec(version=version, body_type=body_type))
    body_size = 584 if body_type == 2 else 648
    # The last body byte is signed (v5 signs 54 + body_size bytes).
    with pytest.raises(SignatureError, match="TDX quote signature"):
        verify_quote(parse_quote(flip(data, 54 + body_size - 1)), at=SYNTH_TIME, roots=synth_roots(pki))
    for n in (0, 49, 53, 54 + body_size - 1, 54 + body_size + 3, len(data) - 1):
        with pytest.raises(FormatError):
            parse_quote(data[:n])
    wrong_type = data[:48] + struct.pack("<H", 4) + data[50:]
    with pytest.raises(FormatError, match="body type"):
        parse_quote(wrong_type)
    other = 3 if body_type == 2 else 2
    wrong_size = data[:48] + struct.pack("<HI", other, body_size) + data[54:]
    with pytest.raises(FormatError, match="body"):
        parse_quote(wrong_size)


def test_synthetic_debug_and_no_nul(pki: SyntheticPki) -> None:
    spec = QuoteSpec(td_attributes=bytes.fromhex("0100000000000000"), nul_terminate=False)
    claims = verify_quote(parse_quote(build_quote(pki, spec)), at=SYNTH_TIME, roots=synth_roots(pki))
    assert claims.debug


def synth_collateral(pki: SyntheticPki, **kwargs: object) -> tc.TdxCollateral:
    tcb_kwargs = {k: v for k, v in kwargs.items() if k != "qe_levels"}
    qe_kwargs = {"levels": kwargs["qe_levels"]} if "qe_levels" in kwargs else {}
    return tc.load_collateral(
        tcb_info=tcb_info(pki, **tcb_kwargs),  # type: ignore[arg-type]
        qe_identity=qe_identity(pki, **qe_kwargs),  # type: ignore[arg-type]
        issuer_chain=pki.collateral_chain_pem(),
    )


def test_synthetic_collateral_fmspc_case_insensitive(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki))
    upper = synth_collateral(pki, fmspc=pki.fmspc.hex().upper())
    assert upper.tcb_info.fmspc != pki.fmspc.hex()
    claims = verify_quote(quote, at=SYNTH_TIME, roots=synth_roots(pki), collateral=upper)
    assert claims.get("tcb_status") == "UpToDate"
    assert claims.get("qe_tcb_status") == "UpToDate"
    assert claims.get("fmspc") == pki.fmspc.hex()
    other = synth_collateral(pki, fmspc="00906ED50000")
    with pytest.raises(CollateralError, match="FMSPC"):
        verify_quote(quote, at=SYNTH_TIME, roots=synth_roots(pki), collateral=other)


def test_synthetic_collateral_levels(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki))
    roots = synth_roots(pki)
    # The first level the platform reaches decides; a higher TDX component skips level one.
    higher = level("UpToDate", tdx=(3, 0, 6, *[0] * 13))
    older = level("OutOfDate", tdx=(3, 0, 4, *[0] * 13), advisories=["INTEL-SA-00001"])
    claims = verify_quote(
        quote, at=SYNTH_TIME, roots=roots, collateral=synth_collateral(pki, levels=[higher, older])
    )
    assert claims.get("tcb_status") == "OutOfDate"
    assert claims.get("advisory_ids") == ("INTEL-SA-00001",)
    # A lower PCE SVN level would match, but PCESVN is compared too.
    pce = level("UpToDate", pcesvn=12)
    with pytest.raises(TcbError, match="no TCB level"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=synth_collateral(pki, levels=[pce]))
    # The QE level falls into the status too.
    old_qe = synth_collateral(pki, qe_levels=[(5, "UpToDate"), (3, "OutOfDate")])
    claims = verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=old_qe)
    assert claims.get("qe_tcb_status") == "OutOfDate"
    assert claims.get("platform_tcb_status") == "UpToDate"
    assert claims.get("tcb_status") == "OutOfDate"


def test_synthetic_tdx_module_identity(pki: SyntheticPki) -> None:
    # TEE_TCB_SVN[1] > 0: bytes 0-1 are not compared with the level but with module TDX_01.
    quote = parse_quote(build_quote(pki, QuoteSpec(tee_tcb_svn=bytes([2, 1, 5]) + bytes(13))))
    roots = synth_roots(pki)
    lv = level("UpToDate", tdx=(9, 9, 5, *[0] * 13))
    module = {
        "id": "TDX_01",
        "mrsigner": "00" * 48,
        "attributes": "00" * 8,
        "attributesMask": "FF" * 8,
        "tcbLevels": [
            {"tcb": {"isvsvn": 3}, "tcbDate": "2023-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
            {"tcb": {"isvsvn": 1}, "tcbDate": "2022-01-01T00:00:00Z", "tcbStatus": "OutOfDate"},
        ],
    }
    collateral = synth_collateral(pki, levels=[lv], module_identities=[module])
    claims = verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=collateral)
    assert claims.get("tdx_module_id") == "TDX_01"
    assert claims.get("tdx_module_tcb_status") == "OutOfDate"
    assert claims.get("platform_tcb_status") == "UpToDate"
    assert claims.get("tcb_status") == "OutOfDate"
    with pytest.raises(TcbError, match="TDX_01"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=synth_collateral(pki, levels=[lv]))


def test_synthetic_collateral_checks(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki))
    roots = synth_roots(pki)
    # Collateral signed by a key that is not the TCB signing certificate's.
    forged = tc.load_collateral(
        tcb_info=tcb_info(pki, key=pki.pck_key),
        qe_identity=qe_identity(pki),
        issuer_chain=pki.collateral_chain_pem(),
    )
    with pytest.raises(SignatureError, match="TCB info"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=forged)
    # The signing chain must end at a pinned root too.
    with pytest.raises(ChainError, match="not pinned"):
        tt.verify_collateral(synth_collateral(pki), at=SYNTH_TIME)
    # Wrong version, stale.
    with pytest.raises(CollateralError, match="version"):
        tt.verify_collateral(synth_collateral(pki, version=2), at=SYNTH_TIME, roots=roots)
    stale = synth_collateral(pki, next_update="2024-01-01T00:00:00Z")
    with pytest.raises(CollateralError, match="stale"):
        tt.verify_collateral(stale, at=SYNTH_TIME, roots=roots)
    # The PCK chain must not be used as the collateral chain.
    wrong = tc.load_collateral(
        tcb_info=tcb_info(pki), qe_identity=qe_identity(pki), issuer_chain=pki.pck_chain_pem()
    )
    with pytest.raises(ChainError, match="TCB Signing"):
        tt.verify_collateral(wrong, at=SYNTH_TIME, roots=roots)


def test_synthetic_qe_identity_mismatch(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki, QuoteSpec(qe_mrsigner=b"\x01" * 32)))
    with pytest.raises(CollateralError, match="MRSIGNER"):
        verify_quote(quote, at=SYNTH_TIME, roots=synth_roots(pki), collateral=synth_collateral(pki))
    quote = parse_quote(build_quote(pki, QuoteSpec(qe_isvsvn=1)))
    with pytest.raises(TcbError, match="ISVSVN 1"):
        verify_quote(quote, at=SYNTH_TIME, roots=synth_roots(pki), collateral=synth_collateral(pki))


def test_synthetic_revocation(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki))
    roots = synth_roots(pki)
    revoked = tc.load_crl(pki.crl("platform", [pki.pck.serial_number]))
    with pytest.raises(ChainError, match="revoked"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, crls=[revoked])
    root_crl = tc.load_crl(pki.crl("root", [pki.platform.serial_number]))
    with pytest.raises(ChainError, match="revoked"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, crls=[root_crl])
    signing_revoked = tc.load_crl(pki.crl("root", [pki.signing.serial_number]))
    collateral = tc.load_collateral(
        tcb_info=tcb_info(pki),
        qe_identity=qe_identity(pki),
        issuer_chain=pki.collateral_chain_pem(),
        crls=[signing_revoked],
    )
    with pytest.raises(ChainError, match="TCB Signing"):
        verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=collateral)
    clean = tc.load_crl(pki.crl("platform", [12345]))
    assert verify_quote(quote, at=SYNTH_TIME, roots=roots, crls=[clean]).get("mrtd")


# --- property tests ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_any_bytes_parse_or_format_error(data: bytes) -> None:
    with contextlib.suppress(CCError):
        parse_quote(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64).map(lambda b: b"\x04\x00\x02\x00\x81\x00\x00\x00" + b))
def test_plausible_header_parse_or_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_quote(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        # Anywhere, or in the embedded PEM chain (where the decoding is).
        st.tuples(st.integers(0, 4973) | st.integers(1258, 4934), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 4974),
)
def test_mutated_real_quote(quote_bytes: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(quote_bytes)
    for offset, mask in edits:
        data[offset] ^= mask
    with contextlib.suppress(CCError):
        verify_quote(parse_quote(bytes(data[: max(cut, 4935)])), at=COLLATERAL_TIME)
    with contextlib.suppress(CCError):
        parse_quote(bytes(data[:cut]))


def test_real_crls_give_revocation_checked(read_vector, quote_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    crls = [read_vector("tdx/root-ca-crl.der"), read_vector("tdx/pck-platform-crl.der")]
    claims = verify_tdx(quote_bytes, at=COLLATERAL_TIME, crls=crls)
    assert claims.get("revocation") == "checked"
    assert claims.get("collateral_stale_days") == 0
    assert verify_tdx(quote_bytes, at=COLLATERAL_TIME, crls=crls[1:]).get("revocation") == "unchecked"
    assert verify_tdx(quote_bytes, at=COLLATERAL_TIME).get("revocation") == "unchecked"


def test_synthetic_revocation_through_collateral_claims(pki: SyntheticPki) -> None:
    quote = parse_quote(build_quote(pki))
    roots = synth_roots(pki)
    crls = [tc.load_crl(pki.crl("platform")), tc.load_crl(pki.crl("root"))]
    collateral = tc.load_collateral(
        tcb_info=tcb_info(pki, levels=[level("OutOfDate", advisories=["INTEL-SA-00837"])]),
        qe_identity=qe_identity(pki),
        issuer_chain=pki.collateral_chain_pem(),
        crls=crls,
    )
    claims = verify_quote(quote, at=SYNTH_TIME, roots=roots, collateral=collateral)
    assert claims.get("tcb_status") == "OutOfDate"
    assert claims.get("advisory_ids") == ("INTEL-SA-00837",)
    assert claims.get("revocation") == "checked"
    assert claims.get("collateral_stale_days") == 0
    with pytest.raises(ChainError, match="revoked"):
        verify_quote(
            quote,
            at=SYNTH_TIME,
            roots=roots,
            collateral=collateral,
            crls=[tc.load_crl(pki.crl("platform", [pki.pck.serial_number]))],
        )
