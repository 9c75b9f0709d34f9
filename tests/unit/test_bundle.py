"""Evidence bundles: the REPORT_DATA binding of design section 6 for each kind of guest."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jupyter_cc.attest.binding import expected_report_data, gpu_nonce, host_key_digest
from jupyter_cc.attest.evidence import (
    check_gpu_binding,
    parse_bundle,
    serialize_bundle,
    verify_bundle,
)
from jupyter_cc.errors import BindingError, FormatError, InputError
from tests.support import azure_builder as ab
from tests.support.gpu_bundles import sim_gpu_bundle

NOW = datetime.now(timezone.utc)


def pem(*certs) -> str:  # type: ignore[no-untyped-def]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode()


def test_the_binding_is_the_contract_hash() -> None:
    nonce, key_blob = bytes(range(32)), b"ssh-ed25519 host key blob"
    import hashlib

    key = hashlib.sha256(key_blob).digest()
    # Design section 6: "jupyter-cc/v2", a u32 count, then (u16 label length, label, u32 value
    # length, value) with the labels sorted, written out by hand here.
    want = hashlib.sha512(
        b"jupyter-cc/v2" + b"\x00\x00\x00\x02"
        + b"\x00\x05nonce" + b"\x00\x00\x00\x20" + nonce
        + b"\x00\x0cssh-host-key" + b"\x00\x00\x00\x20" + key
    ).digest()  # fmt: skip
    assert expected_report_data(nonce, host_key_digest(key_blob)) == want
    assert host_key_digest(None) == bytes(32)  # the local transport
    with pytest.raises(InputError, match="32 bytes"):
        expected_report_data(b"short", bytes(32))
    # Each bound value changes the result; a label nobody defined cannot be bound.
    gpu = expected_report_data(nonce, key, {"gpu-evidence": bytes(32)})
    curve = expected_report_data(nonce, key, {"curve-server-key": bytes(32)})
    assert len({want, gpu, curve}) == 3
    with pytest.raises(InputError, match="unknown label"):
        expected_report_data(nonce, key, {"colour": b"blue"})


def test_gpu_nonces_differ_by_session_and_index() -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert len({gpu_nonce(a, 0), gpu_nonce(a, 1), gpu_nonce(b, 0)}) == 3
    assert all(len(gpu_nonce(a, i)) == 32 for i in range(8))


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
    # A genuine H100 report, bound as the bundle's GPU list, but requested with another nonce
    # than this session's gpu_nonce(nonce, 0): refused.
    gpu = {
        "kind": "nvidia",
        "report": base64.b64encode(bytes.fromhex((vectors / "nvidia/h100.report.hex").read_text())).decode(),
        "chain": (vectors / "nvidia/h100.chain.pem").read_text(),
    }
    doc, nonce = sim_gpu_bundle(sim_tee, [gpu], [gpu])
    bundle = parse_bundle(doc)
    assert bundle.evidence.gpus[0].nonce == gpu_nonce(nonce, 0)
    with pytest.raises(BindingError, match="nonce"):
        verify_bundle(bundle, at=NOW)
    # Without the GPU (and its binding) a bundle verifies, and the GPU claims are absent.
    alone, _ = sim_gpu_bundle(sim_tee, [], [])
    assert verify_bundle(parse_bundle(alone), at=NOW).gpu is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b'"version": 2', b'"version": 9'), "version 9"),
        (lambda d: d.replace(b'"version": 2', b'"version": 1'), "version 1 is not supported"),
        (lambda d: d.replace(b'"gpus": []', b'"gpus": [], "bound": {"colour": "00"}'), "binds 'colour'"),
        (lambda d: d.replace(b'"gpus": []', b'"gpus": [], "bound": {"gpu-evidence": "zz"}'), "not hex"),
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


def test_the_gpu_list_is_bound_as_a_whole(sim_tee, vectors) -> None:  # type: ignore[no-untyped-def]
    # Entries the checks below can tell apart; a GPU list other than the bound one fails on the
    # binding, before any GPU report is looked at.
    gpu = {
        "kind": "nvidia",
        "report": base64.b64encode(bytes.fromhex((vectors / "nvidia/h100.report.hex").read_text())).decode(),
        "chain": (vectors / "nvidia/h100.chain.pem").read_text(),
    }
    other = {**gpu, "chain": (vectors / "nvidia/h100-545.chain.pem").read_text()}
    attacks = {
        "dropped": ([gpu], [gpu, other]),
        "added": ([gpu, other], [gpu]),
        "reordered": ([other, gpu], [gpu, other]),
        "swapped": ([other], [gpu]),
        "unbound": ([gpu], []),
    }
    for carried, bound in attacks.values():
        doc, nonce = sim_gpu_bundle(sim_tee, carried, bound)
        bundle = parse_bundle(doc)
        with pytest.raises(BindingError, match="GPU evidence bound"):
            check_gpu_binding(bundle)
        with pytest.raises(BindingError):
            verify_bundle(bundle, at=NOW, nonce=nonce)
    # The honest list passes the binding check (the vector GPU then fails on its own nonce).
    doc, _ = sim_gpu_bundle(sim_tee, [gpu, other], [gpu, other])
    check_gpu_binding(parse_bundle(doc))
