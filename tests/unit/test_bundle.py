"""Evidence bundles: the REPORT_DATA binding of design section 6 for each kind of guest."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jupyter_cc.attest.binding import expected_report_data, host_key_digest
from jupyter_cc.attest.evidence import parse_bundle, serialize_bundle, verify_bundle
from jupyter_cc.errors import BindingError, FormatError, InputError
from tests.support import azure_builder as ab

NOW = datetime.now(timezone.utc)


def pem(*certs) -> str:  # type: ignore[no-untyped-def]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode()


def test_the_binding_is_the_contract_hash() -> None:
    nonce, key_blob = bytes(range(32)), b"ssh-ed25519 host key blob"
    import hashlib

    want = hashlib.sha512(b"jupyter-cc/v1" + nonce + hashlib.sha256(key_blob).digest()).digest()
    assert expected_report_data(nonce, host_key_digest(key_blob)) == want
    assert host_key_digest(None) == bytes(32)  # the local transport
    with pytest.raises(InputError, match="32 bytes"):
        expected_report_data(b"short", bytes(32))


def test_az_snp_vtpm_bundle_binds_through_the_runtime_user_data() -> None:
    signer = ab.SnpSigner()
    ak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nonce, host_key = os.urandom(32), os.urandom(32)

    def bundle(user_data: bytes) -> bytes:
        var = ab.runtime_json(ak.public_key(), user_data=user_data)
        digest = ab.HASHES[1](var)
        hcl = ab.hcl_report(signer.report(digest.ljust(64, b"\x00")), var, bind=False)
        return serialize_bundle(
            "az-snp-vtpm",
            {
                "report": base64.b64encode(hcl).decode(),
                "vcek": pem(signer.vcek),
                "chain": pem(*signer.chain),
            },
            nonce=nonce,
            host_key_sha256=host_key,
            source="azure-vtpm",
            collected_at="2026-01-01T00:00:00Z",
        )

    at = datetime(2024, 6, 1, tzinfo=timezone.utc)  # inside the builder's certificates
    good = parse_bundle(bundle(expected_report_data(nonce, host_key)))
    claims = verify_bundle(good, at=at, nonce=nonce, host_key_sha256=host_key, roots=signer.roots)
    assert claims.kind == "az-snp-vtpm"
    stale = parse_bundle(bundle(expected_report_data(os.urandom(32), host_key)))
    with pytest.raises(BindingError, match="REPORT_DATA"):
        verify_bundle(stale, at=at, roots=signer.roots)


def test_gpu_evidence_in_a_bundle_must_answer_the_bound_nonce(sim_tee, vectors) -> None:  # type: ignore[no-untyped-def]
    # A genuine H100 report, but requested with another nonce than this bundle binds: refused.
    nonce, host_key = os.urandom(32), bytes(32)
    report = sim_tee.mint(expected_report_data(nonce, host_key))
    gpu_report = bytes.fromhex((vectors / "nvidia/h100.report.hex").read_text())
    doc = serialize_bundle(
        "sim-snp",
        {"report": base64.b64encode(report).decode()},
        nonce=nonce,
        host_key_sha256=host_key,
        source="simulated",
        collected_at="2026-01-01T00:00:00Z",
        gpus=[
            {
                "kind": "nvidia",
                "report": base64.b64encode(gpu_report).decode(),
                "chain": (vectors / "nvidia/h100.chain.pem").read_text(),
            }
        ],
    )
    bundle = parse_bundle(doc)
    assert bundle.evidence.gpus[0].nonce == expected_report_data(nonce, host_key)[:32]
    with pytest.raises(BindingError, match="nonce"):
        verify_bundle(bundle, at=NOW)
    # Without the GPU the same bundle verifies, and the GPU claims are absent.
    alone = parse_bundle(doc.replace(b'"gpus": [', b'"gpus": [], "x": ['))
    assert verify_bundle(alone, at=NOW).gpu is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b'"version": 1', b'"version": 9'), "version 9"),
        (lambda d: d.replace(b'"kind": "sim-snp"', b'"kind": "sgx"'), "unknown kind 'sgx'"),
        (lambda d: d.replace(b'"nonce": "', b'"nonce": "zz'), "bundle nonce"),
        (lambda d: d[:-20], "not JSON"),
        (lambda d: b" " * (5 * 1024 * 1024), "more than"),
    ],
)
def test_malformed_bundles_are_refused(sim_tee, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = serialize_bundle(
        "sim-snp",
        {"report": base64.b64encode(sim_tee.mint(bytes(64))).decode()},
        nonce=bytes(32),
        host_key_sha256=bytes(32),
        source="simulated",
        collected_at="2026-01-01T00:00:00Z",
    )
    with pytest.raises(FormatError, match=message):
        parse_bundle(mutate(doc))
