"""Revocation, attacked: CRLs that list the VCEK, the ASK, the PCK or the PCK CA are refused on
``verify`` and on ``verify_bundle``; CRLs signed by another key, past their nextUpdate or for
another issuer are refused; valid CRLs covering the chain give ``revocation: checked``.

AMD chains here are made by a throwaway PKI with AMD's names and extensions and trusted through
a test :class:`TrustStore`, so each refusal is the CRL's, not the root's. Intel chains come from
``tests/support/tdx_builder.py``; the real Intel CRLs from ``../shared/vectors/tdx``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from jupyter_cc.attest import sim, snp
from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.certs import fingerprint
from jupyter_cc.attest.evidence import Evidence, parse_bundle, serialize_bundle, verify, verify_bundle
from jupyter_cc.attest.revocation import load_amd_crls, stale_days
from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.attest.tdx import collateral as tc
from jupyter_cc.attest.tdx import parse_quote, verify_quote, verify_tdx
from jupyter_cc.errors import ChainError, CollateralError, InputError
from tests.support.tdx_builder import (
    QuoteSpec,
    SyntheticPki,
    build_quote,
    level,
    make_pki,
    qe_identity,
    tcb_info,
)

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
COLLATERAL_TIME = datetime(2023, 7, 1, tzinfo=timezone.utc)
NONCE = bytes(range(32))
HOST_KEY = bytes(range(32, 64))


# --- an AMD-shaped test PKI -------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        ]
    )


def _cert(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder


@dataclass
class AmdPki:
    ark_key: ec.EllipticCurvePrivateKey
    ark: x509.Certificate
    ask_key: ec.EllipticCurvePrivateKey
    ask: x509.Certificate
    tee: sim.SimulatedTee  # mints reports signed by the VCEK of this PKI

    @property
    def vcek(self) -> x509.Certificate:
        return self.tee.vcek

    @property
    def roots(self) -> TrustStore:
        return TrustStore.of(
            TrustAnchor(name="test ARK-Milan", fingerprint=fingerprint(self.ark), product="Milan")
        )

    def crl(
        self,
        revoked: Sequence[int] = (),
        *,
        by: str = "ark",
        next_update: datetime = NOW + timedelta(days=7),
        issuer_name: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        cert, signer = (self.ark, self.ark_key) if by == "ark" else (self.ask, self.ask_key)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(_name(issuer_name) if issuer_name else cert.subject)
            .last_update(NOW - timedelta(days=10))
            .next_update(next_update)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - timedelta(hours=1))
                .build()
            )
        return builder.sign(key or signer, hashes.SHA384()).public_bytes(Encoding.DER)

    def report(self, report_data: bytes = bytes(64)) -> snp.SnpReport:
        return snp.parse_report(self.tee.mint(report_data))

    def verify(self, *crls: bytes, **kwargs: object) -> object:
        return snp.verify_report(
            self.report(),
            self.vcek,
            [self.ask, self.ark],
            at=NOW,
            roots=self.roots,
            crls=[tc.load_crl(c) for c in crls],
            **kwargs,  # type: ignore[arg-type]
        )


def make_amd_pki() -> AmdPki:
    ark_key, ask_key, vcek_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
    ark = _cert("ARK-Milan", ark_key, "ARK-Milan", ark_key, ca=True).sign(ark_key, hashes.SHA384())
    ask = _cert("SEV-Milan", ask_key, "ARK-Milan", ark_key, ca=True).sign(ark_key, hashes.SHA384())
    chip_id = os.urandom(64)
    oid, t = snp.AMD_OID, sim.SIM_TCB
    vcek = (
        _cert("SEV-VCEK", vcek_key, "SEV-Milan", ask_key, ca=False)
        .add_extension(sim._amd_ext(f"{oid}.1", sim._der_int(1)), critical=False)
        .add_extension(sim._amd_ext(snp.OID_PRODUCT_NAME, sim._der_ia5("Milan-B0")), critical=False)
        .add_extension(sim._amd_ext(snp.OID_BL_SPL, sim._der_int(t.bootloader)), critical=False)
        .add_extension(sim._amd_ext(snp.OID_TEE_SPL, sim._der_int(t.tee)), critical=False)
        .add_extension(sim._amd_ext(snp.OID_SNP_SPL, sim._der_int(t.snp)), critical=False)
        .add_extension(sim._amd_ext(snp.OID_UCODE_SPL, sim._der_int(t.microcode)), critical=False)
        .add_extension(sim._amd_ext(snp.OID_HWID, chip_id), critical=False)
        .sign(ask_key, hashes.SHA384())
    )
    tee = sim.SimulatedTee(vcek=vcek, chain=(ask, ark), chip_id=chip_id, _key=vcek_key)
    return AmdPki(ark_key, ark, ask_key, ask, tee)


@pytest.fixture(scope="module")
def amd() -> AmdPki:
    return make_amd_pki()


# --- AMD: what passes ---------------------------------------------------------------------------


def test_without_a_crl_snp_revocation_is_unchecked(amd: AmdPki) -> None:
    claims = amd.verify()
    assert claims.get("revocation") == "unchecked"  # type: ignore[attr-defined]
    assert "collateral_stale_days" not in claims.details  # type: ignore[attr-defined]


def test_a_valid_ark_crl_gives_revocation_checked(amd: AmdPki) -> None:
    claims = amd.verify(amd.crl([12345]))
    assert claims.get("revocation") == "checked"  # type: ignore[attr-defined]
    assert claims.get("collateral_stale_days") == 0  # type: ignore[attr-defined]
    assert claims.to_json()["revocation"] == "checked"  # type: ignore[attr-defined]


def test_an_ask_crl_alone_does_not_cover_the_ask(amd: AmdPki) -> None:
    claims = amd.verify(amd.crl(by="ask"))
    assert claims.get("revocation") == "unchecked"  # type: ignore[attr-defined]
    both = amd.verify(amd.crl(by="ask"), amd.crl())
    assert both.get("revocation") == "checked"  # type: ignore[attr-defined]


def test_pem_crls_load_and_garbage_is_an_input_error(amd: AmdPki) -> None:
    crl = x509.load_der_x509_crl(amd.crl())
    pem = crl.public_bytes(Encoding.PEM)
    loaded = load_amd_crls([pem])
    assert len(loaded) == 1
    assert loaded[0].issuer == amd.ark.subject
    with pytest.raises(InputError, match=r"CRL 1 is not a readable X\.509 CRL"):
        load_amd_crls([b"not a crl"])


# --- AMD: the attacks ---------------------------------------------------------------------------


def test_a_vcek_listed_by_its_ask_is_refused(amd: AmdPki) -> None:
    with pytest.raises(ChainError) as caught:
        amd.verify(amd.crl([amd.vcek.serial_number], by="ask"), amd.crl())
    text = caught.value.message
    assert f"certificate 'SEV-VCEK' (serial {amd.vcek.serial_number:x}) of the VCEK chain was revoked" in text
    assert "by 'SEV-Milan'" in text


def test_a_vcek_listed_in_the_ark_crl_is_refused(amd: AmdPki) -> None:
    # AMD's KDS CRL is issued by the ARK and speaks for the product line: a VCEK it lists is out.
    with pytest.raises(ChainError, match=f"'SEV-VCEK' \\(serial {amd.vcek.serial_number:x}\\).*'ARK-Milan'"):
        amd.verify(amd.crl([amd.vcek.serial_number]))


def test_an_ask_listed_in_the_ark_crl_is_refused(amd: AmdPki) -> None:
    with pytest.raises(ChainError) as caught:
        amd.verify(amd.crl([1, amd.ask.serial_number, 2]))
    assert f"certificate 'SEV-Milan' (serial {amd.ask.serial_number:x})" in caught.value.message
    assert caught.value.message.count(".") <= 1  # one sentence
    assert caught.value.hint


def test_a_crl_signed_by_another_key_is_refused(amd: AmdPki) -> None:
    forged = amd.crl(key=ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(
        CollateralError, match="the CRL naming 'ARK-Milan' as issuer is not signed by the 'ARK-Milan'"
    ):
        amd.verify(forged)
    # The ASK's key cannot stand in for the ARK's either.
    with pytest.raises(CollateralError, match="not signed"):
        amd.verify(amd.crl(key=amd.ask_key))


def test_an_expired_crl_is_refused_unless_the_caller_allows_its_age(amd: AmdPki) -> None:
    expired = amd.crl(next_update=NOW - timedelta(days=2, hours=1))
    with pytest.raises(CollateralError, match="the CRL of 'ARK-Milan' is stale") as caught:
        amd.verify(expired)
    assert "allowed" not in caught.value.message
    with pytest.raises(CollateralError, match="3 days past, more than the 2 allowed"):
        amd.verify(expired, allow_stale_days=2)
    claims = amd.verify(expired, allow_stale_days=3)
    assert claims.get("revocation") == "checked"  # type: ignore[attr-defined]
    assert claims.get("collateral_stale_days") == 3  # type: ignore[attr-defined]


def test_a_crl_for_another_issuer_is_refused(amd: AmdPki) -> None:
    other = make_amd_pki()
    genoa = amd.crl(issuer_name="ARK-Genoa")
    with pytest.raises(
        CollateralError,
        match="the CRL issued by 'O=Advanced Micro Devices,CN=ARK-Genoa' is not for the VCEK chain",
    ):
        amd.verify(genoa)
    # Another chain's ARK CRL, same names: it names the ARK but is not signed by this one.
    with pytest.raises(CollateralError, match="not signed"):
        amd.verify(other.crl())


def test_a_listed_vcek_is_refused_through_evidence_and_bundles(amd: AmdPki) -> None:
    revoked = amd.crl([amd.vcek.serial_number])
    report = amd.tee.mint(expected_report_data(NONCE, HOST_KEY))
    ev = Evidence(kind="snp", report=report, vek=amd.vcek, chain=(amd.ask, amd.ark))
    assert verify(ev, at=NOW, roots=amd.roots).get("revocation") == "unchecked"
    assert verify(ev, at=NOW, roots=amd.roots, crls=[amd.crl()]).get("revocation") == "checked"
    with pytest.raises(ChainError, match="revoked"):
        verify(ev, at=NOW, roots=amd.roots, crls=[revoked])
    pem = (amd.ask.public_bytes(Encoding.PEM) + amd.ark.public_bytes(Encoding.PEM)).decode()
    fields = {
        "report": base64.b64encode(report).decode(),
        "vcek": amd.vcek.public_bytes(Encoding.PEM).decode(),
        "chain": pem,
    }

    def bundle(**extra: object) -> bytes:
        return serialize_bundle(
            "snp",
            {**fields, **extra},  # type: ignore[dict-item]
            nonce=NONCE,
            host_key_sha256=HOST_KEY,
            source="test",
            collected_at="2024-06-01T00:00:00Z",
        )

    plain = parse_bundle(bundle())
    assert verify_bundle(plain, at=NOW, roots=amd.roots).get("revocation") == "unchecked"
    with pytest.raises(ChainError, match="revoked"):
        verify_bundle(plain, at=NOW, roots=amd.roots, crls=[revoked])
    # A CRL the bundle carries counts too (it must verify to the chain's CAs to count at all).
    carried = parse_bundle(bundle(crls=[base64.b64encode(revoked).decode()]))
    with pytest.raises(ChainError, match="revoked"):
        verify_bundle(carried, at=NOW, roots=amd.roots)
    clean = parse_bundle(bundle(crls=[base64.b64encode(amd.crl()).decode()]))
    assert verify_bundle(clean, at=NOW, roots=amd.roots).get("revocation") == "checked"


def test_real_milan_chain_refuses_a_forged_ark_crl(read_vector) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.attest.certs import load_certificate, load_certificates
    from jupyter_cc.decoding import decode_blob

    report = snp.parse_report(decode_blob(read_vector("snp/milan-v2.report.hex"), what="report"))
    vcek = load_certificate(read_vector("snp/milan-v2.vcek.der"))
    chain = load_certificates(read_vector("amd/ask_ark_milan.pem"))
    forged = tc.load_crl(make_amd_pki().crl())  # names ARK-Milan (AMD's organization), other key
    assert forged.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ARK-Milan"
    assert snp.verify_report(report, vcek, chain, at=NOW).get("revocation") == "unchecked"
    with pytest.raises(CollateralError, match="CRL"):
        snp.verify_report(report, vcek, chain, at=NOW, crls=[forged])


# --- TDX ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def intel() -> SyntheticPki:
    return make_pki()


def _tdx_bundle(quote: bytes, **extra: object) -> bytes:
    return serialize_bundle(
        "tdx",
        {"report": base64.b64encode(quote).decode(), **extra},  # type: ignore[dict-item]
        nonce=NONCE,
        host_key_sha256=HOST_KEY,
        source="test",
        collected_at="2024-06-01T00:00:00Z",
    )


@pytest.mark.parametrize("which", ["pck", "intermediate"])
def test_a_revoked_pck_or_pck_ca_is_refused_on_verify_and_bundles(intel: SyntheticPki, which: str) -> None:
    quote = build_quote(intel, QuoteSpec(report_data=expected_report_data(NONCE, HOST_KEY)))
    roots = TrustStore.of(intel.anchor)
    if which == "pck":
        revoking = intel.crl("platform", [intel.pck.serial_number])
        names = f"'Intel SGX PCK Certificate' (serial {intel.pck.serial_number:x})"
    else:
        revoking = intel.crl("root", [intel.platform.serial_number])
        names = f"'Intel SGX PCK Platform CA' (serial {intel.platform.serial_number:x})"
    ev = Evidence(kind="tdx", report=quote)
    with pytest.raises(ChainError) as caught:
        verify(ev, at=NOW, roots=roots, crls=[revoking])
    assert f"certificate {names} of the PCK chain was revoked" in caught.value.message
    with pytest.raises(ChainError, match="revoked"):
        verify_tdx(quote, at=NOW, roots=roots, crls=[revoking])
    plain = parse_bundle(_tdx_bundle(quote))
    with pytest.raises(ChainError, match="revoked"):
        verify_bundle(plain, at=NOW, roots=roots, crls=[revoking])
    carried = parse_bundle(_tdx_bundle(quote, crls=[base64.b64encode(revoking).decode()]))
    with pytest.raises(ChainError, match="revoked"):
        verify_bundle(carried, at=NOW, roots=roots)


def test_tdx_revocation_is_checked_only_with_both_crls(intel: SyntheticPki) -> None:
    quote = build_quote(intel, QuoteSpec(report_data=expected_report_data(NONCE, HOST_KEY)))
    roots = TrustStore.of(intel.anchor)
    platform, root = intel.crl("platform", [7]), intel.crl("root")
    none = verify_tdx(quote, at=NOW, roots=roots)
    assert none.get("revocation") == "unchecked"
    assert "collateral_stale_days" not in none.details
    one = verify_tdx(quote, at=NOW, roots=roots, crls=[platform])
    assert one.get("revocation") == "unchecked"
    assert one.get("collateral_stale_days") == 0
    both = verify_bundle(parse_bundle(_tdx_bundle(quote)), at=NOW, roots=roots, crls=[platform, root])
    assert both.get("revocation") == "checked"


def test_tdx_crls_signed_by_another_key_or_stale_are_refused(intel: SyntheticPki) -> None:
    quote = build_quote(intel)
    roots = TrustStore.of(intel.anchor)
    other = make_pki()
    with pytest.raises(CollateralError, match="not signed"):
        verify_tdx(quote, at=NOW, roots=roots, crls=[other.crl("platform")])
    stale = intel.crl("platform", next_update=NOW - timedelta(hours=30))
    with pytest.raises(CollateralError, match="stale"):
        verify_tdx(quote, at=NOW, roots=roots, crls=[stale])
    claims = verify_tdx(quote, at=NOW, roots=roots, crls=[stale, intel.crl("root")], allow_stale_days=2)
    assert claims.get("collateral_stale_days") == 2
    assert claims.get("revocation") == "checked"


def test_tdx_claims_with_collateral_carry_status_advisories_revocation_and_age(intel: SyntheticPki) -> None:
    quote = parse_quote(build_quote(intel))
    roots = TrustStore.of(intel.anchor)
    crls = (tc.load_crl(intel.crl("platform")), tc.load_crl(intel.crl("root")))

    def collateral(next_update: str) -> tc.TdxCollateral:
        return tc.load_collateral(
            tcb_info=tcb_info(
                intel,
                next_update=next_update,
                levels=[level("SWHardeningNeeded", advisories=["INTEL-SA-00615"])],
            ),
            qe_identity=qe_identity(intel),
            issuer_chain=intel.collateral_chain_pem(),
            crls=crls,
        )

    claims = verify_quote(quote, at=NOW, roots=roots, collateral=collateral("2039-01-01T00:00:00Z"))
    assert claims.get("tcb_status") == "SWHardeningNeeded"
    assert claims.get("advisory_ids") == ("INTEL-SA-00615",)
    assert claims.get("revocation") == "checked"
    assert claims.get("collateral_stale_days") == 0
    # Stale TCB info: refused by default with the message it always had, accepted when allowed.
    stale = collateral("2024-05-20T00:00:00Z")
    with pytest.raises(CollateralError, match="the TCB info is stale: its nextUpdate 2024-05-20"):
        verify_quote(quote, at=NOW, roots=roots, collateral=stale)
    with pytest.raises(CollateralError, match="12 days past, more than the 5 allowed"):
        verify_quote(quote, at=NOW, roots=roots, collateral=stale, allow_stale_days=5)
    aged = verify_quote(quote, at=NOW, roots=roots, collateral=stale, allow_stale_days=12)
    assert aged.get("collateral_stale_days") == 12
    assert aged.get("tcb_status") == "SWHardeningNeeded"
    # Through Evidence, the allowance reaches the verifier the registry names.
    ev = Evidence(
        kind="tdx",
        report=build_quote(intel),
        tcb_info=tcb_info(intel, next_update="2024-05-20T00:00:00Z"),
        qe_identity=qe_identity(intel),
        collateral_chain=intel.collateral_chain_pem(),
    )
    with pytest.raises(CollateralError, match="stale"):
        verify(ev, at=NOW, roots=roots)
    assert verify(ev, at=NOW, roots=roots, allow_stale_days=12).get("collateral_stale_days") == 12


def test_real_intel_crls_give_revocation_checked(read_vector) -> None:  # type: ignore[no-untyped-def]
    quote = read_vector("tdx/spr-e4-v4.quote.bin")
    crls = [read_vector("tdx/root-ca-crl.der"), read_vector("tdx/pck-platform-crl.der")]
    claims = verify_tdx(quote, at=COLLATERAL_TIME, crls=crls)
    assert claims.get("revocation") == "checked"
    assert claims.get("collateral_stale_days") == 0
    # The platform CRL's nextUpdate is 2023-07-08T07:27:52Z: three days later it is stale.
    later = datetime(2023, 7, 10, 12, tzinfo=timezone.utc)
    with pytest.raises(CollateralError, match="the CRL of 'Intel SGX PCK Platform CA' is stale"):
        verify_tdx(quote, at=later, crls=crls)
    aged = verify_tdx(quote, at=later, crls=crls, allow_stale_days=3)
    assert aged.get("collateral_stale_days") == 3
    assert aged.get("revocation") == "checked"
    # The QE identity alongside: Intel's TD QE at an UpToDate level.
    with pytest.raises(Exception, match="no TCB level"):  # go-tdx-guest's sample TCB info matches no level
        verify_tdx(
            quote,
            at=COLLATERAL_TIME,
            tcb_info=read_vector("tdx/tcb-info-50806f000000.json"),
            qe_identity=read_vector("tdx/qe-identity.json"),
            collateral_chain=read_vector("tdx/tcb-info-issuer-chain.pem"),
            crls=crls,
        )


def test_stale_days_round_up() -> None:
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert stale_days(None, t) == 0
    assert stale_days(t, t) == 0
    assert stale_days(t, t + timedelta(seconds=1)) == 1
    assert stale_days(t, t + timedelta(days=2)) == 2
