"""MAA token verification: the real East US 2 token, and tokens minted here with our own keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_cc.attest.maa import claim_path, verify_maa
from jupyter_cc.errors import (
    BindingError,
    CCError,
    FormatError,
    FreshnessError,
    InputError,
    SignatureError,
)

TOKEN = "maa/sevsnpvm-token.jwt"
JWKS = "maa/sharedeus2-jwks.json"
ISSUER = "https://sharedeus2.eus2.attest.azure.net"
IAT = datetime(2024, 12, 31, 0, 27, 14, tzinfo=timezone.utc)
EXP = datetime(2024, 12, 31, 8, 27, 14, tzinfo=timezone.utc)
INSIDE = datetime(2024, 12, 31, 4, 0, tzinfo=timezone.utc)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
KID = "test-key-1"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_json(value: Any) -> str:
    return b64u(json.dumps(value).encode())


# --- the real token -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(read_vector: Callable[[str], bytes]) -> tuple[str, bytes]:
    return read_vector(TOKEN).decode("ascii").strip(), read_vector(JWKS)


@pytest.mark.vectors
def test_real_token_verifies_inside_its_window(real: tuple[str, bytes]) -> None:
    token, jwks = real
    claims = verify_maa(token, jwks, at=INSIDE, issuer=ISSUER)
    assert claims.kind == "maa"
    assert claims.simulated is False
    assert claims.debug is False
    assert claims.report_data.hex().startswith("d6039652c4e30390")
    assert len(claims.report_data) == 64
    assert claims.get("attestation_type") == "sevsnpvm"
    assert claims.get("compliance_status") == "azure-compliant-cvm"
    assert claims.get("secure_boot") is True
    assert claims.get("measurement", "").startswith("036fc22b517981a7")
    assert claims.get("iss") == ISSUER
    assert claim_path(claims.details, "x-ms-isolation-tee.x-ms-sevsnpvm-vmpl") == 0
    json.dumps(claims.to_json())  # plain JSON all the way down


@pytest.mark.vectors
@pytest.mark.parametrize("at", [IAT, EXP - timedelta(seconds=1)])
def test_real_token_window_edges_are_valid(real: tuple[str, bytes], at: datetime) -> None:
    verify_maa(*real, at=at)


@pytest.mark.vectors
@pytest.mark.parametrize("issuer", [ISSUER + "/", ISSUER])
def test_real_token_issuer_trailing_slash_is_normalised(real: tuple[str, bytes], issuer: str) -> None:
    verify_maa(*real, at=INSIDE, issuer=issuer)


@pytest.mark.vectors
def test_real_token_wrong_issuer(real: tuple[str, bytes]) -> None:
    with pytest.raises(BindingError, match="not by the expected instance"):
        verify_maa(*real, at=INSIDE, issuer="https://sharedweu.weu.attest.azure.net")


@pytest.mark.vectors
@pytest.mark.parametrize(
    ("at", "match"),
    [
        (EXP, "expired at 2024-12-31T08:27:14Z"),
        (datetime(2025, 6, 1, tzinfo=timezone.utc), "expired"),
        (IAT - timedelta(seconds=1), "not valid before 2024-12-31T00:27:14Z"),
    ],
)
def test_real_token_outside_window(real: tuple[str, bytes], at: datetime, match: str) -> None:
    with pytest.raises(FreshnessError, match=match):
        verify_maa(*real, at=at)


def _change(token: str, index: int) -> str:
    c = token[index]
    new = "B" if c == "A" else "A"
    return token[:index] + new + token[index + 1 :]


@pytest.mark.vectors
@pytest.mark.parametrize("where", ["header", "payload", "signature", "last"])
def test_real_token_one_changed_character_is_invalid(real: tuple[str, bytes], where: str) -> None:
    token, jwks = real
    first, second = token.index("."), token.rindex(".")
    index = {"header": 10, "payload": first + 200, "signature": second + 50, "last": len(token) - 1}[where]
    with pytest.raises((SignatureError, FormatError)):
        verify_maa(_change(token, index), jwks, at=INSIDE)


@pytest.mark.vectors
def test_real_token_last_character_stray_bits_are_refused(real: tuple[str, bytes]) -> None:
    # 256 signature bytes leave 4 unused bits in the last character; a lax decoder would
    # accept a changed last character that only flips those bits.
    token, jwks = real
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(token[-1])
    sibling = alphabet[value ^ 0x1]
    with pytest.raises(FormatError, match="canonical"):
        verify_maa(token[:-1] + sibling, jwks, at=INSIDE)


@pytest.mark.vectors
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_token_any_single_change_is_refused(real: tuple[str, bytes], data: st.DataObject) -> None:
    token, jwks = real
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters(codec="utf-8").filter(lambda c: c != token[index]))
    with pytest.raises(CCError):
        verify_maa(token[:index] + char + token[index + 1 :], jwks, at=INSIDE)


@pytest.mark.vectors
def test_real_token_standard_alphabet_is_malformed(real: tuple[str, bytes]) -> None:
    token, jwks = real
    assert "-" in token or "_" in token
    std = token.replace("-", "+").replace("_", "/")
    with pytest.raises(FormatError, match="not base64url"):
        verify_maa(std, jwks, at=INSIDE)


# --- tokens minted here ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "https://test.attest.example")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def jwk_ne(key: rsa.RSAPrivateKey, kid: str = KID) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "n": b64u(n), "e": b64u(e)}


def jwk_x5c(key: rsa.RSAPrivateKey, kid: str = KID) -> dict[str, Any]:
    der = self_signed(key).public_bytes(Encoding.DER)
    return {"kty": "RSA", "kid": kid, "x5c": [base64.b64encode(der).decode()]}


def jwks_of(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def claims_for(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "https://test.attest.example",
        "iat": int(NOW.timestamp()) - 60,
        "nbf": int(NOW.timestamp()) - 60,
        "exp": int(NOW.timestamp()) + 3600,
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-reportdata": "ab" * 32 + "00" * 32,
            "x-ms-sevsnpvm-launchmeasurement": "cd" * 48,
            "x-ms-runtime": {"vm-configuration": {"secure-boot": True}},
        },
        "secureboot": True,
    }
    base.update(extra)
    return base


def mint(
    key: rsa.RSAPrivateKey,
    claims: dict[str, Any] | None = None,
    *,
    header: dict[str, Any] | None = None,
    payload: bytes | None = None,
) -> str:
    head = {"alg": "RS256", "kid": KID, "typ": "JWT"} if header is None else header
    body = json.dumps(claims_for() if claims is None else claims).encode() if payload is None else payload
    signing_input = f"{b64u_json(head)}.{b64u(body)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64u(signature)}"


def test_minted_token_with_ne_jwks(key: rsa.RSAPrivateKey) -> None:
    claims = verify_maa(mint(key), jwks_of(jwk_ne(key)), at=NOW, issuer="https://test.attest.example/")
    assert claims.get("attestation_type") == "sevsnpvm"
    assert claims.report_data == bytes.fromhex("ab" * 32 + "00" * 32)
    assert claims.debug is False


def test_minted_token_with_x5c_jwks(key: rsa.RSAPrivateKey) -> None:
    verify_maa(mint(key), jwks_of(jwk_x5c(key)), at=NOW)


def test_jwks_with_agreeing_ne_and_x5c(key: rsa.RSAPrivateKey) -> None:
    verify_maa(mint(key), jwks_of(jwk_ne(key) | jwk_x5c(key)), at=NOW)


def test_jwks_with_disagreeing_ne_and_x5c(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(BindingError, match="differ from the key in its x5c"):
        verify_maa(mint(key), jwks_of(jwk_ne(key) | jwk_x5c(other_key)), at=NOW)


def test_key_is_picked_by_kid(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(other_key, "other"), jwk_ne(key, KID))
    verify_maa(mint(key), jwks, at=NOW)


def test_wrong_kid_is_a_clear_error(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SignatureError, match="'test-key-1' is not in the JWKS") as info:
        verify_maa(mint(key), jwks_of(jwk_ne(key, "rotated")), at=NOW)
    assert "/certs" in info.value.diagnostics()


def test_signature_by_another_key(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SignatureError, match="does not verify with key 'test-key-1'"):
        verify_maa(mint(other_key), jwks_of(jwk_ne(key)), at=NOW)


def test_alg_none_is_refused(key: rsa.RSAPrivateKey) -> None:
    token = f"{b64u_json({'alg': 'none', 'kid': KID})}.{b64u_json(claims_for())}."
    with pytest.raises((SignatureError, FormatError)):
        verify_maa(token, jwks_of(jwk_ne(key)), at=NOW)
    token = f"{b64u_json({'alg': 'none', 'kid': KID})}.{b64u_json(claims_for())}.AAAA"
    with pytest.raises(SignatureError, match="only RS256"):
        verify_maa(token, jwks_of(jwk_ne(key)), at=NOW)


def test_hs256_with_the_public_key_as_secret_is_refused(key: rsa.RSAPrivateKey) -> None:
    # The classic key-confusion attack: an HMAC keyed with the (public) RSA key bytes.
    jwk = jwk_ne(key)
    signing_input = f"{b64u_json({'alg': 'HS256', 'kid': KID})}.{b64u_json(claims_for())}"
    mac = hmac.HMAC(jwk["n"].encode(), hashes.SHA256())
    mac.update(signing_input.encode())
    token = f"{signing_input}.{b64u(mac.finalize())}"
    with pytest.raises(SignatureError, match="'HS256'"):
        verify_maa(token, jwks_of(jwk), at=NOW)


@pytest.mark.parametrize("alg", ["RS384", "PS256", "ES256", "rs256", None])
def test_other_algorithms_are_refused(key: rsa.RSAPrivateKey, alg: str | None) -> None:
    header = {"kid": KID} if alg is None else {"alg": alg, "kid": KID}
    with pytest.raises(SignatureError, match="only RS256"):
        verify_maa(mint(key, header=header), jwks_of(jwk_ne(key)), at=NOW)


def test_jwk_for_another_algorithm_or_type(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SignatureError, match="is for 'PS256'"):
        verify_maa(mint(key), jwks_of(jwk_ne(key) | {"alg": "PS256"}), at=NOW)
    ec_jwk = {"kty": "EC", "kid": KID, "crv": "P-256", "x": "AA", "y": "AA"}
    with pytest.raises(SignatureError, match="needs an RSA key"):
        verify_maa(mint(key), jwks_of(ec_jwk), at=NOW)


def test_x5c_with_a_non_rsa_certificate(key: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    jwk = {"kty": "RSA", "kid": KID, "x5c": [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]}
    with pytest.raises(InputError, match="does not hold an RSA key"):
        verify_maa(mint(key), jwks_of(jwk), at=NOW)


def test_small_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SignatureError, match="1024-bit"):
        verify_maa(mint(small), jwks_of(jwk_ne(small)), at=NOW)


def test_unregistered_header_members_are_allowed(key: rsa.RSAPrivateKey) -> None:
    header = {"alg": "RS256", "kid": KID, "typ": "JWT", "jku": "https://x/certs", "x-ms-extra": "y" * 600}
    verify_maa(mint(key, header=header), jwks_of(jwk_ne(key)), at=NOW)


def test_missing_kid(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(FormatError, match="no key"):
        verify_maa(mint(key, header={"alg": "RS256"}), jwks_of(jwk_ne(key)), at=NOW)


def test_crit_header_is_refused(key: rsa.RSAPrivateKey) -> None:
    header = {"alg": "RS256", "kid": KID, "crit": ["exp"]}
    with pytest.raises(FormatError, match="critical"):
        verify_maa(mint(key, header=header), jwks_of(jwk_ne(key)), at=NOW)


@pytest.mark.parametrize(
    ("jwks", "match"),
    [
        (b"not json", "not JSON"),
        (b'{"keys": {}}', '"keys" list'),
        (b"[]", '"keys" list'),
        (b'{"keys": [{"kid": "test-key-1", "kty": "RSA"}]}', "neither n/e nor x5c"),
        (b'{"keys": [{"kid": "test-key-1", "kty": "RSA", "n": "AQAB"}]}', "parameter 'e'"),
        (b'{"keys": [{"kid": "test-key-1", "kty": "RSA", "n": "A+B/", "e": "AQAB"}]}', "not base64url"),
        (b'{"keys": [{"kid": "test-key-1", "kty": "RSA", "x5c": ["!!"]}]}', "x5c"),
        (b'{"keys": [{"kid": "test-key-1", "kty": "RSA", "x5c": "abc"}]}', "x5c"),
    ],
)
def test_malformed_jwks_is_input_error(key: rsa.RSAPrivateKey, jwks: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        verify_maa(mint(key), jwks, at=NOW)


def test_duplicate_kid_in_jwks(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InputError, match="2 times"):
        verify_maa(mint(key), jwks_of(jwk_ne(key), jwk_ne(key)), at=NOW)


def test_wrong_and_missing_issuer(key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(key))
    with pytest.raises(BindingError, match=r"expected instance https://evil\.example"):
        verify_maa(mint(key), jwks, at=NOW, issuer="https://evil.example")
    claims = claims_for()
    del claims["iss"]
    with pytest.raises(BindingError, match="no iss claim"):
        verify_maa(mint(key, claims), jwks, at=NOW, issuer="https://test.attest.example")
    verify_maa(mint(key, claims), jwks, at=NOW)  # issuer not asked for: not checked


def test_exp_and_nbf(key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(key))
    t = int(NOW.timestamp())
    with pytest.raises(FreshnessError, match="expired at 2025-03-01T11:59:59Z"):
        verify_maa(mint(key, claims_for(exp=t - 1)), jwks, at=NOW)
    with pytest.raises(FreshnessError, match="expired"):
        verify_maa(mint(key, claims_for(exp=t)), jwks, at=NOW)
    with pytest.raises(FreshnessError, match="not valid before 2025-03-01T12:00:01Z"):
        verify_maa(mint(key, claims_for(nbf=t + 1)), jwks, at=NOW)
    verify_maa(mint(key, claims_for(nbf=t)), jwks, at=NOW)
    no_exp = claims_for()
    del no_exp["exp"], no_exp["nbf"]
    with pytest.raises(FreshnessError, match="no exp"):
        verify_maa(mint(key, no_exp), jwks, at=NOW)
    for bad in ("soon", True, 1e300):
        with pytest.raises(FormatError, match="exp"):
            verify_maa(mint(key, claims_for(exp=bad)), jwks, at=NOW)


def test_naive_time_is_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InputError, match="timezone"):
        verify_maa(mint(key), jwks_of(jwk_ne(key)), at=NOW.replace(tzinfo=None))


def test_standard_alphabet_and_padding_are_malformed(key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(key))
    # Find a payload whose base64url form uses '-' or '_', so the standard form differs.
    for i in range(200):
        token = mint(key, claims_for(pad="?" * i, more=">>>" * i))
        head, body, sig = token.split(".")
        if "-" in body or "_" in body:
            break
    else:  # pragma: no cover
        pytest.fail("no payload with URL-safe characters found")
    verify_maa(token, jwks, at=NOW)
    std = body.replace("-", "+").replace("_", "/")
    with pytest.raises(FormatError, match="not base64url"):
        verify_maa(f"{head}.{std}.{sig}", jwks, at=NOW)
    padded = head + "=" * (-len(head) % 4 or 4)
    with pytest.raises(FormatError, match="not base64url"):
        verify_maa(f"{padded}.{body}.{sig}", jwks, at=NOW)


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "three dot-separated parts, this input has 1"),
        ("a.b", "has 2"),
        ("a.b.c.d.e", "has 5"),
        ("..", "header is empty"),
        ("eyJ.e30.AAAA", "header is not canonical"),
        (b64u(b'{"a"') + ".e30.AAAA", "header is not a JSON object"),
        (f"{b64u(b'[1]')}.e30.AAAA", "header is JSON but not an object"),
        (f"{b64u(b'{}')}.A.AAAA", "impossible base64url length"),
        ("ey J.e30.AAAA", "not base64url"),
        ("ey\u00e9J.e30.AAAA", "not base64url"),
    ],
)
def test_malformed_tokens(token: str, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        verify_maa(token, b'{"keys": []}', at=NOW)


def test_payload_must_be_a_json_object_without_duplicates(key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(key))
    with pytest.raises(FormatError, match="the key 'exp' appears twice"):
        verify_maa(mint(key, payload=b'{"exp": 1, "exp": 99999999999}'), jwks, at=NOW)
    with pytest.raises(FormatError, match="not an object"):
        verify_maa(mint(key, payload=b"[]"), jwks, at=NOW)
    with pytest.raises(FormatError, match="NaN"):
        verify_maa(mint(key, payload=b'{"exp": NaN}'), jwks, at=NOW)
    with pytest.raises(FormatError, match="not a JSON object"):
        verify_maa(mint(key, payload=b"\xff\xfe"), jwks, at=NOW)


@pytest.mark.parametrize(
    ("change", "debug"),
    [
        ({}, False),
        ({"x-ms-azurevm-kerneldebug-enabled": True}, True),
        ({"x-ms-azurevm-bootdebug-enabled": True}, True),
        ({"x-ms-azurevm-bootdebug-enabled": False, "x-ms-azurevm-kerneldebug-enabled": False}, False),
        ({"tee:x-ms-sevsnpvm-is-debuggable": True}, True),
        ({"tee:x-ms-sevsnpvm-is-debuggable": "false"}, True),  # not a boolean false: fail closed
        ({"tee:x-ms-sevsnpvm-is-debuggable": None}, True),  # absent from an SNP token: fail closed
        ({"x-ms-sevsnpvm-is-debuggable": True}, True),  # either place counts
    ],
)
def test_debug_fails_closed(key: rsa.RSAPrivateKey, change: dict[str, Any], debug: bool) -> None:
    claims = claims_for()
    for name, value in change.items():
        if name.startswith("tee:"):
            if value is None:
                del claims["x-ms-isolation-tee"][name[4:]]
            else:
                claims["x-ms-isolation-tee"][name[4:]] = value
        else:
            claims[name] = value
    assert verify_maa(mint(key, claims), jwks_of(jwk_ne(key)), at=NOW).debug is debug


def test_platform_token_claims_at_top_level(key: rsa.RSAPrivateKey) -> None:
    claims = {
        "iss": "https://test.attest.example",
        "exp": int(NOW.timestamp()) + 60,
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-reportdata": "11" * 64,
        "x-ms-sevsnpvm-launchmeasurement": "22" * 48,
    }
    out = verify_maa(mint(key, claims), jwks_of(jwk_ne(key)), at=NOW)
    assert out.get("attestation_type") == "sevsnpvm"
    assert out.get("compliance_status") == "azure-compliant-cvm"
    assert out.get("measurement") == "22" * 48
    assert out.get("secure_boot") is None
    assert out.report_data == b"\x11" * 64
    assert out.debug is False


@pytest.mark.parametrize(
    ("tee_value", "top_value", "expected"),
    [(True, True, True), (True, False, False), (False, None, False), (None, True, True), (None, None, None)],
)
def test_secure_boot(
    key: rsa.RSAPrivateKey, tee_value: bool | None, top_value: bool | None, expected: bool | None
) -> None:
    claims = claims_for()
    del claims["secureboot"]
    claims["x-ms-isolation-tee"]["x-ms-runtime"] = {}
    if tee_value is not None:
        claims["x-ms-isolation-tee"]["x-ms-runtime"]["vm-configuration"] = {"secure-boot": tee_value}
    if top_value is not None:
        claims["secureboot"] = top_value
    assert verify_maa(mint(key, claims), jwks_of(jwk_ne(key)), at=NOW).get("secure_boot") is expected


def test_report_data_absent_or_bad(key: rsa.RSAPrivateKey) -> None:
    jwks = jwks_of(jwk_ne(key))
    claims = claims_for()
    del claims["x-ms-isolation-tee"]["x-ms-sevsnpvm-reportdata"]
    assert verify_maa(mint(key, claims), jwks, at=NOW).report_data == b""
    claims["x-ms-isolation-tee"]["x-ms-sevsnpvm-reportdata"] = "zz"
    with pytest.raises(FormatError, match="not hex"):
        verify_maa(mint(key, claims), jwks, at=NOW)


def test_claims_cannot_shadow_verifier_fields(key: rsa.RSAPrivateKey) -> None:
    claims = claims_for(debug=False, attestation_type="sgx", tee="snp")
    claims["x-ms-isolation-tee"]["x-ms-sevsnpvm-is-debuggable"] = True
    out = verify_maa(mint(key, claims), jwks_of(jwk_ne(key)), at=NOW)
    assert out.debug is True
    assert out.to_json()["debug"] is True
    assert out.to_json()["tee"] == "maa"
    assert out.get("attestation_type") == "sevsnpvm"
    assert dict(out.get("shadowed_claims")) == {"debug": False, "attestation_type": "sgx", "tee": "snp"}


# --- claim paths ----------------------------------------------------------------------------


def test_claim_path_nested_and_dotted_keys() -> None:
    claims = {
        "x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm", "a.b": {"c": 3}},
        "x-ms-isolation-tee.x-ms-attestation-type": "shadow",
        "top.level": 1,
        "top": {"level": 2, "other": 5},
        "x-ms-runtime": {"keys": [{"kid": "HCLAkPub"}, {"kid": "HCLEkPub"}]},
    }
    # Longest key prefix first: the literal dotted key wins over the nested path.
    assert claim_path(claims, "x-ms-isolation-tee.x-ms-attestation-type") == "shadow"
    assert claim_path(claims, "top.level") == 1
    assert claim_path(claims, "top.other") == 5  # "top.other" is no key: fall back to "top"
    assert claim_path(claims, "x-ms-isolation-tee.a.b.c") == 3
    assert claim_path(claims, "x-ms-runtime.keys.1.kid") == "HCLEkPub"
    assert claim_path(claims, "x-ms-runtime.keys.2.kid", None) is None
    assert claim_path(claims, "nothing", "dflt") == "dflt"
    for missing in ("nothing", "top.level.deeper", "x-ms-runtime.keys.x", "", "top."):
        with pytest.raises(KeyError):
            claim_path(claims, missing)


def test_claim_path_resolves_null_and_false() -> None:
    claims = {"a": {"b": None, "c": False}}
    assert claim_path(claims, "a.b", "dflt") is None
    assert claim_path(claims, "a.c") is False


@pytest.mark.vectors
def test_claim_path_on_verified_claims(real: tuple[str, bytes]) -> None:
    claims = verify_maa(*real, at=INSIDE)
    assert claim_path(claims.details, "x-ms-isolation-tee.x-ms-attestation-type") == "sevsnpvm"
    assert claim_path(claims.details, "x-ms-isolation-tee.x-ms-runtime.keys.0.kid") == "HCLAkPub"
    assert claim_path(claims.details, "x-ms-runtime.client-payload.nonce") == "Y29pbm1hcmtldGNhcC5jb20="


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=300)
@given(token=st.text())
def test_any_text_is_refused_with_a_ccerror(token: str) -> None:
    with pytest.raises(CCError):
        verify_maa(token, b'{"keys": []}', at=NOW)


@settings(max_examples=200)
@given(
    parts=st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="),
        min_size=3,
        max_size=3,
    )
)
def test_base64ish_tokens_are_refused_with_a_ccerror(parts: list[str]) -> None:
    with pytest.raises(CCError):
        verify_maa(".".join(parts), b'{"keys": []}', at=NOW)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit"]), st.from_type(type(None)) | st.text() | st.integers()
    )
)
def test_arbitrary_headers_are_refused_with_a_ccerror(key: rsa.RSAPrivateKey, header: dict[str, Any]) -> None:
    if header.get("alg") == "RS256" and header.get("kid") == KID and "crit" not in header:
        return
    with pytest.raises(CCError):
        verify_maa(mint(key, header=header), jwks_of(jwk_ne(key)), at=NOW)


# --- policy rules on the token's hardware claims ----------------------------------------------


@pytest.mark.vectors
def test_snp_rules_are_judged_against_the_real_token(real: tuple[str, bytes]) -> None:
    from jupyter_cc.policy import Policy, appraise

    token, jwks = real
    claims = verify_maa(token, jwks, at=INSIDE, issuer=ISSUER)
    attack = Policy.from_toml(
        f'tee = ["maa"]\n[snp]\nmeasurement = ["{"00" * 48}"]\nmin_tcb = {{ snp = 250 }}'
    )
    verdict = appraise(claims, attack)
    assert not verdict.passed
    assert [r.rule for r in verdict.reasons] == ["snp.measurement", "snp.min_tcb.snp"]
    assert verdict.reasons[1].observed == "21"
