"""A forged TD quote, refused on every path: its quoting enclave is not Intel's TD QE.

Intel's PCE certifies the REPORT of any non-debug enclave that has the PROVISION_KEY attribute,
so a host able to launch such an enclave gets a PCK-signed QE report for an attestation key of
its own, and then signs any TD body it likes. Every signature and binding of such a quote
verifies; only the QE's identity (MRSIGNER, ISVPRODID, masked ATTRIBUTES and MISCSELECT) says
it is not Intel's TD quoting enclave. These tests build that quote under a test PCK chain
(trusted through the injectable :class:`TrustStore`) with MRSIGNER ``41..41`` and ISVPRODID 7,
and show it is refused by ``verify_tdx``, by the bundle path under the default policy and
under a policy pinning its MRTD, by ``az-tdx-vtpm``, and by the key broker, while the same
quote made by Intel's QE identity passes each of them.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jupyter_cc.attest import azure
from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.evidence import parse_bundle, serialize_bundle, verify_bundle
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.attest.tdx import collateral as tc
from jupyter_cc.attest.tdx import parse_quote, verify_quote, verify_tdx
from jupyter_cc.attest.tdx import qe as tq
from jupyter_cc.errors import CCError, ChainError, CollateralError
from jupyter_cc.kbs.broker import Broker, RequestRefusedError
from jupyter_cc.kbs.protocol import report_data_for, runtime_data_digest, tee_pubkey_jwk
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.policy import Policy, appraise
from tests.support import azure_builder as ab
from tests.support.fake_pcs import FakeService, serve
from tests.support.synthetic_pcs import synthetic_routes, synthetic_service
from tests.support.tdx_builder import (
    QuoteSpec,
    SyntheticPki,
    build_quote,
    make_pki,
    qe_identity,
    tcb_info,
)

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
FORGED_MRSIGNER = b"\x41" * 32
FORGED_PRODID = 7
MRTD = bytes(range(100, 148))


@pytest.fixture(scope="module")
def pki() -> SyntheticPki:
    return make_pki()


@pytest.fixture(scope="module")
def roots(pki: SyntheticPki) -> TrustStore:
    return TrustStore.of(pki.anchor)


def forged_spec(**changes: Any) -> QuoteSpec:
    return QuoteSpec(qe_mrsigner=FORGED_MRSIGNER, qe_isvprodid=FORGED_PRODID, mrtd=MRTD, **changes)


def genuine_spec(**changes: Any) -> QuoteSpec:
    return QuoteSpec(mrtd=MRTD, **changes)


def assert_names_the_qe(exc: CCError) -> None:
    text = exc.diagnostics()
    assert "Intel's TD quoting enclave" in text
    assert FORGED_MRSIGNER.hex() in text
    assert f"ISVPRODID {FORGED_PRODID}" in text
    assert tq.INTEL_TD_QE.mrsigner.hex() in text  # the identity it should have had


# --- verify_quote / verify_tdx (what ``jupyter-cc verify tdx`` runs) -------------------------


def test_forged_qe_is_refused_by_verify_tdx(pki: SyntheticPki, roots: TrustStore) -> None:
    forged = build_quote(pki, forged_spec())
    with pytest.raises(ChainError) as caught:
        verify_tdx(forged, at=AT, roots=roots)
    assert_names_the_qe(caught.value)
    with pytest.raises(ChainError, match="quoting enclave"):
        verify_quote(parse_quote(forged), at=AT, roots=roots)
    # Intel's QE identity, same PKI, same TD: accepted, so the refusal is the QE's alone.
    assert verify_tdx(build_quote(pki, genuine_spec()), at=AT, roots=roots).get("mrtd") == MRTD.hex()


@pytest.mark.parametrize(
    ("change", "observed"),
    [
        ({"qe_mrsigner": FORGED_MRSIGNER}, f"MRSIGNER {FORGED_MRSIGNER.hex()}"),
        ({"qe_isvprodid": FORGED_PRODID}, f"ISVPRODID {FORGED_PRODID}"),
        # bit 1 of ATTRIBUTES is DEBUG, which the mask keeps: a debug QE is not Intel's TD QE.
        ({"qe_attributes": bytes.fromhex("13000000000000000000000000000000")}, "ATTRIBUTES 1300"),
    ],
)
def test_each_pinned_fact_is_judged(
    pki: SyntheticPki, roots: TrustStore, change: dict[str, Any], observed: str
) -> None:
    with pytest.raises(ChainError, match=observed):
        verify_tdx(build_quote(pki, QuoteSpec(**change)), at=AT, roots=roots)


def test_masked_out_attribute_bits_do_not_matter(pki: SyntheticPki, roots: TrustStore) -> None:
    # Byte 0 bit 2 (MODE64BIT... cleared by the mask FB) and bytes 8-15 (XFRM) are outside the mask.
    attributes = bytes.fromhex("15000000000000000700000000000000")
    assert verify_tdx(build_quote(pki, QuoteSpec(qe_attributes=attributes)), at=AT, roots=roots)


def test_miscselect_is_judged(pki: SyntheticPki) -> None:
    # The builder writes MISCSELECT 0; a QE report saying otherwise fails the pinned identity.
    report = parse_quote(build_quote(pki, genuine_spec())).qe_report
    tq.check_qe_report(report)
    with pytest.raises(ChainError, match=r"MISCSELECT 0x00000001 \(masked 0x00000001\)"):
        tq.check_qe_report(dataclasses.replace(report, miscselect=1))


def test_with_collateral_the_qe_identity_decides(pki: SyntheticPki, roots: TrustStore) -> None:
    collateral = tc.load_collateral(
        tcb_info=tcb_info(pki), qe_identity=qe_identity(pki), issuer_chain=pki.collateral_chain_pem()
    )
    quote = parse_quote(build_quote(pki, forged_spec()))
    with pytest.raises(CollateralError, match="MRSIGNER"):
        verify_quote(quote, at=AT, roots=roots, collateral=collateral)
    genuine = verify_quote(
        parse_quote(build_quote(pki, genuine_spec())), at=AT, roots=roots, collateral=collateral
    )
    assert genuine.get("qe_tcb_status") == "UpToDate"


def test_real_quote_comes_from_intels_qe(read_vector) -> None:  # type: ignore[no-untyped-def]
    quote = parse_quote(read_vector("tdx/spr-e4-v4.quote.bin"))
    tq.check_qe_report(quote.qe_report)
    claims = verify_quote(quote, at=datetime(2023, 7, 1, tzinfo=timezone.utc))
    assert claims.get("mrtd").startswith("6363b8043668a3ad")


# --- the evidence bundle (what the provisioner, %attest and the Hub judge) -------------------


def tdx_bundle(quote_of: Any, nonce: bytes, host_key: bytes) -> bytes:
    quote = quote_of(expected_report_data(nonce, host_key))
    return serialize_bundle(
        "tdx",
        {"report": base64.b64encode(quote).decode()},
        nonce=nonce,
        host_key_sha256=host_key,
        source="tdx-guest",
        collected_at="2024-06-01T00:00:00Z",
    )


@pytest.mark.parametrize(
    "policy",
    [Policy(), Policy(name="pinned-mrtd", tdx_mrtd=(MRTD.hex(),))],
    ids=["default", "pinned-mrtd"],
)
def test_forged_qe_is_refused_in_a_bundle(pki: SyntheticPki, roots: TrustStore, policy: Policy) -> None:
    nonce, host_key = os.urandom(32), os.urandom(32)

    def genuine(rd: bytes) -> bytes:
        return build_quote(pki, genuine_spec(report_data=rd))

    def forged(rd: bytes) -> bytes:
        return build_quote(pki, forged_spec(report_data=rd))

    good = parse_bundle(tdx_bundle(genuine, nonce, host_key))
    crls = [pki.crl("platform"), pki.crl("root")]  # revocation checked, as the kernel path does
    claims = verify_bundle(good, at=AT, nonce=nonce, host_key_sha256=host_key, roots=roots, crls=crls)
    assert appraise(claims, policy).passed  # the policy alone would let the forgery through
    bad = parse_bundle(tdx_bundle(forged, nonce, host_key))
    with pytest.raises(ChainError) as caught:
        verify_bundle(bad, at=AT, nonce=nonce, host_key_sha256=host_key, roots=roots)
    assert_names_the_qe(caught.value)


# --- az-tdx-vtpm: the TD quote made from an HCL report's TDREPORT ----------------------------


def test_forged_qe_is_refused_for_az_tdx_vtpm(pki: SyntheticPki, roots: TrustStore) -> None:
    ak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    var = ab.runtime_json(ak.public_key(), secure_boot=False)
    hcl = ab.hcl_report(ab.td_report(), var, report_type=4)
    td = azure.verify_hcl_binding(hcl).td_report()
    for spec, passes in ((genuine_spec(), True), (forged_spec(), False)):
        spec.report_data, spec.mrtd, spec.rtmr = td.report_data, td.mrtd, td.rtmr
        quote = build_quote(pki, spec)
        if passes:
            assert azure.verify_az_tdx_vtpm(hcl, td_quote=quote, at=AT, roots=roots).kind == "az-tdx-vtpm"
            continue
        with pytest.raises(ChainError) as caught:
            azure.verify_az_tdx_vtpm(hcl, td_quote=quote, at=AT, roots=roots)
        assert_names_the_qe(caught.value)


# --- the key broker ------------------------------------------------------------------------------


MRTD_POLICY = f'name = "pinned-mrtd"\ntee = ["tdx"]\n[tdx]\nmrtd = ["{MRTD.hex()}"]\n'


@pytest.fixture
def broker(tmp_path: Path, pki: SyntheticPki, roots: TrustStore) -> Any:
    store = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    store.add("default/key/strict", b"\xa5" * 32)  # the default policy
    store.add("default/key/mrtd", b"\x5a" * 32, policy_text=MRTD_POLICY)
    # The broker fetches the synthetic PKI's collateral (TCB info, QE identity, CRLs) as it
    # would Intel's.
    with serve(FakeService(synthetic_routes(pki))) as pcs:
        yield Broker(store, roots=roots, collateral=synthetic_service(pcs, tmp_path / "cache", roots))
    store.close()


def attest_with(broker: Broker, pki: SyntheticPki, spec_of: Any) -> Any:
    session = broker.auth({"version": "0.4.0", "tee": "tdx"})
    jwk = tee_pubkey_jwk(ec.generate_private_key(ec.SECP256R1()))
    digest = runtime_data_digest(session.nonce, jwk, session.hash_algorithm, additional_evidence="")
    quote = build_quote(pki, spec_of(report_data=report_data_for(digest)))
    body = {
        "runtime-data": {"nonce": session.nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": {"quote": base64.b64encode(quote).decode()},
            "additional_evidence": "",
        },
    }
    return session, body


@pytest.mark.parametrize("rid", ["default/key/strict", "default/key/mrtd"])
def test_broker_releases_no_key_for_a_forged_qe(broker: Broker, pki: SyntheticPki, rid: str) -> None:
    session, body = attest_with(broker, pki, genuine_spec)
    assert broker.attest(session, body)
    response, policy = broker.release(session, rid)
    assert response and policy
    session, body = attest_with(broker, pki, forged_spec)
    with pytest.raises(RequestRefusedError) as caught:
        broker.attest(session, body)
    assert caught.value.status == 401 and caught.value.kind == "AttestationError"
    assert "Intel's TD quoting enclave" in caught.value.detail
    assert FORGED_MRSIGNER.hex() in caught.value.detail
    with pytest.raises(RequestRefusedError) as refused:
        broker.release(session, rid)
    assert refused.value.status == 401
