"""Upstream Trustee compatibility: the JWE, protocol versions, evidence translation, init-data.

The broker must read what guest-components' attesters send, bind it to the session exactly as
upstream does, and answer a JWE upstream clients open whatever their JSON map order; jupyter-cc's
client must open trustee's JWEs. Real vectors from ../shared/vectors go through the translation
and are stopped at the binding check (they were made for other nonces).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.decoding import decode_blob
from jupyter_cc.errors import BindingError, FormatError
from jupyter_cc.kbs import upstream
from jupyter_cc.kbs.broker import verify_tee_evidence
from jupyter_cc.kbs.protocol import (
    KbsError,
    canonical_json,
    decrypt_response,
    encrypt_response,
    parse_version,
    runtime_data_digest,
    tee_pubkey_jwk,
)
from tests.support.fake_trustee import FakeTrustee
from tests.support.upstream_kbs_client import UpstreamClient, jcs, unb64u
from tests.support.upstream_vectors import az_snp_primary, milan, snp_primary, tdx_primary

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)


def upstream_client() -> UpstreamClient:
    """An UpstreamClient used offline (its key pair and JWE code only)."""
    client = UpstreamClient.__new__(UpstreamClient)
    client.map_order = "sorted"
    client.key = ec.generate_private_key(ec.SECP256R1())
    client.pubkey = tee_pubkey_jwk(client.key)
    return client


# --- the JWE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "insertion"])
def test_broker_jwe_opens_in_an_upstream_client_whatever_its_map_order(order: str) -> None:
    client = upstream_client()
    client.map_order = order
    doc = encrypt_response(client.pubkey, b"the key")
    assert client.decrypt(doc) == b"the key"
    header_bytes = unb64u(doc["protected"])
    header = json.loads(header_bytes)
    # The bytes are their own sorted re-serialization: no client order can differ.
    assert json.dumps(header, sort_keys=True, separators=(",", ":")).encode() == header_bytes
    assert list(header) == ["alg", "enc", "epk"] and list(header["epk"]) == ["crv", "kty", "x", "y"]
    assert set(doc) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}


def test_an_unsorted_header_breaks_a_sorting_client_which_is_why_we_sort() -> None:
    """The failure the sorted header prevents, shown with trustee-like JWEs of another order."""
    client = upstream_client()
    kbs = FakeTrustee(epk_order=("kty", "crv", "x", "y"))
    doc = kbs.jwe(client.pubkey, b"k")
    with pytest.raises(AssertionError, match="sorted re-serialized"):
        client.decrypt(doc)
    client.map_order = "insertion"
    assert client.decrypt(doc) == b"k"


@pytest.mark.parametrize(
    ("epk_order", "aad"),
    [
        (("crv", "kty", "x", "y"), "sent"),
        (("kty", "crv", "x", "y"), "sent"),
        (("y", "x", "kty", "crv"), "resorted"),
    ],
)
def test_our_client_opens_trustee_jwes_of_any_header_order(epk_order: tuple[str, ...], aad: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = FakeTrustee(epk_order=epk_order, aad=aad).jwe(tee_pubkey_jwk(key), b"material")
    assert decrypt_response(doc, key) == b"material"


def test_rsa_jwe_both_ways() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert decrypt_response(encrypt_response(tee_pubkey_jwk(key), b"r"), key) == b"r"
    assert decrypt_response(FakeTrustee().jwe(tee_pubkey_jwk(key), b"t"), key) == b"t"


def test_a_tampered_or_misdirected_jwe_never_opens() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = encrypt_response(tee_pubkey_jwk(key), b"secret")
    for member in ("ciphertext", "tag", "iv", "encrypted_key"):
        raw = bytearray(unb64u(doc[member]))
        raw[0] ^= 1
        bad = {**doc, member: base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()}
        with pytest.raises(KbsError) as caught:
            decrypt_response(bad, key)
        assert "secret" not in caught.value.diagnostics()
    header = json.loads(unb64u(doc["protected"]))
    header["zip"] = "DEF"  # a changed header changes every candidate AAD
    forged = {**doc, "protected": base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()}
    with pytest.raises(KbsError, match="InvalidTag"):
        decrypt_response(forged, key)
    with pytest.raises(KbsError):
        decrypt_response(doc, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KbsError, match=r"not .*RSA-OAEP-256"):
        decrypt_response(doc, rsa.generate_private_key(public_exponent=65537, key_size=2048))


# --- versions and the binding ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "0.4.1", "0.4.12"])
def test_protocol_0_4_x_is_accepted(version: str) -> None:
    assert parse_version(version) == version


@pytest.mark.parametrize("version", ["0.1.1", "0.5.0", "0.4", "0.4.0-rc1", "00.4.0", 4, None, "0.4.01"])
def test_other_protocol_versions_are_refused_in_one_sentence(version: Any) -> None:
    with pytest.raises(KbsError, match=r"0\.4\.x") as caught:
        parse_version(version)
    assert caught.value.message.count(". ") == 0


def test_our_canonical_json_matches_an_independent_jcs() -> None:
    jwk = tee_pubkey_jwk(ec.generate_private_key(ec.SECP256R1()))
    doc = {"tee-pubkey": jwk, "nonce": "bm9uY2U=", "additional-evidence": '{"nvidia":{}}'}
    assert canonical_json(doc) == jcs(doc)


# --- evidence translation ----------------------------------------------------------------------


def test_snp_report_round_trips_through_sevs_serde_shape(vectors: Path) -> None:
    report, _ = milan(vectors)
    doc = upstream.serialize_snp_report(report)
    assert doc["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert doc["policy"] == 0x30000
    assert upstream.snp_report_bytes(doc) == report
    assert upstream.snp_report_bytes(base64.b64encode(report).decode()) == report
    assert upstream.snp_report_bytes(list(report)) == report
    with pytest.raises(FormatError, match="no measurement"):
        upstream.snp_report_bytes({k: v for k, v in doc.items() if k != "measurement"})
    with pytest.raises(FormatError, match="not 1184"):
        upstream.snp_report_bytes(list(report[:-1]))


def test_upstream_snp_evidence_is_read_into_the_verifier_input(vectors: Path) -> None:
    read = upstream.primary_evidence("snp", snp_primary(vectors), b"\x00" * 48)
    assert read.evidence is not None and read.format == "snp"
    assert read.evidence.kind == "snp" and read.evidence.binary() == milan(vectors)[0]
    assert read.evidence.vek is not None
    assert [c.subject.rfc4514_string().split(",")[0] for c in read.evidence.chain] == [
        "CN=SEV-Milan",
        "CN=ARK-Milan",
    ]
    with pytest.raises(FormatError, match="tdx quote"):
        upstream.primary_evidence("tdx", snp_primary(vectors), b"")  # Request.tee is tdx


def session_inputs() -> dict[str, Any]:
    jwk = tee_pubkey_jwk(ec.generate_private_key(ec.SECP256R1()))
    return {"nonce": base64.b64encode(b"n" * 32).decode(), "tee_pubkey": jwk, "hash_algorithm": "sha384"}


def composite(primary: Any, additional: str = "") -> dict[str, Any]:
    return {"primary_evidence": primary, "additional_evidence": additional}


def test_a_real_snp_vector_reaches_the_binding_check_and_fails_on_the_nonce(vectors: Path) -> None:
    with pytest.raises(BindingError, match="REPORT_DATA is d447b55d197491bf"):
        verify_tee_evidence("snp", composite(snp_primary(vectors)), at=AT, **session_inputs())


def test_a_real_tdx_vector_reaches_the_binding_check_and_fails_on_the_nonce(vectors: Path) -> None:
    primary = tdx_primary(vectors)
    read = upstream.primary_evidence("tdx", primary, b"")
    assert read.evidence is not None and read.evidence.kind == "tdx"
    with pytest.raises(BindingError, match="REPORTDATA is 6c62dec1b8191749"):
        verify_tee_evidence("tdx", composite(primary), at=AT, **session_inputs())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_real_az_snp_vtpm_vector_is_read_and_fails_on_the_tpm_nonce(vectors: Path, legacy: bool) -> None:
    primary = az_snp_primary(vectors, legacy=legacy)
    read = upstream.primary_evidence("az-snp-vtpm", primary, b"d" * 32)
    assert read.tpm_bound and read.evidence is not None and read.evidence.nonce == b"d" * 32
    assert read.evidence.vek is not None and read.evidence.tpm_sig is not None
    inputs = {**session_inputs(), "hash_algorithm": "sha256"}
    with pytest.raises(BindingError, match="qualifying data"):
        verify_tee_evidence("az-snp-vtpm", composite(primary), at=AT, **inputs)


def test_az_tdx_vtpm_shape_is_read(vectors: Path) -> None:
    hcl = (vectors / "azure/tdx-vtpm.hcl-report.bin").read_bytes()
    msg = (vectors / "azure/snp-vtpm.tpm-quote.msg").read_bytes()
    primary = {
        "tpm_quote": {"signature": "00", "message": msg.hex(), "pcrs": []},
        "hcl_report": list(hcl),
        "td_quote": [1, 2],
    }
    read = upstream.primary_evidence("az-tdx-vtpm", primary, b"e" * 32)
    assert (
        read.evidence is not None
        and read.evidence.kind == "az-tdx-vtpm"
        and read.evidence.td_quote == b"\x01\x02"
    )
    with pytest.raises(BindingError, match="qualifying data"):
        verify_tee_evidence(
            "az-tdx-vtpm", composite(primary), at=AT, **{**session_inputs(), "hash_algorithm": "sha256"}
        )


# --- sample, additional evidence, init-data -----------------------------------------------------


def sample_for(inputs: dict[str, Any], additional: str = "", *, nonce: str | None = None) -> dict[str, Any]:
    digest = runtime_data_digest(
        nonce or inputs["nonce"],
        inputs["tee_pubkey"],
        inputs["hash_algorithm"],
        additional_evidence=additional,
    )
    return {"svn": "1", "report_data": base64.b64encode(digest).decode()}


def test_unsigned_sample_is_simulated_and_bound_to_the_session() -> None:
    inputs = session_inputs()
    claims = verify_tee_evidence("sample", composite(sample_for(inputs)), **inputs)
    assert claims.kind == "sim-snp" and claims.simulated
    assert claims.get("signed") is False and claims.get("evidence_format") == "sample"
    other = sample_for(inputs, nonce=base64.b64encode(b"m" * 32).decode())
    with pytest.raises(BindingError):  # another session's nonce
        verify_tee_evidence("sample", composite(other), **inputs)
    digest = runtime_data_digest(inputs["nonce"], inputs["tee_pubkey"], "sha384")
    old = {"svn": "1", "report_data": base64.b64encode(digest).decode()}
    with pytest.raises(BindingError):  # binding made without the additional-evidence member
        verify_tee_evidence("sample", composite(old), **inputs)
    with pytest.raises(FormatError, match="primary_evidence"):  # 0.1.x bare evidence
        verify_tee_evidence("sample", sample_for(inputs), **inputs)


def test_request_tee_must_match_the_evidence_kind() -> None:
    inputs = session_inputs()
    with pytest.raises(FormatError, match="tdx quote"):
        verify_tee_evidence("tdx", composite(sample_for(inputs)), **inputs)
    with pytest.raises(FormatError, match="no verifier for cca"):
        verify_tee_evidence("cca", composite({"token": "x"}), **inputs)
    native = {"kind": "tdx", "evidence": {"report": "AA=="}}
    with pytest.raises(FormatError, match="not sample evidence"):
        verify_tee_evidence("sample", composite(native), **inputs)


def test_additional_evidence_is_verified_or_the_request_refused(vectors: Path) -> None:
    inputs = session_inputs()
    for text, match in (
        ('{"sampledevice": {}}', "cannot verify: sampledevice"),
        ("not json", "not JSON"),
        ('{"nvidia": {"device_evidence_list": []}}', "1 to 8 devices"),
    ):
        with pytest.raises(FormatError, match=match):
            verify_tee_evidence("sample", composite(sample_for(inputs, text), text), **inputs)
    report = decode_blob((vectors / "nvidia/h100.report.hex").read_bytes(), what="report")
    chain = (vectors / "nvidia/h100.chain.pem").read_bytes()
    gpu = {
        "arch": "HOPPER",
        "uuid": "GPU-1",
        "evidence": base64.b64encode(report).decode(),
        "certificate": base64.b64encode(chain).decode(),
    }
    text = json.dumps({"nvidia": {"device_evidence_list": [gpu]}})
    devices = upstream.additional_evidence(text, b"\x07" * 48)
    assert devices[0].kind == "nvidia" and devices[0].nonce == b"\x07" * 32 and devices[0].binary() == report
    # The real GPU report signed another nonce: verified, and refused for it.
    with pytest.raises(BindingError, match="GPU report answers nonce 931d8dd0"):
        verify_tee_evidence("sample", composite(sample_for(inputs, text), text), at=AT, **inputs)


INIT_TOML = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"policy.rego" = "package agent_policy"\n'


def test_init_data_is_parsed_hashed_and_must_match_host_data() -> None:
    init = upstream.parse_init_data({"format": "toml", "body": INIT_TOML})
    assert init is not None and init.algorithm == "sha256"
    import hashlib

    assert init.digest == hashlib.sha256(INIT_TOML.encode()).digest()
    claims = upstream.init_data_claims(init)
    assert claims["data"]["data"] == {"policy.rego": "package agent_policy"}
    upstream.check_init_data(init, "snp", {"host_data": init.digest.hex()})
    with pytest.raises(BindingError, match="HOST_DATA"):
        upstream.check_init_data(init, "snp", {"host_data": "00" * 32})
    upstream.check_init_data(init, "tdx", {"mrconfigid": (init.digest + bytes(16)).hex()})
    with pytest.raises(BindingError, match="cannot be checked for az-snp-vtpm"):
        upstream.check_init_data(init, "az-snp-vtpm", {})
    for bad in (
        {"format": "yaml", "body": ""},
        {"format": "toml", "body": "= ="},
        {"format": "toml", "body": 'algorithm = "md5"'},
    ):
        with pytest.raises(FormatError):
            upstream.parse_init_data(bad)


def test_init_data_with_unsigned_sample_is_refused() -> None:
    inputs = session_inputs()
    with pytest.raises(BindingError, match="init-data cannot be checked"):
        verify_tee_evidence(
            "sample", composite(sample_for(inputs)), init_data={"format": "toml", "body": INIT_TOML}, **inputs
        )


# --- our client's upstream shapes ----------------------------------------------------------------


def vector_fields(vectors: Path, kind: str) -> dict[str, str]:
    """What the guest collectors return for ``kind``, filled from the real vectors."""

    def b64(name: str) -> str:
        return base64.b64encode((vectors / name).read_bytes()).decode()

    if kind == "snp":
        report, vcek = milan(vectors)
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = load_certificates(vcek, what="vcek")[0].public_bytes(Encoding.PEM).decode()
        chain = (vectors / "amd/ask_ark_milan.pem").read_text()
        return {"report": base64.b64encode(report).decode(), "vcek": cert, "chain": chain}
    if kind == "tdx":
        return {"report": b64("tdx/spr-e4-v4.quote.bin")}
    tpm = {"tpm_quote": b64("azure/snp-vtpm.tpm-quote.msg"), "tpm_sig": b64("azure/snp-vtpm.tpm-quote.sig")}
    if kind == "az-snp-vtpm":
        return {
            "report": b64("azure/snp-vtpm.hcl-report.bin"),
            "vcek": (vectors / "azure/snp-vtpm.vcek-chain.pem").read_text(),
            **tpm,
        }
    return {"report": b64("azure/tdx-vtpm.hcl-report.bin"), "td_quote": b64("tdx/spr-e4-v4.quote.bin"), **tpm}


@pytest.mark.parametrize("kind", ["snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm"])
def test_our_clients_upstream_shapes_read_back_to_the_same_evidence(vectors: Path, kind: str) -> None:
    from jupyter_cc.keys.kbs_client import _upstream_evidence

    fields = vector_fields(vectors, kind)
    tee, primary = _upstream_evidence(kind, fields, b"\x01" * 32)
    assert tee == kind
    json.dumps(primary)  # plain JSON, as it goes on the wire
    read = upstream.primary_evidence(tee, primary, b"\x01" * 32)
    assert read.evidence is not None and read.evidence.kind == kind
    assert read.evidence.binary() == base64.b64decode(fields["report"])
    if kind in ("snp", "az-snp-vtpm"):
        assert read.evidence.vek is not None
    if kind.startswith("az-"):
        assert read.evidence.tpm_quote == base64.b64decode(fields["tpm_quote"])
        assert read.evidence.tpm_sig == base64.b64decode(fields["tpm_sig"])
    if kind == "snp":
        assert [e["cert_type"] for e in primary["cert_chain"]] == ["VCEK", "ASK", "ARK"]


def test_auto_guesses_snp_and_starts_again_under_the_tee_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_cc.guest import collectors
    from jupyter_cc.keys import kbs_client, release
    from tests.support.fake_trustee import serve_trustee

    real = collectors.collect_cpu_evidence
    seen: list[str] = []

    def collect(report_data: bytes, *, tee: str = "auto", **kw: Any) -> Any:
        seen.append(tee)
        return real(report_data, tee="sim", **kw)  # a guest whose only evidence is the simulator's

    monkeypatch.setattr(kbs_client, "collect_cpu_evidence", collect)
    kbs = FakeTrustee(resources={"default/key/k": b"found"})
    with serve_trustee(kbs) as port:
        assert release(f"kbs+http://127.0.0.1:{port}/default/key/k", tee="auto").material == b"found"
    assert seen == ["auto", "sim"]
    assert [(path, body.get("tee")) for _, path, body in kbs.requests][:2] == [
        ("/kbs/v0/auth", "snp"),
        ("/kbs/v0/auth", "sample"),
    ]


def signed_sample(inputs: dict[str, Any], host_data: bytes) -> dict[str, Any]:
    """The simulated TEE's signed report for this session, in the sample shape our client sends."""
    from jupyter_cc.attest.sim import SimulatedTee
    from jupyter_cc.kbs.protocol import report_data_for

    digest = runtime_data_digest(inputs["nonce"], inputs["tee_pubkey"], "sha384", additional_evidence="")
    report = SimulatedTee.load_or_create().mint(report_data_for(digest), host_data=host_data)
    native = {"kind": "sim-snp", "evidence": {"report": base64.b64encode(report).decode()}}
    return {"svn": "1", "report_data": base64.b64encode(digest).decode(), "jupyter-cc": native}


def test_init_data_bound_in_host_data_is_offered_in_the_claims() -> None:
    import hashlib

    init = {"format": "toml", "body": INIT_TOML}
    inputs = session_inputs()
    good = signed_sample(inputs, hashlib.sha256(INIT_TOML.encode()).digest())
    claims = verify_tee_evidence("sample", composite(good), init_data=init, **inputs)
    assert claims.simulated and claims.get("evidence_format") == "sample"
    offered = claims.get("init_data")
    assert offered["digest"] == hashlib.sha256(INIT_TOML.encode()).hexdigest()
    assert offered["data"]["data"]["policy.rego"] == "package agent_policy"
    assert json.loads(json.dumps(claims.to_json()))["init_data"]["algorithm"] == "sha256"
    # The same evidence with other init-data, or evidence made for no init-data: refused.
    other = {"format": "toml", "body": INIT_TOML + "# changed\n"}
    with pytest.raises(BindingError, match="HOST_DATA"):
        verify_tee_evidence("sample", composite(good), init_data=other, **inputs)
    plain = signed_sample(inputs, bytes(32))
    with pytest.raises(BindingError, match="HOST_DATA"):
        verify_tee_evidence("sample", composite(plain), init_data=init, **inputs)
    # The signed report and the sample's own report_data must agree.
    forged = {**plain, "report_data": base64.b64encode(b"\x00" * 48).decode()}
    with pytest.raises(BindingError, match="sample report_data"):
        verify_tee_evidence("sample", composite(forged), **inputs)
