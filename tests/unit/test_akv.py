"""Azure Key Vault Secure Key Release (``akv://``) against local MAA and Key Vault servers.

The client runs its production path: in-process simulated SNP evidence, an HTTPS attest call
to MAA, the token verified with the JWKS fetched from ``/certs``, ``KeyClient.release_key``
through the Azure SDK (HTTPS, bearer challenge, credential), then the JWS verified and the key
unwrapped. Only name resolution (``*.vault.azure.net`` and the MAA host to 127.0.0.1) and the
CA bundle differ from production; see tests/fake_azure.py.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from jupyter_cc.errors import InputError, PolicyError
from jupyter_cc.guest.results import Collected
from jupyter_cc.keys import KeyReleaseError, ReleasedKey, akv, release
from jupyter_cc.keys.akv import AkvReleaseError, parse_akv_uri, release_akv
from jupyter_cc.keys.akv.maa_token import maa_request
from jupyter_cc.keys.akv.unwrap import _WrappingKey
from jupyter_cc.keys.skr_policy import evaluate, parse_release_policy
from tests.support.fake_azure import (
    BEARER,
    MAA_HOST,
    TENANT,
    VAULT_DOMAIN,
    FakeKeyVault,
    FakeMaa,
    Pki,
    route_azure_names,
)

MAA = f"https://{MAA_HOST}"
ALGORITHMS = ("CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384")
SCOPE = "https://vault.azure.net/.default"


def sim_policy(authority: str = MAA, **claims: Any) -> dict[str, Any]:
    """A release policy for simulated SNP tokens from the fake MAA."""
    wanted = {"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": "false", **claims}
    return {
        "version": "1.0.0",
        "anyOf": [{"authority": authority, "allOf": [{"claim": c, "equals": v} for c, v in wanted.items()]}],
    }


class FakeCredential:
    """The azure-core TokenCredential contract: ``get_token(*scopes, ...) -> AccessToken``."""

    def __init__(self, token: str = BEARER) -> None:
        self.token = token
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, tenant_id: str | None = None, **_: Any) -> AccessToken:
        self.calls.append((scopes, tenant_id))
        return AccessToken(self.token, int(time.time()) + 3600)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("akv-sim") / "sim"


@pytest.fixture
def azure(pki: Pki, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Azure]:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JUPYTER_CC_MAA_ENDPOINT", raising=False)
    maa = FakeMaa(pki, tmp_path, sim_dir)
    vault = FakeKeyVault(pki, tmp_path, lambda: maa.jwks)
    env = Azure(maa, vault, pki.write_ca(tmp_path))

    def routes(host: str) -> int | None:
        if host == MAA_HOST:
            return maa.port
        if host.endswith(f".{VAULT_DOMAIN}"):
            return vault.port
        return None

    maa.start()
    vault.start()
    try:
        with route_azure_names(routes):
            yield env
    finally:
        vault.stop()
        maa.stop()


class Azure:
    """The two fake services, the CA bundle that trusts them, and a release helper."""

    def __init__(self, maa: FakeMaa, vault: FakeKeyVault, ca: Path) -> None:
        self.maa = maa
        self.vault = vault
        self.ca = ca
        self.credential = FakeCredential()

    def uri(self, name: str, version: str | None = None) -> str:
        # A fresh vault name per test keeps the SDK's per-host challenge cache out of the way.
        vault = f"v{secrets.token_hex(6)}"
        return f"akv://{vault}/keys/{name}" + (f"/{version}" if version else "")

    def release(self, uri: str, sim_dir: Path, **options: Any) -> ReleasedKey:
        options.setdefault("credential", self.credential)
        options.setdefault("maa_endpoint", MAA)
        options.setdefault("ca_bundle", self.ca)
        return release_akv(uri, tee="sim", sim_dir=sim_dir, timeout=10, **options)


def assert_clean(exc: BaseException, *secrets_: bytes | str) -> None:
    """No token, bearer or key material in the message."""
    text = str(exc)
    assert BEARER not in text
    assert "eyJ" not in text  # the start of any JWS/JWT header
    for value in secrets_:
        shown = value.hex() if isinstance(value, bytes) else value
        assert shown not in text
        if isinstance(value, bytes):
            assert base64.b64encode(value).decode() not in text
    assert "\n" not in text


# --- releases that succeed -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_release_returns_the_exact_key(azure: Azure, sim_dir: Path, algorithm: str) -> None:
    material = os.urandom(32)
    version = azure.vault.add_key("dataset-key", material, sim_policy())
    uri = azure.uri("dataset-key")

    key = azure.release(uri, sim_dir, algorithm=algorithm)

    assert key.material == material
    assert key.uri == uri
    assert key.policy == "akv release policy"
    vault = uri.split("/")[2]
    assert key.key_id == f"https://{vault}.{VAULT_DOMAIN}/keys/dataset-key/{version}"
    assert material.hex() not in repr(key)
    # The SDK's challenge protocol ran for real: a bodiless unauthenticated call got the 401
    # challenge, then the credential was asked for the challenge's scope and tenant, then the
    # release was sent with the bearer token.
    statuses = [(s["authorization"], s["status"]) for s in azure.vault.seen]
    assert statuses == [(None, 401), (f"Bearer {BEARER}", 200)]
    assert azure.vault.seen[0]["body"] == b""
    assert json.loads(azure.vault.seen[1]["body"])["enc"] == algorithm
    assert azure.credential.calls == [((SCOPE,), TENANT)]
    # MAA got the runtime data carrying the wrapping key, bound into REPORT_DATA.
    assert azure.maa.seen == [("POST", "/attest/SevSnpVm"), ("GET", "/certs")]
    body = azure.maa.attest_bodies[0]
    runtime = json.loads(base64.urlsafe_b64decode(body["runtimeData"]["data"] + "=="))
    assert [k["kty"] for k in runtime["keys"]] == ["RSA"]
    assert "d" not in runtime["keys"][0]  # the private exponent never leaves


def test_release_of_a_named_version(azure: Azure, sim_dir: Path) -> None:
    old = os.urandom(32)
    old_version = azure.vault.add_key("k", old, sim_policy())
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    key = azure.release(azure.uri("k", old_version), sim_dir)
    assert key.material == old
    assert key.key_id.endswith(f"/keys/k/{old_version}")


def test_release_of_an_rsa_key_gives_pkcs8(azure: Azure, sim_dir: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    azure.vault.add_key("ec-key", der, sim_policy(), kty="EC-HSM")
    key = azure.release(azure.uri("ec-key"), sim_dir)
    assert key.material == der


def test_release_through_the_dispatcher(azure: Azure, sim_dir: Path) -> None:
    material = os.urandom(32)
    azure.vault.add_key("via-release", material, sim_policy())
    key = release(
        azure.uri("via-release"),
        tee="sim",
        sim_dir=sim_dir,
        credential=azure.credential,
        maa_endpoint=MAA,
        ca_bundle=azure.ca,
    )
    assert key.material == material


def test_maa_endpoint_from_the_environment(
    azure: Azure, sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_CC_MAA_ENDPOINT", MAA + "/")
    material = os.urandom(16)
    azure.vault.add_key("env", material, sim_policy())
    assert azure.release(azure.uri("env"), sim_dir, maa_endpoint=None).material == material


# --- refusals by the services ----------------------------------------------------------------


def test_policy_mismatch_is_a_403_naming_the_claim(azure: Azure, sim_dir: Path) -> None:
    material = os.urandom(32)
    azure.vault.add_key("guarded", material, sim_policy(**{"x-ms-sevsnpvm-launchmeasurement": "00" * 48}))
    with pytest.raises(AkvReleaseError) as info:
        azure.release(azure.uri("guarded"), sim_dir)
    exc = info.value
    assert isinstance(exc, KeyReleaseError)
    assert exc.step == "Key Vault release"
    assert exc.status == 403
    assert exc.code == "Forbidden"
    text = str(exc)
    assert "HTTP 403" in text
    assert "claim x-ms-sevsnpvm-launchmeasurement is" in text
    assert "the policy requires '" + "00" * 10 in text
    assert_clean(exc, material)


def test_policy_for_another_authority_is_refused(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key(
        "elsewhere", os.urandom(32), sim_policy(authority="https://sharedweu.weu.attest.azure.net")
    )
    with pytest.raises(AkvReleaseError, match=r"the token's issuer \(iss\) is 'https://sharedeus2") as info:
        azure.release(azure.uri("elsewhere"), sim_dir)
    assert info.value.status == 403


def test_unknown_key_is_a_404(azure: Azure, sim_dir: Path) -> None:
    with pytest.raises(AkvReleaseError, match=r"HTTP 404 \(KeyNotFound") as info:
        azure.release(azure.uri("missing"), sim_dir)
    assert info.value.code == "KeyNotFound"


def test_a_rejected_bearer_token_is_a_401(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    credential = FakeCredential("not-the-right-token")
    with pytest.raises(AkvReleaseError, match="HTTP 401") as info:
        azure.release(azure.uri("k"), sim_dir, credential=credential)
    assert info.value.status == 401
    assert_clean(info.value, "not-the-right-token")


# --- refusals by the client ------------------------------------------------------------------


def test_tampered_jws_signature_is_refused(azure: Azure, sim_dir: Path) -> None:
    material = os.urandom(32)
    azure.vault.add_key("k", material, sim_policy())
    azure.vault.tamper_signature = True
    with pytest.raises(AkvReleaseError, match="RS256 signature does not verify") as info:
        azure.release(azure.uri("k"), sim_dir)
    assert info.value.step == "JWS verification"
    assert_clean(info.value, material)


def test_jws_signer_for_another_host_is_refused(azure: Azure, pki: Pki, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    other = pki.issue("evil.example.com")
    azure.vault.signer = other
    azure.vault.chain = [other.cert, pki.ca.cert]
    with pytest.raises(
        AkvReleaseError, match=r"is for evil\.example\.com, not the vault host v[0-9a-f]+\.vault"
    ) as info:
        azure.release(azure.uri("k"), sim_dir)
    assert info.value.step == "JWS verification"


def test_jws_signer_from_an_untrusted_ca_is_refused(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    rogue = Pki("rogue CA")
    signer = rogue.issue(f"*.{VAULT_DOMAIN}")
    azure.vault.signer = signer
    azure.vault.chain = [signer.cert, rogue.ca.cert]
    with pytest.raises(AkvReleaseError, match="does not chain to a trusted root"):
        azure.release(azure.uri("k"), sim_dir)


def test_kek_wrapped_with_another_hash_is_refused(azure: Azure, sim_dir: Path) -> None:
    material = os.urandom(32)
    azure.vault.add_key("k", material, sim_policy())
    azure.vault.oaep_hash = hashes.SHA1  # while the enc says RSA_AES_KEY_WRAP_256
    with pytest.raises(AkvReleaseError, match=r"RSA-OAEP \(SHA256\) decryption .* failed") as info:
        azure.release(azure.uri("k"), sim_dir, algorithm="RSA_AES_KEY_WRAP_256")
    assert info.value.step == "unwrap"
    assert_clean(info.value, material)


def test_token_without_our_key_is_refused_before_key_vault(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    azure.maa.echo_keys = False
    with pytest.raises(AkvReleaseError, match="do not include this release's ephemeral wrapping key") as info:
        azure.release(azure.uri("k"), sim_dir)
    assert info.value.step == "MAA token verification"
    assert azure.vault.seen == []  # the token never went to Key Vault


def test_expired_token_is_refused(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    azure.maa.lifetime = timedelta(seconds=-60)
    with pytest.raises(AkvReleaseError, match="MAA token verification: the MAA token expired at") as info:
        azure.release(azure.uri("k"), sim_dir)
    assert azure.vault.seen == []
    assert_clean(info.value)


def test_token_signed_by_a_key_not_in_the_jwks_is_refused(azure: Azure, sim_dir: Path) -> None:
    azure.maa.sign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AkvReleaseError, match="signature does not verify"):
        azure.release(azure.uri("k"), sim_dir)
    assert azure.vault.seen == []


def test_token_from_another_instance_is_refused(azure: Azure, sim_dir: Path) -> None:
    azure.maa.extra_claims = {"iss": "https://sharedweu.weu.attest.azure.net"}
    with pytest.raises(AkvReleaseError, match="not by the expected instance"):
        azure.release(azure.uri("k"), sim_dir)


def test_pinned_jwks_of_another_instance_is_refused(azure: Azure, sim_dir: Path) -> None:
    other = json.dumps({"keys": []}).encode()
    with pytest.raises(AkvReleaseError, match="is not in the JWKS"):
        azure.release(azure.uri("k"), sim_dir, maa_jwks=other)
    assert ("GET", "/certs") not in azure.maa.seen


def test_tls_is_verified_with_the_system_store_by_default(azure: Azure, sim_dir: Path) -> None:
    with pytest.raises(
        AkvReleaseError, match=r"attest to MAA: the TLS certificate of sharedeus2.* is not trusted"
    ):
        azure.release(azure.uri("k"), sim_dir, ca_bundle=None)
    assert azure.maa.seen == []


def test_maa_refusing_the_evidence_is_named(azure: Azure, tmp_path: Path) -> None:
    # Evidence from another simulator: the fake MAA's pinned ARK does not match it.
    with pytest.raises(
        AkvReleaseError, match=r"attest to MAA: .*/attest/SevSnpVm answered HTTP 400 \(InvalidParameter"
    ):
        azure.release(azure.uri("k"), tmp_path / "other-sim")
    assert azure.vault.seen == []


def test_unknown_algorithm_and_bad_endpoint_are_input_errors(azure: Azure, sim_dir: Path) -> None:
    with pytest.raises(InputError, match="unknown key wrapping algorithm"):
        azure.release(azure.uri("k"), sim_dir, algorithm="A256KW")
    with pytest.raises(InputError, match="not an https://host URL"):
        azure.release(azure.uri("k"), sim_dir, maa_endpoint="http://sharedeus2.eus2.attest.azure.net")
    with pytest.raises(InputError, match="cannot load the CA bundle"):
        azure.release(azure.uri("k"), sim_dir, ca_bundle=Path("/nonexistent/ca.pem"))
    with pytest.raises(InputError, match="no MAA endpoint"):
        azure.release(azure.uri("k"), sim_dir, maa_endpoint=None)


def _fail(why: str, **_: Any) -> AkvReleaseError:
    return AkvReleaseError("akv://v/keys/k", "attest to MAA", why)


def test_maa_requests_for_snp_and_tdx_evidence() -> None:
    runtime = b'{"keys":[]}'
    quote = base64.b64encode(b"quote").decode()
    (path, api), body = maa_request(Collected("tdx", "configfs-tsm", {"report": quote}), runtime, None, _fail)
    assert (path, api) == ("TdxVm", "2023-04-01-preview")
    assert body == {"quote": "cXVvdGU", "runtimeData": {"data": "eyJrZXlzIjpbXX0", "dataType": "JSON"}}

    snp_evidence = {"report": quote, "vcek": "VCEK PEM\n", "chain": "ASK ARK PEM\n"}
    (path, api), body = maa_request(Collected("snp", "sev-guest", snp_evidence), runtime, None, _fail)
    assert (path, api) == ("SevSnpVm", "2022-08-01")
    inner = json.loads(base64.urlsafe_b64decode(body["report"] + "=="))
    assert base64.urlsafe_b64decode(inner["VcekCertChain"] + "==") == b"VCEK PEM\nASK ARK PEM\n"
    assert base64.urlsafe_b64decode(inner["SnpReport"] + "==") == b"quote"

    with pytest.raises(AkvReleaseError, match="without a VCEK certificate"):
        maa_request(Collected("snp", "sev-guest", {"report": quote}), runtime, None, _fail)


def test_vtpm_evidence_is_refused_with_the_reason() -> None:
    collected = Collected(kind="az-snp-vtpm", source="azure-vtpm", evidence={"report": "AA=="})
    with pytest.raises(AkvReleaseError, match="TPM-held key"):
        maa_request(collected, b"{}", None, _fail)


# --- URIs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "vault", "name", "version"),
    [
        ("akv://myvault/keys/dataset-key", "myvault", "dataset-key", None),
        (
            "akv://my-vault-01/keys/K1/0123456789abcdef0123456789abcdef",
            "my-vault-01",
            "K1",
            "0123456789abcdef0123456789abcdef",
        ),
    ],
)
def test_parse_akv_uri(uri: str, vault: str, name: str, version: str | None) -> None:
    parsed = parse_akv_uri(uri)
    assert (parsed.vault, parsed.name, parsed.version) == (vault, name, version)
    assert str(parsed) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "kbs://host/a/b/c",
        "akv://ab/keys/k",  # vault name too short
        "akv://myvault/secrets/k",
        "akv://myvault/keys/",
        "akv://myvault/keys/k/v/extra",
        "akv://myvault/keys/k_underscore",
        "akv://myvault:443/keys/k",
        "akv://user@myvault/keys/k",
        "akv://myvault/keys/k?x=1",
    ],
)
def test_parse_akv_uri_refuses(uri: str) -> None:
    with pytest.raises(InputError):
        parse_akv_uri(uri)


# --- unwrap ----------------------------------------------------------------------------------


def _wrapped(public: rsa.RSAPublicKey, material: bytes, hash_: hashes.HashAlgorithm, enc: str) -> str:
    kek = os.urandom(32)
    ct = public.encrypt(kek, padding.OAEP(mgf=padding.MGF1(hash_), algorithm=hash_, label=None))
    blob = {
        "schema_version": "1.0",
        "header": {"enc": enc},
        "ciphertext": _b64u(ct + aes_key_wrap_with_padding(kek, material)),
    }
    return _b64u(json.dumps(blob).encode())


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def wrapping() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _decrypt(private: rsa.RSAPrivateKey) -> Callable[[bytes, hashes.HashAlgorithm], bytes]:
    def decrypt(data: bytes, hash_: hashes.HashAlgorithm) -> bytes:
        return private.decrypt(data, padding.OAEP(mgf=padding.MGF1(hash_), algorithm=hash_, label=None))

    return decrypt


@pytest.mark.parametrize(("enc", "hash_"), [(a, h()) for a, h in akv.ALGORITHMS.items()])
@pytest.mark.parametrize("size", [1, 7, 32, 300])
def test_unwrap_key_hsm(
    wrapping: rsa.RSAPrivateKey, enc: str, hash_: hashes.HashAlgorithm, size: int
) -> None:
    material = os.urandom(size)
    blob = _wrapped(wrapping.public_key(), material, hash_, enc)
    assert akv.unwrap_key_hsm(blob, enc, _decrypt(wrapping), 384) == material


def test_unwrap_refuses_a_different_enc_and_a_flipped_bit(wrapping: rsa.RSAPrivateKey) -> None:
    blob = _wrapped(wrapping.public_key(), b"k" * 32, hashes.SHA256(), "RSA_AES_KEY_WRAP_256")
    with pytest.raises(ValueError, match="wrapped with 'RSA_AES_KEY_WRAP_256', not the RSA_AES_KEY_WRAP_384"):
        akv.unwrap_key_hsm(blob, "RSA_AES_KEY_WRAP_384", _decrypt(wrapping), 384)
    doc = json.loads(base64.urlsafe_b64decode(blob + "=="))
    raw = bytearray(base64.urlsafe_b64decode(doc["ciphertext"] + "=="))
    raw[-1] ^= 1
    doc["ciphertext"] = _b64u(bytes(raw))
    with pytest.raises(ValueError, match="RFC 5649"):
        akv.unwrap_key_hsm(_b64u(json.dumps(doc).encode()), "RSA_AES_KEY_WRAP_256", _decrypt(wrapping), 384)
    with pytest.raises(ValueError, match="not base64url JSON"):
        akv.unwrap_key_hsm("!!", "RSA_AES_KEY_WRAP_256", _decrypt(wrapping), 384)


def test_binding_is_sha256_of_the_runtime_data() -> None:
    runtime = akv.runtime_data_for({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "x"})
    assert runtime == b'{"keys":[{"e":"AQAB","kid":"x","kty":"RSA","n":"AQAB"}]}'
    report_data = akv.report_data_for(runtime)
    assert len(report_data) == 64
    assert report_data[32:] == bytes(32)


def test_wrapping_key_does_not_show_itself() -> None:
    key = _WrappingKey(2048)
    assert "d" not in key.jwk and "p" not in key.jwk
    assert repr(key) == f"_WrappingKey(kid={key.kid!r})"
    with pytest.raises(TypeError):
        key.__reduce__()


# --- release policies ------------------------------------------------------------------------


SAMPLE_POLICY = "azure/skr-release-policy.sample.json"
SAMPLE_CLAIMS = "azure/guest-token-claims.sample.json"
EUS = "https://sharedeus.eus.attest.azure.net"


@pytest.fixture(scope="module")
def sample(read_vector: Callable[[str], bytes]) -> tuple[bytes, dict[str, Any]]:
    return read_vector(SAMPLE_POLICY), json.loads(read_vector(SAMPLE_CLAIMS))


@pytest.mark.vectors
def test_sample_policy_parses(sample: tuple[bytes, dict[str, Any]]) -> None:
    policy = parse_release_policy(sample[0])
    assert policy.version == "1.0.0"
    assert len(policy.authorities) == 26
    assert policy.authorities[0] == EUS + "/"


@pytest.mark.vectors
def test_sample_claims_satisfy_the_sample_policy_from_its_authority(
    sample: tuple[bytes, dict[str, Any]],
) -> None:
    data, claims = sample
    decision = evaluate(parse_release_policy(data), {**claims, "iss": EUS})
    assert decision.allowed
    assert decision.authority == EUS + "/"


@pytest.mark.vectors
def test_sample_token_from_a_test_instance_is_not_an_authority(sample: tuple[bytes, dict[str, Any]]) -> None:
    data, claims = sample  # its iss is https://sharedeus.eus.test.attest.azure.net
    decision = evaluate(parse_release_policy(data), claims)
    assert not decision.allowed
    assert decision.reason.startswith(
        "the token's issuer (iss) is 'https://sharedeus.eus.test.attest.azure.net'"
    )
    assert "and 23 more" in decision.reason


@pytest.mark.vectors
@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (
            ("x-ms-isolation-tee", "x-ms-attestation-type"),
            "sgxenclave",
            "claim x-ms-isolation-tee.x-ms-attestation-type is 'sgxenclave', "
            "the policy requires 'sevsnpvm' or 'tdxvm'",
        ),
        (
            ("x-ms-isolation-tee", "x-ms-compliance-status"),
            "not-compliant",
            "claim x-ms-isolation-tee.x-ms-compliance-status is 'not-compliant', the policy requires "
            "'azure-compliant-cvm'",
        ),
    ],
)
def test_sample_policy_names_the_failed_claim(
    sample: tuple[bytes, dict[str, Any]], path: tuple[str, str], value: str, reason: str
) -> None:
    data, claims = sample
    claims = json.loads(json.dumps(claims))
    claims["iss"] = EUS
    claims[path[0]][path[1]] = value
    decision = evaluate(parse_release_policy(data), claims)
    assert not decision.allowed
    assert decision.reason == reason


@pytest.mark.vectors
def test_sample_policy_lists_every_failure(sample: tuple[bytes, dict[str, Any]]) -> None:
    data, claims = sample
    claims = {**claims, "iss": EUS, "x-ms-isolation-tee": {}}
    decision = evaluate(parse_release_policy(data), claims)
    tee = "claim x-ms-isolation-tee"
    assert decision.failures == (
        f"{tee}.x-ms-attestation-type is absent, the policy requires 'sevsnpvm' or 'tdxvm'",
        f"{tee}.x-ms-compliance-status is absent, the policy requires 'azure-compliant-cvm'",
    )


@pytest.mark.parametrize(
    ("claim", "equals", "allowed"),
    [
        (False, "false", True),
        (False, False, True),
        (True, "false", False),
        (0, False, False),
        (55, "55", True),
        (55, 55, True),
        ("55", 55, False),
        ("SevSnpVm", "sevsnpvm", False),
    ],
)
def test_equals_semantics(claim: Any, equals: Any, allowed: bool) -> None:
    policy = parse_release_policy(
        {"anyOf": [{"authority": "https://maa", "allOf": [{"claim": "c", "equals": equals}]}]}
    )
    assert evaluate(policy, {"iss": "https://maa", "c": claim}).allowed is allowed


def test_nested_authority_on_the_root_applies_to_branches() -> None:
    policy = parse_release_policy(
        {"authority": "https://maa/", "anyOf": [{"allOf": [{"claim": "a", "equals": "1"}]}]}
    )
    assert evaluate(policy, {"iss": "https://MAA", "a": "1"}).allowed
    assert not evaluate(policy, {"iss": "https://other", "a": "1"}).allowed


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (b"not json", "not JSON"),
        ({"version": "2.0.0", "anyOf": []}, "version '2.0.0'"),
        ({"anyOf": []}, "non-empty list"),
        ({"anyOf": [{"allOf": [{"claim": "a", "equals": "1"}]}]}, "names no authority"),
        ({"anyOf": [{"authority": "https://m", "allOf": [{"claim": "a"}]}]}, "exactly {claim, equals}"),
        (
            {"anyOf": [{"authority": "https://m", "allOf": [{"claim": "a", "equals": None}]}]},
            "string, number",
        ),
        (
            {"anyOf": [{"authority": "http://m", "allOf": [{"claim": "a", "equals": "1"}]}]},
            "not an https URL",
        ),
        ({"anyOf": [{"authority": "https://m", "oneOf": []}]}, "must hold one of"),
        ({"claim": "a", "equals": "1"}, "unknown members"),
        (
            {"anyOf": [{"authority": "https://m", "allOf": [{"claim": "a", "equals": "1"}]}], "x": 1},
            "unknown members",
        ),
    ],
)
def test_malformed_policies_are_refused(policy: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("{", r"\{").replace("(", r"\(")):
        parse_release_policy(policy)


def test_deep_policies_are_refused() -> None:
    node: dict[str, Any] = {"claim": "a", "equals": "1"}
    for _ in range(40):
        node = {"allOf": [node]}
    with pytest.raises(PolicyError, match="nests deeper"):
        parse_release_policy({"anyOf": [{"authority": "https://m", **node}]})


def test_released_at_is_checked_against_the_clock(azure: Azure, sim_dir: Path) -> None:
    azure.vault.add_key("k", os.urandom(32), sim_policy())
    later = datetime.now(timezone.utc) + timedelta(days=30)
    with pytest.raises(AkvReleaseError, match="expired"):
        azure.release(azure.uri("k"), sim_dir, clock=lambda: later)
