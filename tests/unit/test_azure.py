"""Azure CVM evidence: HCL report parsing, runtime-data binding, inner reports, TPM quotes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
import sys
import types
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_cc.attest import azure, tpm
from jupyter_cc.attest.binding import expected_report_data
from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import parse_bundle, serialize_bundle, verify_bundle
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.errors import BindingError, CCError, FormatError, InputError, SignatureError
from tests.support import azure_builder as ab

AT = datetime(2024, 6, 1, tzinfo=timezone.utc)  # inside the VCEK's 2023-05-02..2030-05-02 validity
SNP_HCL = "azure/snp-vtpm.hcl-report.bin"
TDX_HCL = "azure/tdx-vtpm.hcl-report.bin"
VAR = azure.VARIABLE_DATA_OFFSET

Reader = Callable[[str], bytes]


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def var_size(hcl: bytes) -> int:
    return int(struct.unpack_from("<I", hcl, 0x4D0)[0])


@pytest.fixture(scope="module")
def ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signer() -> ab.SnpSigner:
    return ab.SnpSigner()


def snp_hcl(
    signer: ab.SnpSigner, var: bytes, *, hash_type: int = 1, measurement: bytes = b"\x42" * 48
) -> bytes:
    digest = ab.HASHES[hash_type](var)
    report = signer.report(digest.ljust(64, b"\xee"), measurement=measurement)
    return ab.hcl_report(report, var, hash_type=hash_type, bind=False)


# --- the real vectors -------------------------------------------------------------------------


@pytest.mark.vectors
def test_snp_vector_verifies(read_vector: Reader) -> None:
    certs = load_certificates(read_vector("azure/snp-vtpm.vcek-chain.pem"))
    claims = azure.verify_az_snp_vtpm(read_vector(SNP_HCL), vek_cert=certs[0], chain=certs[1:], at=AT)
    j = claims.to_json()
    assert j["tee"] == "az-snp-vtpm"
    assert j["debug"] is False
    assert j["product"] == "Milan"
    assert j["report_version"] == 2
    assert j["root"] == "ARK-Milan"
    assert j["measurement"].startswith("9ac48fcac8a2d88a")
    assert j["report_data"].startswith("b3fbad6514c83cae")
    assert j["hcl_report_type"] == "snp"
    assert j["hcl_hash_type"] == "sha256"
    assert [k["kid"] for k in j["runtime"]["keys"]] == ["HCLAkPub", "HCLEkPub"]
    assert j["vm_configuration"]["vmUniqueId"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert j["user_data"] == "00" * 64
    assert j["secure_boot"] is True
    assert j["tpm_enabled"] is True
    assert "tpm_quote" not in j


@pytest.mark.vectors
def test_snp_vector_layout(read_vector: Reader) -> None:
    hcl = azure.parse_hcl_report(read_vector(SNP_HCL))
    assert (hcl.header_version, hcl.request_type, hcl.status) == (1, 2, 0)
    assert hcl.report_size == VAR + len(hcl.variable_data) == 0x92A
    assert (hcl.report_type, hcl.report_data_hash_type, hcl.data_size) == (2, 1, 20 + len(hcl.variable_data))
    assert hcl.runtime_digest == hcl.hw_report_data[:32]
    assert hcl.runtime.ak_pub.key_size == hcl.runtime.ek_pub.key_size == 2048
    assert hcl.snp_report().vmpl == 0
    with pytest.raises(FormatError, match="not a TDREPORT"):
        hcl.td_report()


@pytest.mark.vectors
def test_snp_vector_tpm_quote_message(read_vector: Reader) -> None:
    quote = tpm.parse_tpms_attest(read_vector("azure/snp-vtpm.tpm-quote.msg"))
    assert quote.extra_data == b"challenge"
    assert quote.pcr_selection == (tpm.PcrSelection(hash_alg=0x000B, pcrs=(0, 1, 2, 3, 4, 5, 6, 7, 14)),)
    assert quote.pcr_digest.hex().startswith("9d608cf40eb5bc74")
    assert quote.firmware_version == 0x2020031200120003
    assert quote.to_json()["pcr_selection"] == [{"hash": "sha256", "pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 14]}]


@pytest.mark.vectors
def test_snp_vector_tpm_quote_is_not_from_this_hcl_report(read_vector: Reader) -> None:
    """The published quote was signed by another vTPM than the one in the published HCL report.

    The vectors README expects it to verify with the HCL report's HCLAkPub, but sig^e mod n has
    no PKCS#1 v1.5 (nor PSS) structure under either runtime key, so no verifier can accept it;
    trustee later replaced the pair (quote.bin, tpm-quote-v1.json). This test pins that fact so
    that a verifier which accepted it would fail here.
    """
    hcl = azure.parse_hcl_report(read_vector(SNP_HCL))
    msg, sig = read_vector("azure/snp-vtpm.tpm-quote.msg"), read_vector("azure/snp-vtpm.tpm-quote.sig")
    for key in (hcl.runtime.ak_pub, hcl.runtime.ek_pub):
        n, e = key.public_numbers().n, key.public_numbers().e
        em = pow(int.from_bytes(sig, "big"), e, n).to_bytes(256, "big")
        assert not em.startswith(b"\x00\x01\xff")
        assert em[-1] != 0xBC
    with pytest.raises(SignatureError, match="does not verify with the attestation key"):
        tpm.verify_quote(msg, sig, hcl.runtime.ak_pub)


@pytest.mark.vectors
def test_tdx_vector_binding(read_vector: Reader) -> None:
    hcl = azure.verify_hcl_binding(read_vector(TDX_HCL))
    assert hcl.report_type_name == "tdx"
    assert hcl.header_version == 2
    td = hcl.td_report()
    assert td.report_type[0] == 0x81
    assert td.report_data[:32] == hashlib.sha256(hcl.variable_data).digest()
    assert hcl.runtime.flag("secure-boot") is False
    assert hcl.runtime.flag("tpm-enabled") is True
    assert (
        hcl.runtime.vm_configuration["root-cert-thumbprint"] == "6nZZnYaJc4KqUZ_yvA-mucFdYNouvlPnITnNMXsHl-0"
    )
    assert hcl.runtime.user_data == bytes(64)
    with pytest.raises(FormatError, match="not an SEV-SNP report"):
        hcl.snp_report()
    with pytest.raises(FormatError, match="TDX report, not an SEV-SNP report"):
        azure.verify_az_snp_vtpm(read_vector(TDX_HCL), vek_cert=None, chain=[], at=AT)  # type: ignore[arg-type]


@pytest.mark.vectors
@pytest.mark.parametrize("name", [SNP_HCL, TDX_HCL])
@pytest.mark.parametrize("where", [0, 1, 10, 100, 300, 600, -3, -1])
def test_flipped_runtime_bit_breaks_binding(read_vector: Reader, name: str, where: int) -> None:
    data = read_vector(name)
    n = var_size(data)
    offset = VAR + (where % n)
    with pytest.raises(
        BindingError,
        match=r"does not hold the SHA256 of the HCL runtime data \(expected [0-9a-f]{32}\.\.\., found",
    ):
        azure.verify_hcl_binding(flip(data, offset, 3))


@pytest.mark.vectors
def test_flipped_report_data_breaks_binding(read_vector: Reader) -> None:
    data = read_vector(SNP_HCL)
    with pytest.raises(BindingError, match=r"SNP REPORT_DATA\[0:32\] does not hold"):
        azure.verify_hcl_binding(flip(data, 0x20 + 0x50 + 5))
    tdx = read_vector(TDX_HCL)
    with pytest.raises(BindingError, match=r"TDREPORT REPORTDATA\[0:32\] does not hold"):
        azure.verify_hcl_binding(flip(tdx, 0x20 + 0x80 + 31))


@pytest.mark.vectors
@pytest.mark.parametrize("offset", [0x004, 0x008, 0x010, 0x090, 0x0BF, 0x0C0, 0x0E0, 0x140, 0x1E8])
def test_flipped_inner_snp_bit_is_signature_error(read_vector: Reader, offset: int) -> None:
    certs = load_certificates(read_vector("azure/snp-vtpm.vcek-chain.pem"))
    data = flip(read_vector(SNP_HCL), 0x20 + offset)
    with pytest.raises(SignatureError, match="SNP report signature does not verify"):
        azure.verify_az_snp_vtpm(data, vek_cert=certs[0], chain=certs[1:], at=AT)


@pytest.mark.vectors
def test_extra_nv_padding_and_no_padding_parse(read_vector: Reader) -> None:
    data = read_vector(SNP_HCL)
    end = VAR + var_size(data)
    for blob in (data[:end], data + bytes(1500)):
        assert azure.verify_hcl_binding(blob).variable_data == data[VAR:end]


# --- synthetic SNP evidence with a TPM quote --------------------------------------------------


@pytest.fixture(scope="module")
def snp_case(ak: rsa.RSAPrivateKey, signer: ab.SnpSigner) -> dict[str, Any]:
    ek = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    var = ab.runtime_json(ak.public_key(), ek, user_data=b"\x5a" * 64)
    msg = ab.tpms_attest(b"nonce-1234")
    return {"hcl": snp_hcl(signer, var), "msg": msg, "sig": ab.tpm_sign(ak, msg)}


def verify_case(signer: ab.SnpSigner, case: dict[str, Any], **kw: Any) -> Claims:
    args = {"tpm_quote": case["msg"], "tpm_sig": case["sig"], "nonce": b"nonce-1234"} | kw
    return azure.verify_az_snp_vtpm(
        case["hcl"], vek_cert=signer.vcek, chain=signer.chain, at=AT, roots=signer.roots, **args
    )


def test_synthetic_snp_with_tpm_quote(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    j = verify_case(signer, snp_case).to_json()
    assert j["tee"] == "az-snp-vtpm"
    assert j["measurement"] == "42" * 48
    assert j["user_data"] == "5a" * 64
    assert j["tpm_quote"]["nonce"] == b"nonce-1234".hex()
    assert j["tpm_quote"]["pcr_selection"] == [{"hash": "sha256", "pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 14]}]
    assert j["tpm_quote"]["pcr_digest"] == "9d" * 32
    assert j["tpm_quote"]["clock"] == 0x3356D0FD
    assert j["tpm_quote"]["firmware_version"] == 0x2020031200120003
    assert j["report_data"].endswith("ee" * 32)


def test_tpmt_signature_form_is_accepted(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    wrapped = ab.tpmt_signature(snp_case["sig"])
    assert verify_case(signer, snp_case, tpm_sig=wrapped).get("tpm_quote")["nonce"] == b"nonce-1234".hex()


@pytest.mark.parametrize(
    ("sig", "match"),
    [
        (lambda s: ab.tpmt_signature(s, hash_alg=0x0004), "hash is sha1, expected sha256"),
        (lambda s: ab.tpmt_signature(s, alg=0x0016), "scheme field RSAPSS"),
        (lambda s: ab.tpmt_signature(s)[:-1], "expected 256 bytes"),
        (lambda s: s[:-1], "scheme field"),
        (lambda s: s[:4], "expected 256 \\(raw RSA\\) or 262"),
    ],
)
def test_bad_signature_structures(
    signer: ab.SnpSigner, snp_case: dict[str, Any], sig: Callable[[bytes], bytes], match: str
) -> None:
    with pytest.raises(FormatError, match=match):
        verify_case(signer, snp_case, tpm_sig=sig(snp_case["sig"]))


@pytest.mark.parametrize("offset", [0, 5, 9, 20, 40, 60, 80, -1])
def test_flipped_quote_message_is_signature_error(
    signer: ab.SnpSigner, snp_case: dict[str, Any], offset: int
) -> None:
    msg = flip(snp_case["msg"], offset % len(snp_case["msg"]))
    with pytest.raises(SignatureError, match="TPM quote signature does not verify"):
        verify_case(signer, snp_case, tpm_quote=msg)


@pytest.mark.parametrize("offset", [0, 100, 255])
def test_flipped_quote_signature_is_signature_error(
    signer: ab.SnpSigner, snp_case: dict[str, Any], offset: int
) -> None:
    with pytest.raises(SignatureError):
        verify_case(signer, snp_case, tpm_sig=flip(snp_case["sig"], offset))
    with pytest.raises(SignatureError):
        verify_case(signer, snp_case, tpm_sig=ab.tpmt_signature(flip(snp_case["sig"], offset)))


def test_wrong_nonce_is_binding_error(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    with pytest.raises(
        BindingError,
        match=r"not the expected nonce \(expected 6e6f6e63652d31323335, found 6e6f6e63652d31323334\)",
    ):
        verify_case(signer, snp_case, nonce=b"nonce-1235")
    assert verify_case(signer, snp_case, nonce=None).get("tpm_quote")["nonce"] == b"nonce-1234".hex()


def test_quote_arguments_must_come_together(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="both its message and its signature"):
        verify_case(signer, snp_case, tpm_sig=None)
    with pytest.raises(InputError, match="nonce was given but no TPM quote"):
        verify_case(signer, snp_case, tpm_quote=None, tpm_sig=None)


def test_quote_signed_by_another_key(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureError):
        verify_case(signer, snp_case, tpm_sig=ab.tpm_sign(other, snp_case["msg"]))


def test_synthetic_inner_report_tampering(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    with pytest.raises(SignatureError, match="SNP report signature does not verify"):
        verify_case(signer, snp_case | {"hcl": flip(snp_case["hcl"], 0x20 + 0x95)})
    # The 32 REPORT_DATA bytes after the SHA-256 are the platform's; they are signed, not bound.
    with pytest.raises(SignatureError):
        verify_case(signer, snp_case | {"hcl": flip(snp_case["hcl"], 0x20 + 0x50 + 40)})


@pytest.mark.parametrize("hash_type", [1, 2, 3])
def test_hash_types(signer: ab.SnpSigner, ak: rsa.RSAPrivateKey, hash_type: int) -> None:
    var = ab.runtime_json(ak.public_key())
    hcl = snp_hcl(signer, var, hash_type=hash_type)
    claims = azure.verify_az_snp_vtpm(
        hcl, vek_cert=signer.vcek, chain=signer.chain, at=AT, roots=signer.roots
    )
    assert claims.get("hcl_hash_type") == ("sha256", "sha384", "sha512")[hash_type - 1]
    size = (32, 48, 64)[hash_type - 1]
    assert claims.report_data[:size] == ab.HASHES[hash_type](var)
    with pytest.raises(BindingError, match=f"REPORT_DATA\\[0:{size}\\]"):
        azure.verify_hcl_binding(flip(hcl, VAR + 7))
    if hash_type == 1:
        # Declaring SHA-512 for a SHA-256 binding: the digests differ, so the binding fails.
        declared = bytearray(hcl)
        struct.pack_into("<I", declared, 0x4CC, 3)
        with pytest.raises(BindingError):
            azure.verify_hcl_binding(bytes(declared))


# --- layout errors ----------------------------------------------------------------------------


def synthetic_hcl(ak: rsa.RSAPrivateKey, **kw: Any) -> bytes:
    return ab.hcl_report(bytes(1184), ab.runtime_json(ak.public_key()), **kw)


def test_truncated_reports_are_format_errors(ak: rsa.RSAPrivateKey) -> None:
    data = synthetic_hcl(ak)
    end = VAR + var_size(data)
    assert azure.verify_hcl_binding(data[:end])
    for length in [0, 1, 3, 4, 0x1F, 0x20, 0x100, 0x4BF, 0x4C0, 0x4D3, VAR, VAR + 1, end - 100, end - 1]:
        with pytest.raises(FormatError):
            azure.parse_hcl_report(data[:length])
        with pytest.raises(FormatError):
            azure.verify_hcl_binding(data[:length])


@pytest.mark.parametrize("nv_size", [None, 2048, 2600, 4096])
def test_any_nv_size(ak: rsa.RSAPrivateKey, nv_size: int | None) -> None:
    data = synthetic_hcl(ak, nv_size=nv_size)
    assert len(data) == (nv_size or VAR + var_size(data))
    assert azure.verify_hcl_binding(data).runtime.ak_pub.public_numbers() == ak.public_key().public_numbers()


def test_bad_magic(ak: rsa.RSAPrivateKey) -> None:
    data = synthetic_hcl(ak)
    with pytest.raises(FormatError, match="starts with 'HCLA', this input starts with 48434c42"):
        azure.parse_hcl_report(b"HCLB" + data[4:])


@pytest.mark.parametrize("size", [2600 - VAR + 1, 0xFFFFFFFF, 10**6])
def test_oversized_variable_data(ak: rsa.RSAPrivateKey, size: int) -> None:
    data = bytearray(synthetic_hcl(ak))
    struct.pack_into("<I", data, 0x4D0, size)
    with pytest.raises(FormatError, match=f"declares {size} bytes of runtime data but only"):
        azure.parse_hcl_report(bytes(data))


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0x4C8, 1, r"report_type is 1 \(VBS\)"),
        (0x4C8, 3, "TrustedLaunch"),
        (0x4C8, 9, "report_type is 9"),
        (0x4CC, 0, "hash_type is 0"),
        (0x4CC, 4, "hash_type is 4"),
    ],
)
def test_unknown_types(ak: rsa.RSAPrivateKey, offset: int, value: int, match: str) -> None:
    data = bytearray(synthetic_hcl(ak))
    struct.pack_into("<I", data, offset, value)
    with pytest.raises(FormatError, match=match):
        azure.parse_hcl_report(bytes(data))


def test_tdx_report_type_needs_a_tdreport(ak: rsa.RSAPrivateKey) -> None:
    with pytest.raises(FormatError, match=r"REPORTTYPE\.TYPE is 0x00"):
        azure.parse_hcl_report(synthetic_hcl(ak, report_type=4))
    assert azure.parse_hcl_report(
        ab.hcl_report(ab.td_report(), ab.runtime_json(ak.public_key()), report_type=4)
    )


# --- runtime JSON -----------------------------------------------------------------------------


def bound(var: bytes) -> bytes:
    return ab.hcl_report(bytes(1184), var)


def test_runtime_keys_in_either_alphabet(ak: rsa.RSAPrivateKey) -> None:
    pub = ak.public_key()
    url = azure.verify_hcl_binding(bound(ab.runtime_json(pub, pub, encode=ab.b64url))).runtime
    std = azure.verify_hcl_binding(bound(ab.runtime_json(pub, pub, encode=ab.b64std))).runtime
    assert url.ak_pub.public_numbers() == std.ak_pub.public_numbers() == pub.public_numbers()
    assert std.ek_pub.public_numbers() == pub.public_numbers()


def mixed_alphabet_n(pub: rsa.RSAPublicKey) -> str:
    for _ in range(1000):
        n = ab.b64url(ab.int_bytes(pub.public_numbers().n))
        if "-" in n or "_" in n:
            return n.replace("A", "+", 1)
        pub = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    raise AssertionError("no key with a URL-safe character")


def test_mixed_alphabets_are_refused(ak: rsa.RSAPrivateKey) -> None:
    doc = json.loads(ab.runtime_json(ak.public_key()))
    doc["keys"][0]["n"] = mixed_alphabet_n(ak.public_key())
    with pytest.raises(FormatError, match="HCL runtime key HCLAkPub field n mixes the standard"):
        azure.verify_hcl_binding(bound(json.dumps(doc).encode()))


@pytest.mark.parametrize(
    ("var", "match"),
    [
        (b'{"keys":[]', "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[]", "JSON list, expected an object"),
        (b'{"a":1,"a":2}', "the key 'a' appears twice"),
        (b'{"x":NaN}', "NaN is not JSON"),
        (b'{"keys":{}}', "'keys' is not a list"),
        (b'{"keys":[{"kty":"RSA"}]}', "not an object with a 'kid'"),
        (b'{"keys":[{"kid":"A"},{"kid":"A"}]}', "names the key A twice"),
        (b'{"keys":[{"kid":"A","kty":"RSA","n":5,"e":"AQAB"}]}', "field n is not a base64 string"),
        (b'{"keys":[{"kid":"A","kty":"RSA","n":"AA","e":"AQAB"}]}', "not a valid RSA public key"),
        (b'{"vm-configuration":[]}', "'vm-configuration' is not an object"),
        (b'{"user-data":"xyz"}', "'user-data' is not hex"),
        (b'{"user-data":12}', "'user-data' is not a hex string"),
        (b"[" * 100000 + b"]" * 100000, "not UTF-8 JSON"),
    ],
)
def test_bad_runtime_json(var: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        azure.verify_hcl_binding(bound(var))


def test_runtime_flags_and_missing_keys() -> None:
    rt = azure.parse_runtime_data(
        b'{"vm-configuration":{"secure-boot":"yes"},"keys":[{"kid":"X","kty":"EC"}]}'
    )
    assert rt.flag("tpm-enabled") is None
    assert rt.user_data is None
    assert dict(rt.keys) == {}
    with pytest.raises(FormatError, match="secure-boot is 'yes', expected true or false"):
        rt.flag("secure-boot")
    with pytest.raises(FormatError, match="no RSA key with kid HCLAkPub"):
        rt.ak_pub
    assert rt.to_json() == {"vm-configuration": {"secure-boot": "yes"}, "keys": [{"kid": "X", "kty": "EC"}]}


# --- TPMS_ATTEST ------------------------------------------------------------------------------


def test_tpms_attest_errors() -> None:
    msg = ab.tpms_attest()
    assert tpm.parse_tpms_attest(msg).reset_count == 3
    with pytest.raises(FormatError, match="bytes after the quote's pcrDigest"):
        tpm.parse_tpms_attest(msg + b"\x00")
    with pytest.raises(FormatError, match="magic is 0xfe544347"):
        tpm.parse_tpms_attest(flip(msg, 0))
    with pytest.raises(FormatError, match="type is 0x8014"):
        tpm.parse_tpms_attest(msg[:4] + b"\x80\x14" + msg[6:])
    for n in range(len(msg)):
        with pytest.raises(FormatError, match="ends inside"):
            tpm.parse_tpms_attest(msg[:n]) if n >= 6 else _short(msg[:n])
    bad_safe = bytearray(msg)
    bad_safe[msg.index(b"challenge") + 9 + 16] = 2
    with pytest.raises(FormatError, match="safe is 2"):
        tpm.parse_tpms_attest(bytes(bad_safe))


def _short(data: bytes) -> None:
    tpm.parse_tpms_attest(data)


# --- az-tdx-vtpm ------------------------------------------------------------------------------


def td_claims(report_data: bytes, mrtd: bytes = b"\x11" * 48, rtmr: list[bytes] | None = None) -> Claims:
    rtmr = rtmr or [b"\x21" * 48, b"\x22" * 48, b"\x23" * 48, b"\x24" * 48]
    return Claims(
        kind="az-tdx-vtpm",
        simulated=False,
        debug=False,
        report_data=report_data,
        details={"mrtd": mrtd.hex(), "rtmr": [r.hex() for r in rtmr], "quote_version": 4},
    )


@pytest.fixture
def tdx_hcl(ak: rsa.RSAPrivateKey) -> tuple[bytes, azure.TdReport]:
    var = ab.runtime_json(ak.public_key(), secure_boot=False)
    report_data = hashlib.sha256(var).digest() + b"\x77" * 32
    data = ab.hcl_report(ab.td_report(report_data), var, report_type=4, bind=False)
    return data, azure.verify_hcl_binding(data).td_report()


def test_bind_td_quote(tdx_hcl: tuple[bytes, azure.TdReport]) -> None:
    _, td = tdx_hcl
    azure.bind_td_quote(td, td_claims(td.report_data))
    with pytest.raises(BindingError, match="REPORTDATA differs"):
        azure.bind_td_quote(td, td_claims(flip(td.report_data, 63)))
    with pytest.raises(
        BindingError, match=r"MRTD differs .*quote 1111111111111111111111111111111[0-9a-f]\.\.\.\)"
    ):
        azure.bind_td_quote(td, td_claims(td.report_data, mrtd=flip(b"\x11" * 48, 47)))
    for i in range(4):
        rtmr = [b"\x21" * 48, b"\x22" * 48, b"\x23" * 48, b"\x24" * 48]
        rtmr[i] = flip(rtmr[i], 0)
        with pytest.raises(BindingError, match=rf"RTMR\[{i}\]"):
            azure.bind_td_quote(td, td_claims(td.report_data, rtmr=rtmr))
    no_rtmr = Claims(
        kind="tdx", simulated=False, debug=False, report_data=td.report_data, details={"mrtd": ""}
    )
    with pytest.raises(BindingError, match="four RTMRs"):
        azure.bind_td_quote(td, no_rtmr)


@pytest.fixture
def fake_tdx(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand in for jupyter_cc.attest.tdx: the quote bytes are the claims (tests the wiring only)."""
    calls: dict[str, Any] = {}

    def verify_tdx(quote: bytes, **kw: Any) -> Claims:
        calls.update(kw, quote=quote)
        doc = json.loads(quote)
        return td_claims(bytes.fromhex(doc["report_data"]), bytes.fromhex(doc["mrtd"]))

    module = types.ModuleType("jupyter_cc.attest.tdx")
    module.verify_tdx = verify_tdx  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jupyter_cc.attest.tdx", module)
    return calls


def test_az_tdx_vtpm_wiring(
    fake_tdx: dict[str, Any], tdx_hcl: tuple[bytes, azure.TdReport], ak: rsa.RSAPrivateKey
) -> None:
    """End to end with a stand-in TD quote verifier (the real one is tests/test_tdx.py's subject)."""
    data, td = tdx_hcl
    quote = json.dumps({"report_data": td.report_data.hex(), "mrtd": td.mrtd.hex()}).encode()
    msg = ab.tpms_attest(b"n")
    claims = azure.verify_az_tdx_vtpm(
        data, td_quote=quote, at=AT, tcb_info=b"T", tpm_quote=msg, tpm_sig=ab.tpm_sign(ak, msg), nonce=b"n"
    )
    assert fake_tdx["kind"] == "az-tdx-vtpm"
    assert fake_tdx["tcb_info"] == b"T"
    assert fake_tdx["at"] == AT
    j = claims.to_json()
    assert j["tee"] == "az-tdx-vtpm"
    assert j["hcl_report_type"] == "tdx"
    assert j["secure_boot"] is False
    assert j["tpm_quote"]["nonce"] == "6e"
    other = json.dumps({"report_data": td.report_data.hex(), "mrtd": "00" * 48}).encode()
    with pytest.raises(BindingError, match="TD quote's MRTD"):
        azure.verify_az_tdx_vtpm(data, td_quote=other, at=AT)
    with pytest.raises(BindingError, match="TDREPORT REPORTDATA"):
        azure.verify_az_tdx_vtpm(flip(data, VAR + 2), td_quote=quote, at=AT)
    with pytest.raises(FormatError, match="not a TDREPORT"):
        azure.verify_az_tdx_vtpm(synthetic_hcl(ak), td_quote=quote, at=AT)


# --- any bytes parse or raise a CCError -------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_hcl_any_bytes(data: bytes) -> None:
    for blob in (data, b"HCLA" + data):
        with contextlib.suppress(CCError):
            azure.verify_hcl_binding(blob)
        with contextlib.suppress(CCError):
            azure.parse_hcl_report(blob)


@FUZZ
@given(st.data())
def test_fuzz_hcl_mutations(data: st.DataObject) -> None:
    base = ab.hcl_report(
        ab.td_report(),
        b'{"keys":[{"kid":"HCLAkPub","kty":"RSA","n":"AQAB","e":"AQAB"}]}',
        report_type=4,
        nv_size=1400,
    )
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    for candidate in (bytes(blob), bytes(blob[:cut])):
        with contextlib.suppress(CCError):
            azure.parse_hcl_report(candidate)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_runtime_json(data: bytes) -> None:
    with contextlib.suppress(CCError):
        azure.parse_runtime_data(data)


@FUZZ
@given(
    st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\xff\x54\x43\x47\x80\x18" + b))
)
def test_fuzz_tpms_attest(data: bytes) -> None:
    with contextlib.suppress(CCError):
        tpm.parse_tpms_attest(data)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_quote_signature(data: bytes) -> None:
    with contextlib.suppress(CCError):
        tpm.quote_signature(data, 256)


@pytest.fixture(scope="module")
def tdx_pki() -> Any:
    from tests.support import tdx_builder

    return tdx_builder.make_pki()


def td_quote_for(pki: Any, td: azure.TdReport, **changes: Any) -> bytes:
    from tests.support import tdx_builder

    spec = tdx_builder.QuoteSpec(report_data=td.report_data, mrtd=td.mrtd, rtmr=td.rtmr)
    for name, value in changes.items():
        setattr(spec, name, value)
    return bytes(tdx_builder.build_quote(pki, spec))


def test_az_tdx_vtpm_end_to_end(
    tdx_pki: Any, tdx_hcl: tuple[bytes, azure.TdReport], ak: rsa.RSAPrivateKey
) -> None:
    """A synthetic TDREPORT in an HCL report and a synthetic TD quote made from it, real tdx.verify_tdx."""
    data, td = tdx_hcl
    roots = TrustStore.of(tdx_pki.anchor)
    msg = ab.tpms_attest(b"fresh")
    claims = azure.verify_az_tdx_vtpm(
        data,
        td_quote=td_quote_for(tdx_pki, td),
        at=AT,
        roots=roots,
        tpm_quote=msg,
        tpm_sig=ab.tpm_sign(ak, msg),
        nonce=b"fresh",
    )
    j = claims.to_json()
    assert j["tee"] == "az-tdx-vtpm"
    assert j["mrtd"] == td.mrtd.hex()
    assert j["rtmr"] == [r.hex() for r in td.rtmr]
    assert j["report_data"] == td.report_data.hex()
    assert j["hcl_report_type"] == "tdx"
    assert j["secure_boot"] is False
    assert j["tpm_quote"]["nonce"] == b"fresh".hex()

    other_rtmr = (td.rtmr[0], td.rtmr[1], td.rtmr[2], b"\x99" * 48)
    with pytest.raises(BindingError, match=r"TD quote's RTMR\[3\] differs .*quote 9999"):
        azure.verify_az_tdx_vtpm(
            data, td_quote=td_quote_for(tdx_pki, td, rtmr=other_rtmr), at=AT, roots=roots
        )
    with pytest.raises(BindingError, match="TD quote's MRTD"):
        azure.verify_az_tdx_vtpm(
            data, td_quote=td_quote_for(tdx_pki, td, mrtd=b"\x01" * 48), at=AT, roots=roots
        )
    other_rd = td.report_data[:32] + b"\x00" * 32
    with pytest.raises(BindingError, match="TD quote's REPORTDATA"):
        azure.verify_az_tdx_vtpm(
            data, td_quote=td_quote_for(tdx_pki, td, report_data=other_rd), at=AT, roots=roots
        )
    quote = bytearray(td_quote_for(tdx_pki, td))
    quote[48 + 136] ^= 1  # a byte of MRTD in the signed body
    with pytest.raises(SignatureError):
        azure.verify_az_tdx_vtpm(data, td_quote=bytes(quote), at=AT, roots=roots)
    with pytest.raises(CCError):  # the test root is not a pinned Intel root
        azure.verify_az_tdx_vtpm(data, td_quote=td_quote_for(tdx_pki, td), at=AT)


def az_tdx_bundle(pki: Any, ak: rsa.RSAPrivateKey, nonce: bytes, host_key: bytes, tpm_nonce: bytes) -> bytes:
    """An az-tdx-vtpm bundle as the guest agent sends it, its TPM quote made over ``tpm_nonce``."""
    var = ab.runtime_json(ak.public_key(), secure_boot=False, user_data=expected_report_data(nonce, host_key))
    hcl = ab.hcl_report(ab.td_report(), var, report_type=4)
    td = azure.verify_hcl_binding(hcl).td_report()
    msg = ab.tpms_attest(tpm_nonce)
    evidence = {
        "report": hcl,
        "td_quote": td_quote_for(pki, td),
        "tpm_quote": msg,
        "tpm_sig": ab.tpmt_signature(ab.tpm_sign(ak, msg)),
    }
    return serialize_bundle(
        "az-tdx-vtpm",
        {k: base64.b64encode(v).decode() for k, v in evidence.items()},
        nonce=nonce,
        host_key_sha256=host_key,
        source="azure-vtpm",
        collected_at="2024-06-01T00:00:00Z",
    )


def test_az_tdx_vtpm_bundle_checks_the_tpm_quote_and_its_nonce(tdx_pki: Any, ak: rsa.RSAPrivateKey) -> None:
    """The TDX vTPM path judges the bundle's TPM quote exactly as the SNP one does."""
    roots = TrustStore.of(tdx_pki.anchor)
    nonce, host_key = bytes(range(32)), b"\x07" * 32
    bound = expected_report_data(nonce, host_key)[:32]
    good = parse_bundle(az_tdx_bundle(tdx_pki, ak, nonce, host_key, bound))
    claims = verify_bundle(good, at=AT, nonce=nonce, host_key_sha256=host_key, roots=roots)
    assert claims.kind == "az-tdx-vtpm"
    assert claims.get("tpm_quote")["nonce"] == bound.hex()
    # A TPM quote made for another nonce (a replayed or relayed one): refused.
    replayed = parse_bundle(az_tdx_bundle(tdx_pki, ak, nonce, host_key, b"\x99" * 32))
    with pytest.raises(BindingError, match="nonce"):
        verify_bundle(replayed, at=AT, nonce=nonce, host_key_sha256=host_key, roots=roots)
    # A TPM quote signed by another key than the HCL report's HCLAkPub: refused.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    doc = json.loads(az_tdx_bundle(tdx_pki, ak, nonce, host_key, bound))
    msg = ab.tpms_attest(bound)
    doc["evidence"]["tpm_sig"] = base64.b64encode(ab.tpmt_signature(ab.tpm_sign(other, msg))).decode()
    doc["evidence"]["tpm_quote"] = base64.b64encode(msg).decode()
    with pytest.raises(SignatureError):
        verify_bundle(parse_bundle(json.dumps(doc).encode()), at=AT, roots=roots)


def test_az_snp_vtpm_checks_amd_crls(signer: ab.SnpSigner, snp_case: dict[str, Any]) -> None:
    from jupyter_cc.attest.evidence import Evidence, verify
    from jupyter_cc.attest.revocation import load_amd_crls
    from jupyter_cc.errors import ChainError, CollateralError

    assert verify_case(signer, snp_case).get("revocation") == "unchecked"
    clean = verify_case(signer, snp_case, crls=load_amd_crls([signer.crl()]))
    assert clean.get("revocation") == "checked"
    assert clean.get("collateral_stale_days") == 0
    with pytest.raises(ChainError, match=f"'SEV-VCEK' \\(serial {signer.vcek.serial_number:x}\\)"):
        verify_case(signer, snp_case, crls=load_amd_crls([signer.crl([signer.vcek.serial_number])]))
    with pytest.raises(ChainError, match=r"'TEST-ASK'.*revoked"):
        verify_case(signer, snp_case, crls=load_amd_crls([signer.crl([signer.ask.serial_number])]))
    with pytest.raises(CollateralError, match="not signed"):
        verify_case(signer, snp_case, crls=load_amd_crls([ab.SnpSigner().crl()]))
    # Through the registry's verifier, as the kernel path and `jupyter-cc verify --crl` call it.
    ev = Evidence(
        kind="az-snp-vtpm",
        report=snp_case["hcl"],
        vek=signer.vcek,
        chain=tuple(signer.chain),
        crls=(signer.crl([signer.vcek.serial_number]),),
    )
    with pytest.raises(ChainError, match="revoked"):
        verify(ev, at=AT, roots=signer.roots)
    stale = Evidence(
        kind="az-snp-vtpm",
        report=snp_case["hcl"],
        vek=signer.vcek,
        chain=tuple(signer.chain),
        crls=(signer.crl(next_update=AT - timedelta(days=1)),),
    )
    with pytest.raises(CollateralError, match="stale"):
        verify(stale, at=AT, roots=signer.roots)
    assert verify(stale, at=AT, roots=signer.roots, allow_stale_days=1).get("collateral_stale_days") == 1
