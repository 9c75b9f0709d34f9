"""A kernel's kept broker session (:class:`jupyter_cc.keys.kbs_client.KbsClient`), under attack.

The second and later releases from one broker are one ``resource`` request on the kept,
pinned HTTPS connection with the kept attestation token. These tests check that nothing
weakens: a token goes only to the broker (origin and pin) that issued it, never over a new
connection; an expired, refused or revoked token means a full release; every kept request is
judged by the resource's policy and revocation state as a fresh one; the JWE is opened only
with the session's own TEE key; nothing shows a token or a key.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from jupyter_cc.kbs.broker import Broker, RequestRefusedError
from jupyter_cc.kbs.protocol import encrypt_response, tee_pubkey_jwk
from jupyter_cc.kbs.server import RunningBroker, start_in_thread
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.kbs.tls import TlsIdentity, ensure_identity, server_context
from jupyter_cc.keys import KeyReleaseError, kbs_client
from jupyter_cc.keys.kbs_client import KbsClient, release_kbs

ROOT = Path(__file__).resolve().parents[2]
SIM_POLICY = (ROOT / "jupyter_cc" / "policies" / "simulated.toml").read_text()
KEY = bytes(range(32))
OTHER = b"\x5a" * 32
STRICT_KEY = b"\xa5" * 32
FULL = ["connect", "auth", "evidence", "attest", "resource", "open"]
KEPT = ["resource", "open"]


class Clock:
    """A movable clock (wall or monotonic) for the broker or the client."""

    def __init__(self, base: Any) -> None:
        self.offset = 0.0
        self._base = base

    def __call__(self) -> float:
        return float(self._base()) + self.offset


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    s = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    s.add("default/key/demo", KEY, policy_text=SIM_POLICY)
    s.add("default/key/other", OTHER, policy_text=SIM_POLICY)
    s.add("default/key/strict", STRICT_KEY)  # the default policy: hardware TEEs only
    yield s
    s.close()


@pytest.fixture
def identity(tmp_path: Path) -> TlsIdentity:
    return ensure_identity(tmp_path / "tls")


@pytest.fixture
def broker_clock() -> Clock:
    import time

    return Clock(time.time)


class Watched(Broker):
    """A broker that records which sessions its ``resource`` calls came with (no token text)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bearer_calls = 0
        self.bearer_refused = 0

    def session_for_token(self, token: str) -> Any:
        self.bearer_calls += 1
        found = super().session_for_token(token)
        self.bearer_refused += found is None
        return found


@pytest.fixture
def broker(store: KeyStore, identity: TlsIdentity, broker_clock: Clock) -> Iterator[RunningBroker]:
    running = start_in_thread(Watched(store, clock=broker_clock), identity=identity)
    yield running
    running.stop()


@pytest.fixture
def steps() -> Iterator[list[str]]:
    seen: list[str] = []
    kbs_client.step_timer = lambda step, _seconds: seen.append(step)
    yield seen
    kbs_client.step_timer = None


@pytest.fixture
def client() -> Iterator[KbsClient]:
    with KbsClient() as c:
        yield c


def watched(b: RunningBroker) -> Watched:
    assert isinstance(b.broker, Watched)
    return b.broker


def audit(b: RunningBroker) -> list[dict[str, Any]]:
    path = b.broker.audit_path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def events(b: RunningBroker) -> list[tuple[str, str]]:
    return [(e["event"], e.get("resource", "")) for e in audit(b)]


# --- what it is for --------------------------------------------------------------------------


def test_later_releases_are_one_request_on_the_kept_connection(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    first = client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    assert steps == FULL
    steps.clear()
    second = client.release(broker.kbs_uri("default/key/other"), tee="sim")
    third = client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    assert steps == KEPT + KEPT  # no connect, no auth, no attest
    assert (first.material, second.material, third.material) == (KEY, OTHER, KEY)
    assert second.policy == "simulated-demo" and second.key_id == "default/key/other"
    assert watched(broker).bearer_calls == 2 and watched(broker).bearer_refused == 0
    assert events(broker) == [
        ("release", "default/key/demo"),
        ("release", "default/key/other"),
        ("release", "default/key/demo"),
    ]


def test_release_kbs_without_a_client_keeps_nothing(broker: RunningBroker, steps: list[str]) -> None:
    release_kbs(broker.kbs_uri("default/key/demo"), tee="sim")
    release_kbs(broker.kbs_uri("default/key/demo"), tee="sim")
    assert steps == FULL + FULL
    assert watched(broker).bearer_calls == 0


def test_nothing_shows_a_token_or_a_key(broker: RunningBroker, client: KbsClient) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    (entry,) = client._kept.values()
    token = entry.token
    assert token.count(".") == 2
    for text in (repr(client), str(client), repr(entry), repr(list(client._kept.items()))):
        assert token not in text and token.split(".")[1] not in text
        assert KEY.hex() not in text
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(client)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(entry)
    client.close()
    assert not client._kept and entry.token == "" and entry.private is None
    assert entry.session.conn.sock is None


# --- a token goes to no one but the broker that issued it ------------------------------------


class Impostor:
    """A TLS server with its own certificate on a given port that records every request."""

    def __init__(self, port: int, identity: TlsIdentity) -> None:
        self.requests: list[bytes] = []
        self.ctx = server_context(identity.cert_path, identity.key_path)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        data = tls.recv(65536)
                        if data:
                            self.requests.append(data)
                            tls.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                except (OSError, ssl.SSLError):
                    pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def test_a_token_is_not_sent_under_another_pin_for_the_same_address(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    pin = broker.fingerprint
    assert pin is not None
    other_pin = ("0" if pin[0] != "0" else "1") + pin[1:]
    uri = f"kbs://127.0.0.1:{broker.port}/default/key/other?cert-sha256={other_pin}"
    steps.clear()
    with pytest.raises(KeyReleaseError, match="not the pinned"):
        client.release(uri, tee="sim")
    assert watched(broker).bearer_calls == 0  # the kept connection (other pin) was not used
    assert steps == []  # refused at the handshake, before any request
    # the kept session for the real pin is untouched and still used
    assert client.release(broker.kbs_uri("default/key/other"), tee="sim").material == OTHER
    assert watched(broker).bearer_calls == 1


def test_an_impostor_at_the_address_after_a_restart_gets_no_token(
    store: KeyStore, identity: TlsIdentity, tmp_path: Path, client: KbsClient
) -> None:
    real = start_in_thread(Broker(store), identity=identity)
    uri = real.kbs_uri("default/key/demo")
    try:
        assert client.release(uri, tee="sim").material == KEY
    finally:
        real.stop()  # the kept connection is closed by the broker
    impostor = Impostor(real.port, ensure_identity(tmp_path / "impostor"))
    try:
        with pytest.raises(KeyReleaseError, match="not the pinned"):
            client.release(uri, tee="sim")
    finally:
        impostor.close()
    assert impostor.requests == []  # no request, no token: refused at the handshake
    assert not client._kept


def test_tokens_are_kept_per_broker(
    broker: RunningBroker, store: KeyStore, tmp_path: Path, client: KbsClient, steps: list[str]
) -> None:
    second = start_in_thread(Watched(store), identity=ensure_identity(tmp_path / "second"))
    try:
        client.release(broker.kbs_uri("default/key/demo"), tee="sim")
        client.release(second.kbs_uri("default/key/demo"), tee="sim")
        assert steps == FULL + FULL  # the second broker attests its own session
        assert watched(second).bearer_calls == 0
        steps.clear()
        client.release(broker.kbs_uri("default/key/other"), tee="sim")
        client.release(second.kbs_uri("default/key/other"), tee="sim")
        assert steps == KEPT + KEPT
        assert watched(broker).bearer_calls == 1 and watched(second).bearer_calls == 1
        assert watched(broker).bearer_refused == 0 and watched(second).bearer_refused == 0
    finally:
        client.close()
        second.stop()


def test_a_kept_session_is_per_evidence_source_and_key_type(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    client.release(broker.kbs_uri("default/key/demo"), tee="sim", key_type="rsa")
    assert steps == FULL + FULL
    assert watched(broker).bearer_calls == 0


# --- expired, refused, revoked ---------------------------------------------------------------


def test_a_token_about_to_expire_is_not_sent(
    broker: RunningBroker, store: KeyStore, steps: list[str]
) -> None:
    import time

    local = Clock(time.monotonic)
    with KbsClient(clock=local) as client:
        client.release(broker.kbs_uri("default/key/demo"), tee="sim")
        local.offset = 300 - 10 + 1  # the broker's 300 s token, less the client's 10 s margin
        steps.clear()
        assert client.release(broker.kbs_uri("default/key/demo"), tee="sim").material == KEY
        assert steps == FULL
        assert watched(broker).bearer_calls == 0
        steps.clear()
        client.release(broker.kbs_uri("default/key/other"), tee="sim")  # the new token is kept
        assert steps == KEPT


def test_a_token_the_broker_says_has_expired_means_a_full_release(
    broker: RunningBroker, broker_clock: Clock, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    broker_clock.offset = 400  # the broker's clock is past the token's exp; the client's is not
    steps.clear()
    assert client.release(broker.kbs_uri("default/key/other"), tee="sim").material == OTHER
    assert steps == ["resource", *FULL]  # refused (401), then a whole release
    assert watched(broker).bearer_calls == 1 and watched(broker).bearer_refused == 1


def test_a_token_with_no_usable_expiry_is_not_kept(
    broker: RunningBroker, broker_clock: Clock, client: KbsClient, steps: list[str]
) -> None:
    broker_clock.offset = -400  # the broker issues a token whose exp is already past
    assert client.release(broker.kbs_uri("default/key/demo"), tee="sim").material == KEY
    assert not client._kept
    assert kbs_client._token_lifetime("a.b.c", 0.0) is None
    assert kbs_client._token_lifetime("a.eyJleHAiOiB0cnVlfQ.c", 0.0) is None  # {"exp": true}
    assert kbs_client._token_lifetime("a.eyJleHAiOjEwfQ.c", 0.0) == 10.0  # {"exp":10}


def test_a_token_revoked_by_a_broker_restart_means_a_full_release(
    store: KeyStore, identity: TlsIdentity, client: KbsClient, steps: list[str]
) -> None:
    first = start_in_thread(Broker(store), identity=identity)
    try:
        client.release(first.kbs_uri("default/key/demo"), tee="sim")
    finally:
        first.stop()
    again = start_in_thread(Watched(store), identity=identity, port=first.port)
    try:
        steps.clear()
        assert client.release(again.kbs_uri("default/key/other"), tee="sim").material == OTHER
        assert steps == FULL  # the kept connection was closed: a fresh one, the pin checked
        assert watched(again).bearer_calls == 0
    finally:
        client.close()
        again.stop()


def test_a_token_forgotten_while_the_connection_stays_open_is_refused_with_401(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    """A restart of another worker, or the session store reset: the token's session is gone."""
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    broker.broker.sessions.reset()
    steps.clear()
    assert client.release(broker.kbs_uri("default/key/other"), tee="sim").material == OTHER
    assert steps == ["resource", *FULL]
    assert watched(broker).bearer_refused == 1


def test_a_token_signed_by_another_broker_is_refused(store: KeyStore, identity: TlsIdentity) -> None:
    """Both brokers share the store and the sessions file's shape, not the signing key."""
    import time

    one, two = Broker(store), Broker(store)
    session = one.auth({"version": "0.4.0", "tee": "sample"})
    assert two.session_for_token(_forged_token(one, session.id, time.time() + 300)) is None


def _forged_token(b: Broker, jti: str, exp: float) -> str:
    from joserfc import jwt

    return jwt.encode({"alg": "ES256"}, {"jti": jti, "exp": int(exp)}, b._signing_key, algorithms=["ES256"])


# --- every kept request is judged like a fresh one -------------------------------------------


def test_a_resource_whose_policy_the_claims_fail_is_refused_on_the_kept_session(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    steps.clear()
    with pytest.raises(KeyReleaseError, match=r"403.*allow_simulated"):
        client.release(broker.kbs_uri("default/key/strict"), tee="sim")
    assert steps[:1] == ["resource"] and steps[1:] == FULL[:-1]  # refused kept, then refused fresh
    assert watched(broker).bearer_calls == 1 and watched(broker).bearer_refused == 0
    assert events(broker)[1:] == [("deny", "default/key/strict"), ("deny", "default/key/strict")]


def test_the_broker_applies_the_policy_to_each_bearer_request(broker: RunningBroker, store: KeyStore) -> None:
    """At the broker: a token whose claims satisfied one policy does not carry to another."""
    b = broker.broker
    session = _attested(b)
    assert b.release(session, "default/key/demo")[1] == "simulated-demo"
    with pytest.raises(RequestRefusedError) as info:
        b.release(session, "default/key/strict")
    assert info.value.status == 403 and "allow_simulated" in info.value.extra["failed_rules"]
    store.set_policy("default/key/demo", None)  # the policy changed after attest
    with pytest.raises(RequestRefusedError) as again:
        b.release(session, "default/key/demo")
    assert again.value.status == 403


def _attested(b: Broker) -> Any:
    """An attested session via the real attest path, looked up by its token (as a kept request)."""
    from jupyter_cc.guest.collectors import collect_cpu_evidence
    from jupyter_cc.kbs.protocol import report_data_for, runtime_data_digest
    from jupyter_cc.keys.kbs_client import _upstream_evidence

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = tee_pubkey_jwk(key)
    session = b.auth({"version": "0.4.0", "tee": "sample"})
    digest = runtime_data_digest(session.nonce, jwk, session.hash_algorithm, additional_evidence="")
    collected, _ = collect_cpu_evidence(report_data_for(digest), tee="sim")
    _tee, primary = _upstream_evidence(collected.kind, dict(collected.evidence), digest)
    body = {
        "runtime-data": {"nonce": session.nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }
    token = b.attest(b.session(session.id), body)
    found = b.session_for_token(token)
    assert found is not None and found.claims is not None
    return found


def test_a_resource_revoked_after_attest_is_refused_on_the_kept_session(
    broker: RunningBroker, store: KeyStore, client: KbsClient
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    store.revoke("default/key/other")
    with pytest.raises(KeyReleaseError, match="revoked"):
        client.release(broker.kbs_uri("default/key/other"), tee="sim")
    assert watched(broker).bearer_calls == 1
    assert [e for e, _ in events(broker)] == ["release", "deny", "deny"]


def test_a_missing_resource_is_404_without_a_second_attestation(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    steps.clear()
    with pytest.raises(KeyReleaseError, match="404"):
        client.release(broker.kbs_uri("default/key/missing"), tee="sim")
    assert steps == ["resource"]
    assert client.release(broker.kbs_uri("default/key/other"), tee="sim").material == OTHER


# --- the JWE opens only with the session's key ------------------------------------------------


def test_a_jwe_to_another_key_on_the_kept_session_is_not_accepted(
    broker: RunningBroker, client: KbsClient, steps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    stranger = tee_pubkey_jwk(ec.generate_private_key(ec.SECP256R1()))
    real = Broker.release
    forged: list[int] = []

    def once(self: Broker, session: Any, resource: str) -> tuple[dict[str, str], str]:
        if not forged:  # the first (kept) request gets a key of the attacker's choosing
            forged.append(1)
            return encrypt_response(stranger, b"\xee" * 32), "evil"
        return real(self, session, resource)

    monkeypatch.setattr(Broker, "release", once)
    steps.clear()
    key = client.release(broker.kbs_uri("default/key/other"), tee="sim")
    assert key.material == OTHER and key.policy == "simulated-demo"
    assert steps == ["resource", *FULL]  # could not open it: a whole release instead


def test_a_connection_with_unexpected_data_waiting_is_not_used(
    broker: RunningBroker, client: KbsClient, steps: list[str]
) -> None:
    client.release(broker.kbs_uri("default/key/demo"), tee="sim")
    (entry,) = client._kept.values()
    assert not kbs_client._readable(entry.session.conn)
    entry.session.conn.close()  # e.g. closed by the broker's idle timeout
    assert kbs_client._readable(entry.session.conn)
    steps.clear()
    assert client.release(broker.kbs_uri("default/key/other"), tee="sim").material == OTHER
    assert steps == FULL
    assert watched(broker).bearer_calls == 0


def test_a_verified_token_is_still_checked_for_expiry_and_its_session_every_time(
    store: KeyStore, broker_clock: Clock
) -> None:
    b = Broker(store, clock=broker_clock)
    session = _attested(b)
    token = next(iter(_tokens_of(b, session)))
    assert b.session_for_token(token) is not None  # verified, and now kept by its digest
    assert b.session_for_token(token) is not None
    forged = _forged_token(Broker(store), session.token_id, broker_clock() + 300)  # same jti, other key
    assert b.session_for_token(forged) is None
    assert b.session_for_token(token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")) is None
    broker_clock.offset = 301
    assert b.session_for_token(token) is None  # expired, though its signature was checked before
    broker_clock.offset = 0
    assert b.session_for_token(token) is not None
    b.sessions.reset()  # a restart of the session store: the token's session is gone
    assert b.session_for_token(token) is None


def _tokens_of(b: Broker, session: Any) -> list[str]:
    """A token for ``session`` as this broker signs them (what attest answered)."""
    from joserfc import jwt

    claims = {"jti": session.token_id, "exp": int(session.expires)}
    return [jwt.encode({"alg": "ES256"}, claims, b._signing_key, algorithms=["ES256"])]


# --- the broker's fast path for bearer resource requests answers as tornado's handler does ----


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        wanted = ("Content-Type", "Cache-Control", "X-Jupyter-CC-Policy")
        return resp.status, body, {h: resp.headers.get(h, "") for h in wanted}
    finally:
        conn.close()


def test_bearer_and_cookie_resource_requests_get_the_same_answers(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The bearer form is served by the fast path (no tornado handler), the cookie form by
    :class:`jupyter_cc.kbs.server._ResourceHandler`: status, body members and headers agree."""
    running = start_in_thread(Broker(store))
    try:
        b = running.broker
        session = _attested(b)
        token = _tokens_of(b, session)[0]
        bearer = {"Authorization": f"Bearer {token}"}
        cookie = {"Cookie": f"kbs-session-id={session.id}"}
        for rid in ("default/key/demo", "default/key/strict", "default/key/missing"):
            path = f"/kbs/v0/resource/{rid}"
            fast, slow = _get(running.port, path, bearer), _get(running.port, path, cookie)
            assert fast[0] == slow[0] and fast[2] == slow[2], rid
            assert set(fast[1]) == set(slow[1]), rid
            if fast[0] != 200:
                assert fast[1] == slow[1], rid

        def logged() -> list[str]:
            # Only these two requests' lines: a line is logged after its answer was written, so
            # an earlier request's may land after caplog.clear() and these a little late.
            return [
                r.pathname.replace("\\", "/")
                for r in caplog.records
                if r.name == "tornado.access"
                and r.getMessage().startswith("200 GET /kbs/v0/resource/default/key/demo ")
            ]

        with caplog.at_level(logging.INFO, logger="tornado.access"):
            caplog.clear()
            assert _get(running.port, "/kbs/v0/resource/default/key/demo", bearer)[0] == 200
            _get(running.port, "/kbs/v0/resource/default/key/demo", cookie)
            deadline = time.monotonic() + 5
            while len(logged()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            lines = logged()
        assert len(lines) == 2, lines
        assert any(path.endswith("jupyter_cc/kbs/server.py") for path in lines), lines  # the fast path
        assert any(path.endswith("tornado/web.py") for path in lines), lines  # the handler
        bogus = {"Authorization": "Bearer " + token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")}
        none = {"Cookie": "kbs-session-id=made-up"}
        fast, slow = (_get(running.port, "/kbs/v0/resource/default/key/demo", h) for h in (bogus, none))
        assert fast == slow and fast[0] == 401
        # what the fast path leaves to tornado is answered there, just as before
        assert _get(running.port, "/kbs/v0/resource/default/key/demo?x=1", bearer)[0] == 200
        assert _get(running.port, "/kbs/v0/resource/default/key/de%6do", bearer)[0] == 200
        assert _get(running.port, "/kbs/v0/resource/default/key", bearer)[0] == 404
    finally:
        running.stop()
    assert [e["event"] for e in audit_of(b)].count("release") == 6


def audit_of(b: Broker) -> list[dict[str, Any]]:
    return [json.loads(line) for line in b.audit_path.read_text().splitlines()]
