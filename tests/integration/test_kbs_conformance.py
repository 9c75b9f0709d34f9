"""Conformance: an upstream-shaped KBS 0.4.0 client against the broker, and our client against trustee.

``tests/support/upstream_kbs_client.py`` builds requests as guest-components does; it drives a
real broker (HTTP, on loopback) through every protocol step and every refusal, and each refusal
must be what upstream clients read: trustee's status, ErrorInformation JSON, one sentence.
``tests/support/fake_trustee.py`` answers as trustee's KBS; jupyter-cc's ``kbs://`` client must
take a key from it as from our own broker.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.kbs.broker import Broker
from jupyter_cc.kbs.server import RunningBroker, start_in_thread
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.keys import KeyReleaseError, release
from tests.support.fake_trustee import FakeTrustee, serve_trustee
from tests.support.upstream_kbs_client import ErrorInformation, UpstreamClient, UpstreamError, random_nonce
from tests.support.upstream_vectors import az_snp_primary, snp_primary, tdx_primary

ERRORS = "https://github.com/confidential-containers/kbs/errors/"
SAMPLE_POLICY = 'name = "upstream-sample"\nallow_simulated = true\ntee = ["sim-snp"]\n'
KEY = b"\x11" * 32
STRICT = b"\x22" * 32


class Clock:
    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


def _broker(tmp_path: Path, resources: dict[str, tuple[bytes, str | None]], clock: Clock) -> RunningBroker:
    store = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    for rid, (material, policy) in resources.items():
        store.add(rid, material, policy_text=policy)
    return start_in_thread(Broker(store, clock=clock))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(tmp_path: Path, clock: Clock) -> Iterator[RunningBroker]:
    """A broker with one allow-simulated resource and one under the default policy."""
    running = _broker(
        tmp_path, {"default/key/sample": (KEY, SAMPLE_POLICY), "default/key/strict": (STRICT, None)}, clock
    )
    yield running
    running.stop()
    running.broker.store.close()


@pytest.fixture
def strict_broker(tmp_path: Path, clock: Clock) -> Iterator[RunningBroker]:
    """A broker whose every resource has the default policy."""
    running = _broker(tmp_path, {"default/key/strict": (STRICT, None)}, clock)
    yield running
    running.stop()
    running.broker.store.close()


@pytest.fixture
def client(broker: RunningBroker) -> Iterator[UpstreamClient]:
    c = UpstreamClient(broker.port)
    yield c
    c.close()


def refused(step: Any, *args: Any) -> ErrorInformation:
    with pytest.raises(UpstreamError) as caught:
        step(*args)
    return caught.value.info


def one_sentence(info: ErrorInformation) -> None:
    assert info.detail.endswith(".")
    assert info.detail.count(". ") == 0, info.detail
    assert len(info.detail) < 600


# --- success -------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "insertion"])
def test_upstream_client_gets_a_resource_with_sample_evidence(broker: RunningBroker, order: str) -> None:
    c = UpstreamClient(broker.port, map_order=order)
    try:
        assert c.get_resource("default/key/sample") == KEY
        # Without the cookie: the attestation token as bearer (KbsClient's token path), or nothing.
        c.cookie = None
        status, raw, _ = c.send("GET", "/kbs/v0/resource/default/key/sample")
        assert status == 401 and json.loads(raw)["type"] == ERRORS + "TokenNotFound"
        conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
        conn.request(
            "GET", "/kbs/v0/resource/default/key/sample", headers={"Authorization": f"Bearer {c.token}"}
        )
        resp = conn.getresponse()
        assert resp.status == 200 and c.decrypt(json.loads(resp.read())) == KEY
        conn.close()
    finally:
        c.close()
    event = [json.loads(line) for line in broker.broker.audit_path.read_text().splitlines()][-1]
    assert event["event"] == "release" and event["simulated"] is True


def test_sample_is_refused_with_401_error_information_under_the_default_policy(
    strict_broker: RunningBroker,
) -> None:
    c = UpstreamClient(strict_broker.port)
    try:
        c.auth()
        info = refused(c.attest)
        assert info.status == 401 and info.type == ERRORS + "AttestationError"
        assert "allow_simulated = true" in info.detail
        one_sentence(info)
        info = refused(c.resource, "default/key/strict")
        assert info.status == 401 and info.type == ERRORS + "TokenNotFound"
    finally:
        c.close()


def test_sample_session_is_denied_a_default_policy_resource_with_403(client: UpstreamClient) -> None:
    client.auth()
    client.attest()
    info = refused(client.resource, "default/key/strict")
    assert info.status == 403 and info.type == ERRORS + "PolicyDeny"
    assert STRICT.hex() not in info.detail


def test_hash_algorithms_as_upstream_offers_them(broker: RunningBroker) -> None:
    for offered, expected in ((["sha256", "sha384", "sha512"], "sha384"), (["sha512"], "sha512")):
        c = UpstreamClient(broker.port, hashes=offered)
        try:
            challenge = c.auth()
            assert challenge["extra-params"] == {"selected-hash-algorithm": expected}
            assert len(base64.b64decode(challenge["nonce"])) == 32
            c.attest()
            assert c.resource("default/key/sample") == KEY
        finally:
            c.close()


def test_primary_evidence_sent_as_json_text_is_read(client: UpstreamClient) -> None:
    client.auth()
    text = json.dumps(client.sample_evidence())
    client.attest(client.attestation_body(text))
    assert client.resource("default/key/sample") == KEY


# --- every step's refusals -------------------------------------------------------------------------


def test_bad_auth_requests_get_401_attestation_error(client: UpstreamClient) -> None:
    bodies = [
        client.request_body("0.1.1"),
        client.request_body("0.5.0"),
        b"not json",
        b"[]",
        json.dumps({"version": "0.4.0", "tee": "quantum", "extra-params": ""}).encode(),
        json.dumps(
            {"version": "0.4.0", "tee": "snp", "extra-params": {"supported-hash-algorithms": ["md5"]}}
        ).encode(),
    ]
    for body in bodies:
        info = refused(client.auth, body)
        assert (info.status, info.type) == (401, ERRORS + "AttestationError"), body
        one_sentence(info)
    assert "0.4.x" in refused(client.auth, client.request_body("0.1.1")).detail


def test_attest_out_of_order_replayed_or_forged_is_refused(broker: RunningBroker, clock: Clock) -> None:
    c = UpstreamClient(broker.port)
    cases: list[tuple[str, ErrorInformation]] = []
    try:
        cases.append(("attest before auth", refused(c.attest, c.attestation_body(c.sample_evidence(b"x")))))
        c.auth()
        good = c.attestation_body()
        c.attest(good)
        cases.append(("replayed attest", refused(c.attest, good)))
        c.auth()
        cases.append(("other nonce", refused(c.attest, c.attestation_body(nonce=random_nonce()))))
        c.auth()
        stale = c.sample_evidence(c.runtime_digest(nonce=random_nonce()))
        cases.append(("evidence for another nonce", refused(c.attest, c.attestation_body(stale))))
        c.auth()
        device_bound = c.sample_evidence(c.device_digest())  # bound without additional-evidence
        cases.append(("0.1-style binding", refused(c.attest, c.attestation_body(device_bound))))
        c.auth()
        cases.append(
            ("unverifiable device", refused(c.attest, c.attestation_body(additional='{"sampledevice":{}}')))
        )
        c.auth()
        clock.offset = 61
        cases.append(("expired nonce", refused(c.attest)))
        clock.offset = 0
        c.auth()
        bare = json.dumps(
            {"runtime-data": {"nonce": c.nonce, "tee-pubkey": c.pubkey}, "tee-evidence": c.sample_evidence()}
        )
        cases.append(("0.1.x bare evidence", refused(c.attest, bare.encode())))
        c.auth()
        cases.append(("not JSON", refused(c.attest, b"{")))
        c.auth()
        weak = dict(c.pubkey, alg="RSA1_5")
        body = json.loads(c.attestation_body())
        body["runtime-data"]["tee-pubkey"] = weak
        cases.append(("bad tee-pubkey", refused(c.attest, json.dumps(body).encode())))
        c.tee = "snp"
        c.auth()
        cases.append(("tee snp, sample evidence", refused(c.attest)))
    finally:
        c.close()
    for name, info in cases:
        assert (info.status, info.type) == (401, ERRORS + "AttestationError"), name
        one_sentence(info)


def test_resource_refusals_are_trustees(client: UpstreamClient) -> None:
    info = refused(client.resource, "default/key/sample")  # no session
    assert (info.status, info.type) == (401, ERRORS + "TokenNotFound")
    client.auth()
    info = refused(client.resource, "default/key/sample")  # authenticated, not attested
    assert (info.status, info.type) == (401, ERRORS + "TokenNotFound")
    client.attest()
    info = refused(client.resource, "default/key/missing")
    assert info.status == 404 and info.type == ERRORS + "ResourceNotFound"
    one_sentence(info)


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/kbs/v0/resource/a/b", "InvalidRequestPath"),
        ("GET", "/kbs/v0/nonesuch/x", "PluginNotFound"),
        ("POST", "/kbs/v0/attestation-policy", "PluginNotFound"),
        ("GET", "/", "InvalidRequestPath"),
        ("GET", "/kbs/v0/auth", "PluginNotFound"),
        ("DELETE", "/kbs/v0/resource/default/key/sample", "PluginNotFound"),
    ],
)
def test_every_404_is_error_information_json(
    broker: RunningBroker, method: str, path: str, kind: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/json")
    assert doc["type"] == ERRORS + kind and doc["detail"].endswith(".")


# --- our client against trustee ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epk_order", "aad"),
    [
        (("crv", "kty", "x", "y"), "sent"),
        (("kty", "crv", "x", "y"), "sent"),
        (("x", "y", "crv", "kty"), "resorted"),
    ],
)
def test_our_client_takes_a_key_from_trustee(epk_order: tuple[str, ...], aad: str) -> None:
    kbs = FakeTrustee(resources={"default/key/k": b"trustee key"}, epk_order=epk_order, aad=aad)
    with serve_trustee(kbs) as port:
        key = release(f"kbs+http://127.0.0.1:{port}/default/key/k", tee="sim")
    assert key.material == b"trustee key"
    auth, attest = kbs.requests[0][2], kbs.requests[1][2]
    assert auth == {
        "version": "0.4.0",
        "tee": "sample",
        "extra-params": {"supported-hash-algorithms": ["sha384", "sha256", "sha512"]},
    }
    assert list(attest) == ["init-data", "runtime-data", "tee-evidence"]
    assert set(attest["tee-evidence"]) == {"primary_evidence", "additional_evidence"}
    assert set(attest["tee-evidence"]["primary_evidence"]) >= {"svn", "report_data"}


def test_our_client_reports_trustees_refusals() -> None:
    kbs = FakeTrustee(resources={"default/key/k": b"k"}, deny={"default/key/k"})
    with serve_trustee(kbs) as port:
        with pytest.raises(KeyReleaseError, match=r"403.*Access denied by policy"):
            release(f"kbs+http://127.0.0.1:{port}/default/key/k", tee="sim")
        with pytest.raises(KeyReleaseError, match=r"401.*Plugin internal error"):
            release(f"kbs+http://127.0.0.1:{port}/default/key/none", tee="sim")


def test_our_client_and_the_upstream_client_both_get_keys_from_our_broker(broker: RunningBroker) -> None:
    key = release(f"kbs+http://127.0.0.1:{broker.port}/default/key/sample", tee="sim")
    assert key.material == KEY
    with pytest.raises(KeyReleaseError, match="403"):
        release(f"kbs+http://127.0.0.1:{broker.port}/default/key/strict", tee="sim")


@pytest.mark.parametrize("tee", ["snp", "tdx", "az-snp-vtpm"])
def test_real_upstream_shaped_vectors_are_stopped_at_the_binding_check(
    broker: RunningBroker, vectors: Path, tee: str
) -> None:
    primaries = {"snp": snp_primary, "tdx": tdx_primary, "az-snp-vtpm": az_snp_primary}
    expected = {
        "snp": "REPORT_DATA is d447b55d",
        "tdx": "REPORTDATA is 6c62dec1",
        "az-snp-vtpm": "qualifying data",
    }
    c = UpstreamClient(broker.port, tee=tee)
    try:
        c.auth()
        info = refused(c.attest, c.attestation_body(primaries[tee](vectors)))
    finally:
        c.close()
    assert (info.status, info.type) == (401, ERRORS + "AttestationError")
    assert expected[tee] in info.detail, info.detail
