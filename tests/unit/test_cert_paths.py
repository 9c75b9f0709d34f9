"""Certificate path rules of ``verify_chain``: issuers are CAs allowed keyCertSign, path lengths
hold, and an evidence-signing leaf is an end-entity certificate; the vendors' real chains pass.

Attack chains are made by a throwaway PKI and trusted through a test :class:`TrustStore`, so
each refusal is the path rule's, not the root's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from jupyter_cc.attest.certs import fingerprint, load_certificate, load_certificates, verify_chain
from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.attest.tdx import parse_quote, pck_chain
from jupyter_cc.errors import ChainError
from tests.support.fake_azure import key_usage

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)


@dataclass
class Node:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def issue(
    name: str,
    issuer: Node | None,
    *,
    ca: bool | None,
    path_length: int | None = None,
    usage: Sequence[str] | None = None,
) -> Node:
    """A certificate for ``name`` issued by ``issuer`` (self-signed when None); ``ca=None`` leaves
    BasicConstraints out, ``usage=None`` leaves keyUsage out."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(AT - timedelta(days=1))
        .not_valid_after(AT + timedelta(days=365))
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(key_usage(*usage), critical=True)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Node(name, key, cert)


def store(root: Node) -> TrustStore:
    return TrustStore.of(TrustAnchor(name=f"test {root.name}", fingerprint=fingerprint(root.cert)))


CA_USAGE = ("key_cert_sign", "crl_sign")
LEAF_USAGE = ("digital_signature",)


def good_root() -> Node:
    return issue("Test Root CA", None, ca=True, path_length=1, usage=CA_USAGE)


def test_a_vendor_shaped_chain_passes() -> None:
    root = good_root()
    ica = issue("Test Platform CA", root, ca=True, path_length=0, usage=CA_USAGE)
    leaf = issue("Test Leaf", ica, ca=False, usage=LEAF_USAGE)
    chain = [leaf.cert, ica.cert, root.cert]
    assert verify_chain(chain, roots=store(root), at=AT, end_entity="the leaf").name == "test Test Root CA"
    # A leaf with neither extension (as AMD's VCEKs are) is an end-entity certificate too.
    bare = issue("Test VCEK", ica, ca=None)
    assert verify_chain([bare.cert, ica.cert, root.cert], roots=store(root), at=AT, end_entity="the VCEK")


# --- the attack chains --------------------------------------------------------------------------


@pytest.mark.parametrize("ca", [None, False], ids=["no-basic-constraints", "ca-false"])
def test_an_issuer_that_is_not_a_ca_is_refused(ca: bool | None) -> None:
    root = good_root()
    # An end-entity certificate (say, a leaked PCK key) used to mint a certificate of its own.
    fake_ca = issue("Test Not A CA", root, ca=ca, usage=CA_USAGE)
    leaf = issue("Test Leaf", fake_ca, ca=False, usage=LEAF_USAGE)
    found = "has no BasicConstraints extension" if ca is None else "says CA=false"
    with pytest.raises(ChainError) as caught:
        verify_chain([leaf.cert, fake_ca.cert, root.cert], roots=store(root), at=AT, end_entity="the leaf")
    text = caught.value.diagnostics()
    assert f"certificate 'Test Not A CA' issued 'Test Leaf' but {found}" in text
    assert "only a certificate with BasicConstraints CA=true may issue certificates" in text


def test_a_root_that_is_not_a_ca_is_refused() -> None:
    root = issue("Test Root Without Constraints", None, ca=None, usage=CA_USAGE)
    leaf = issue("Test Leaf", root, ca=False, usage=LEAF_USAGE)
    with pytest.raises(
        ChainError, match="'Test Root Without Constraints' issued 'Test Leaf' but has no Basic"
    ):
        verify_chain([leaf.cert, root.cert], roots=store(root), at=AT)


def test_path_length_zero_cannot_issue_a_sub_ca() -> None:
    root = good_root()
    ica = issue("Test Platform CA", root, ca=True, path_length=0, usage=CA_USAGE)
    sub = issue("Test Sub CA", ica, ca=True, usage=CA_USAGE)
    leaf = issue("Test Leaf", sub, ca=False, usage=LEAF_USAGE)
    chain = [leaf.cert, sub.cert, ica.cert, root.cert]
    with pytest.raises(ChainError) as caught:
        verify_chain(chain, roots=store(root), at=AT, end_entity="the leaf")
    text = caught.value.diagnostics()
    assert "certificate 'Test Platform CA' has pathLenConstraint 0" in text
    assert "the chain puts 1 there ('Test Sub CA')" in text


def test_the_roots_path_length_counts_every_ca_below_it() -> None:
    root = good_root()  # pathLenConstraint 1
    ica = issue("Test ICA", root, ca=True, usage=CA_USAGE)
    sub = issue("Test Sub CA", ica, ca=True, usage=CA_USAGE)
    leaf = issue("Test Leaf", sub, ca=False, usage=LEAF_USAGE)
    with pytest.raises(ChainError, match=r"'Test Root CA' has pathLenConstraint 1.* puts 2 there"):
        verify_chain([leaf.cert, sub.cert, ica.cert, root.cert], roots=store(root), at=AT)


@pytest.mark.parametrize("usage", [("digital_signature",), ("crl_sign",)])
def test_an_issuer_without_key_cert_sign_is_refused(usage: tuple[str, ...]) -> None:
    root = good_root()
    ica = issue("Test Signing-Only CA", root, ca=True, path_length=0, usage=usage)
    leaf = issue("Test Leaf", ica, ca=False, usage=LEAF_USAGE)
    with pytest.raises(ChainError) as caught:
        verify_chain([leaf.cert, ica.cert, root.cert], roots=store(root), at=AT, end_entity="the leaf")
    assert (
        "certificate 'Test Signing-Only CA' issued 'Test Leaf' but its keyUsage does not allow keyCertSign"
        in caught.value.diagnostics()
    )


def test_an_evidence_signing_leaf_must_be_an_end_entity() -> None:
    root = good_root()
    ica = issue("Test Platform CA", root, ca=True, path_length=0, usage=CA_USAGE)
    ca_leaf = issue("Test CA Leaf", ica, ca=True, path_length=0, usage=(*CA_USAGE, "digital_signature"))
    chain = [ca_leaf.cert, ica.cert, root.cert]
    # As an ASK/ARK chain checked on its own the CA leaf is fine; as a VCEK or PCK it is not.
    assert verify_chain(chain, roots=store(root), at=AT)
    with pytest.raises(ChainError, match="the PCK certificate 'Test CA Leaf' has BasicConstraints CA=true"):
        verify_chain(chain, roots=store(root), at=AT, end_entity="the PCK certificate")
    enc = issue("Test Encryption Leaf", ica, ca=False, usage=("key_agreement",))
    with pytest.raises(
        ChainError, match="the VCEK 'Test Encryption Leaf' has a keyUsage that does not allow"
    ):
        verify_chain([enc.cert, ica.cert, root.cert], roots=store(root), at=AT, end_entity="the VCEK")


# --- the vendors' real chains pass the rules ----------------------------------------------------


def _real(vectors: Path, name: str) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return load_certificates((vectors / name).read_bytes())


def test_real_amd_chains_pass(vectors: Path) -> None:
    vcek = load_certificate((vectors / "snp/milan-v2.vcek.der").read_bytes())
    issued = vcek.not_valid_before_utc + timedelta(days=1)
    milan = _real(vectors, "amd/ask_ark_milan.pem")
    assert verify_chain([vcek, *milan], roots=TrustStore.hardware(), at=issued, end_entity="the VCEK")
    for product in ("milan", "genoa", "turin", "milan_vlek", "genoa_vlek", "turin_vlek"):
        chain = _real(vectors, f"amd/ask_ark_{product}.pem")
        at = max(c.not_valid_before_utc for c in chain) + timedelta(days=1)
        assert verify_chain(chain, roots=TrustStore.hardware(), at=at).product in ("Milan", "Genoa", "Turin")


def test_real_intel_chains_pass(vectors: Path) -> None:
    at = datetime(2023, 7, 1, tzinfo=timezone.utc)
    quote = parse_quote((vectors / "tdx/spr-e4-v4.quote.bin").read_bytes())
    hw = TrustStore.hardware()
    assert verify_chain(pck_chain(quote), roots=hw, at=at, end_entity="the PCK certificate")
    signing = _real(vectors, "tdx/tcb-info-issuer-chain.pem")
    assert verify_chain(signing, roots=hw, at=at, end_entity="the collateral signing certificate")
    assert verify_chain(_real(vectors, "tdx/pck-crl-issuer-chain.pem"), roots=hw, at=at)


def test_real_nvidia_chain_passes(vectors: Path) -> None:
    chain = _real(vectors, "nvidia/h100.chain.pem")
    at = max(c.not_valid_before_utc for c in chain) + timedelta(days=1)
    anchor = verify_chain(
        chain, roots=TrustStore.hardware(), at=at, end_entity="the GPU attestation certificate"
    )
    assert anchor.name == "NVIDIA Device Identity CA"
