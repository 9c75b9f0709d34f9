"""The embedded key broker and the kbs:// client, end to end on loopback with the simulated TEE.

Every test talks HTTP to a real broker: in-process (tornado in a thread, free 127.0.0.1 port)
or, for the CLI, ``python -m jupyter_cc.cli.kbs kbs serve`` in a subprocess.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey

from jupyter_cc.cli.kbs import add_commands
from jupyter_cc.decoding import b64url_encode as b64url
from jupyter_cc.guest.collectors import collect_cpu_evidence
from jupyter_cc.kbs.broker import Broker
from jupyter_cc.kbs.protocol import (
    JWE_MEMBERS,
    MAX_BODY,
    SESSION_COOKIE,
    KbsError,
    canonical_json,
    report_data_for,
    runtime_data_digest,
    tee_pubkey_jwk,
)
from jupyter_cc.kbs.server import RunningBroker, start_in_thread
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.keys import KeyReleaseError, ReleasedKey, fingerprint, release
from jupyter_cc.keys.kbs_client import parse_kbs_uri

ROOT = Path(__file__).resolve().parents[2]
SIM_POLICY = (ROOT / "jupyter_cc" / "policies" / "simulated.toml").read_text()
KEY = bytes(range(32))
STRICT_KEY = b"\xa5" * 32


class Clock:
    """A movable clock for session and nonce expiry."""

    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    s = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    s.add("default/key/demo", KEY, policy_text=SIM_POLICY)
    s.add("default/key/strict", STRICT_KEY)  # the default policy: hardware TEEs only
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(store: KeyStore, clock: Clock) -> Iterator[RunningBroker]:
    running = start_in_thread(Broker(store, clock=clock))
    yield running
    running.stop()


def uri(b: RunningBroker, rid: str = "default/key/demo") -> str:
    return f"kbs+http://127.0.0.1:{b.port}/{rid}"  # plain HTTP: loopback only


def audit_lines(b: RunningBroker) -> list[dict[str, Any]]:
    path = b.broker.audit_path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- a hand-driven client, to break the protocol on purpose -----------------------------------


_OPEN: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Raw:
    """One connection and cookie; each method is one protocol step."""

    def __init__(self, b: RunningBroker, key: Any = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)
        _OPEN.append(self.conn)
        self.cookie: str | None = None
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.jwk = tee_pubkey_jwk(self.key)
        self.nonce = ""
        self.algorithm = "sha384"

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if self.cookie:
            h["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        self.conn.request(method, path, body=data, headers=h)
        resp = self.conn.getresponse()
        raw = resp.read()
        for header in resp.headers.get_all("Set-Cookie") or ():
            if header.startswith(SESSION_COOKIE + "="):
                self.cookie = header.split(";")[0].split("=", 1)[1]
        return resp.status, (json.loads(raw) if raw else None), resp

    def auth(self, algorithms: list[str] | None = None) -> Any:
        extra = {"supported-hash-algorithms": algorithms} if algorithms else {}
        status, doc, resp = self.call(
            "POST", "/kbs/v0/auth", {"version": "0.4.0", "tee": "sample", "extra-params": extra}
        )
        assert status == 200, doc
        self.nonce = doc["nonce"]
        self.algorithm = doc["extra-params"]["selected-hash-algorithm"]
        return resp

    def evidence(self, nonce: str | None = None, jwk: dict[str, Any] | None = None) -> dict[str, Any]:
        digest = runtime_data_digest(
            nonce or self.nonce, jwk or self.jwk, self.algorithm, additional_evidence=""
        )
        collected, _ = collect_cpu_evidence(report_data_for(digest), tee="sim")
        return {"kind": collected.kind, "evidence": collected.evidence}

    def attest(self, evidence: dict[str, Any] | None = None, nonce: str | None = None) -> tuple[int, Any]:
        body = {
            "runtime-data": {"nonce": nonce or self.nonce, "tee-pubkey": self.jwk},
            "tee-evidence": {
                "primary_evidence": evidence if evidence is not None else self.evidence(),
                "additional_evidence": "",
            },
        }
        status, doc, _ = self.call("POST", "/kbs/v0/attest", body)
        return status, doc

    def resource(self, rid: str = "default/key/demo", **headers: str) -> tuple[int, Any, Any]:
        return self.call("GET", f"/kbs/v0/resource/{rid}", headers=headers)


# --- release through the public client --------------------------------------------------------


def test_release_returns_the_stored_bytes(broker: RunningBroker) -> None:
    key = release(uri(broker), tee="sim")
    assert isinstance(key, ReleasedKey)
    assert key.material == KEY
    assert key.key_id == "default/key/demo"
    assert key.fingerprint == fingerprint(KEY)
    assert key.policy == "simulated-demo"
    assert key.uri == uri(broker)


def test_release_with_an_rsa_ephemeral_key(broker: RunningBroker) -> None:
    assert release(uri(broker), tee="sim", key_type="rsa").material == KEY


def test_release_uses_the_tee_from_the_environment(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_CC_TEE", "sim")
    assert release(uri(broker)).material == KEY


def test_released_key_never_shows_its_material() -> None:
    material = b"\x01\x02secret-material\xff" * 2
    key = ReleasedKey(material, key_id="default/key/demo", uri="kbs://h/default/key/demo", policy="p")
    for text in (repr(key), str(key), f"{key}", f"{[key]}"):
        assert "secret" not in text
        assert material.hex() not in text
        assert "default/key/demo" in text
        assert key.fingerprint in text
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(key)
    with pytest.raises(AttributeError):
        key.material = b"x"


def test_default_policy_denies_simulated_evidence_with_403(broker: RunningBroker) -> None:
    with pytest.raises(KeyReleaseError, match="allow_simulated") as info:
        release(uri(broker, "default/key/strict"), tee="sim")
    text = info.value.diagnostics()
    assert "403" in text
    assert "resource" in text  # the step
    assert STRICT_KEY.hex() not in text
    raw = Raw(broker)
    raw.auth()
    assert raw.attest()[0] == 200
    status, doc, _ = raw.resource("default/key/strict")
    assert status == 403
    assert "allow_simulated" in doc["failed_rules"]
    assert doc["policy"] == "default"
    assert set(doc) >= {"type", "detail"}
    assert not any(m in doc for m in JWE_MEMBERS)


def test_unknown_resource_is_404(broker: RunningBroker) -> None:
    with pytest.raises(KeyReleaseError, match="404"):
        release(uri(broker, "default/key/missing"), tee="sim")


def test_no_session_is_401(broker: RunningBroker) -> None:
    raw = Raw(broker)
    assert raw.resource()[0] == 401
    assert raw.resource("default/key/missing")[0] == 401  # existence is not revealed either
    assert raw.call("POST", "/kbs/v0/attest", {"runtime-data": {}})[0] == 401
    raw.cookie = "made-up"
    assert raw.resource()[0] == 401
    raw.auth()
    assert raw.resource()[0] == 401  # authenticated but not attested


def test_cookie_attributes(broker: RunningBroker) -> None:
    resp = Raw(broker).auth()
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(SESSION_COOKIE + "=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/kbs" in cookie


def test_replayed_nonce_is_refused(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()
    evidence = raw.evidence()
    assert raw.attest(evidence)[0] == 200
    status, doc = raw.attest(evidence)
    assert status == 401
    assert "already used" in doc["detail"]
    # The same evidence in a new session: its REPORT_DATA binds the old nonce.
    other = Raw(broker, key=raw.key)
    other.auth()
    status, doc = other.attest(evidence)
    assert status == 401
    assert "REPORT_DATA" in doc["detail"]


def test_a_failed_attest_consumes_the_nonce(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()
    assert raw.attest(nonce="bm90IHRoZSBub25jZQ==")[0] == 401
    assert raw.attest()[0] == 401


def test_expired_nonce_and_session(broker: RunningBroker, clock: Clock) -> None:
    raw = Raw(broker)
    raw.auth()
    clock.offset = 61
    status, doc = raw.attest()
    assert status == 401
    assert "expired" in doc["detail"]

    clock.offset = 0
    raw = Raw(broker)
    raw.auth()
    assert raw.attest()[0] == 200
    assert raw.resource()[0] == 200
    clock.offset = 301
    assert raw.resource()[0] == 401


def test_evidence_bound_to_another_key_or_nonce_is_refused(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()
    stranger = tee_pubkey_jwk(ec.generate_private_key(ec.SECP256R1()))
    status, doc = raw.attest(raw.evidence(jwk=stranger))
    assert status == 401
    assert "REPORT_DATA" in doc["detail"]

    raw = Raw(broker)
    raw.auth()
    other_nonce = base64.b64encode(os.urandom(32)).decode()
    status, doc = raw.attest(raw.evidence(nonce=other_nonce))
    assert status == 401
    assert "REPORT_DATA" in doc["detail"]


def test_evidence_of_another_tee_is_refused_with_401(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()  # tee "sample"
    status, doc = raw.attest({"attestation_report": {}, "cert_chain": []})  # snp's shape
    assert status == 401
    assert doc["type"].endswith("/AttestationError")
    assert "sample evidence must be" in doc["detail"]


def test_tampered_evidence_is_refused(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()
    ev = raw.evidence()
    report = bytearray(base64.b64decode(ev["evidence"]["report"]))
    report[0x90] ^= 1  # the measurement
    ev["evidence"]["report"] = base64.b64encode(bytes(report)).decode()
    status, doc = raw.attest(ev)
    assert status == 401
    assert "attestation failed" in doc["detail"]


def _status_after(port: int, head: bytes, body: Iterator[bytes]) -> int:
    """Send ``head`` then ``body`` until the broker answers; its status (it may stop reading)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for piece in body:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the broker answered and closed before reading it all, as it may
        reply = sock.makefile("rb").readline()
    return int(reply.split()[1])


def test_oversized_bodies_get_413(broker: RunningBroker) -> None:
    # Announced by Content-Length: refused before the body is read.
    head = (
        b"POST /kbs/v0/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    )
    assert _status_after(broker.port, head, iter(())) == 413
    # Chunked, so nothing announces it: counted while it arrives.
    head = b"POST /kbs/v0/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    chunks = [chunk] * (MAX_BODY // 65536 + 2) + [b"0\r\n\r\n"]
    assert _status_after(broker.port, head, iter(chunks)) == 413
    # Just under the limit is read (and refused only as JSON).
    raw = Raw(broker)
    assert raw.call("POST", "/kbs/v0/auth", b" " * (MAX_BODY - 1))[0] == 401


def test_bad_requests(broker: RunningBroker) -> None:
    raw = Raw(broker)
    assert raw.call("POST", "/kbs/v0/auth", b"not json")[0] == 401
    assert raw.call("POST", "/kbs/v0/auth", {"version": "9.0", "tee": "snp"})[0] == 401
    assert raw.call("POST", "/kbs/v0/auth", {"version": "0.4.0", "tee": "nonsense"})[0] == 401
    status, _, _ = raw.call(
        "POST",
        "/kbs/v0/auth",
        {"version": "0.4.0", "tee": "snp", "extra-params": {"supported-hash-algorithms": ["md5"]}},
    )
    assert status == 401
    raw.auth()
    n = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers().n
    raw.jwk = {"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64url(n.to_bytes(128, "big")), "e": "AQAB"}
    assert raw.attest()[0] == 401


def test_hash_algorithm_negotiation(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth(["sha512"])
    assert raw.algorithm == "sha512"
    assert raw.attest()[0] == 200
    assert raw.resource()[0] == 200


def test_bearer_token_works_without_the_cookie(broker: RunningBroker) -> None:
    raw = Raw(broker)
    raw.auth()
    status, doc = raw.attest()
    token = doc["token"]
    assert token.count(".") == 2
    raw.cookie = None
    status, _doc, _ = raw.resource(Authorization=f"Bearer {token}")
    assert status == 200
    assert raw.resource(Authorization="Bearer " + token[:-4] + "AAAA")[0] == 401


# --- the JWE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_jwe_has_trustees_shape_and_decrypts_with_joserfc(broker: RunningBroker, kind: str) -> None:
    private: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    raw = Raw(broker, key=private)
    raw.auth()
    assert raw.attest()[0] == 200
    status, doc, resp = raw.resource()
    assert status == 200
    # kbs_types::Response: these five members; `aad` is left out as Trustee's broker does.
    assert set(doc) == set(JWE_MEMBERS)
    header = json.loads(base64.urlsafe_b64decode(doc["protected"] + "=" * (-len(doc["protected"]) % 4)))
    assert header["enc"] == "A256GCM"
    assert header["alg"] == ("ECDH-ES+A256KW" if kind == "ec" else "RSA-OAEP-256")
    if kind == "ec":
        assert set(header["epk"]) >= {"kty", "crv", "x", "y"}  # in the protected header
    assert len(base64.urlsafe_b64decode(doc["iv"] + "==")) == 12
    key: Any = ECKey.import_key(private) if kind == "ec" else RSAKey.import_key(private)
    opened = jwe.decrypt_json(doc, key, algorithms=[header["alg"], "A256GCM"])
    assert opened.plaintext == KEY
    assert resp.headers["Cache-Control"] == "no-store"


def test_canonical_json_and_report_data() -> None:
    jwk = {"y": "b", "x": "a", "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW"}
    text = canonical_json({"tee-pubkey": jwk, "nonce": "n"})
    assert text == (
        b'{"nonce":"n","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"a","y":"b"}}'
    )
    import hashlib

    digest = runtime_data_digest("n", jwk)
    assert digest == hashlib.sha384(text).digest()
    assert report_data_for(digest) == digest + bytes(16)


# --- revoke, rotate, storage, audit -----------------------------------------------------------


def test_revoke_then_rotate(broker: RunningBroker, store: KeyStore) -> None:
    store.revoke("default/key/demo")
    with pytest.raises(KeyReleaseError, match="revoked"):
        release(uri(broker), tee="sim")
    info = store.rotate("default/key/demo", b"\x42" * 32)
    assert info.version == 2
    assert not info.revoked
    key = release(uri(broker), tee="sim")
    assert key.material == b"\x42" * 32
    assert key.fingerprint != fingerprint(KEY)


def test_policies_follow_changes_from_this_and_other_connections(store: KeyStore) -> None:
    """The policies every attest consults are kept, but never past a change to the database."""
    first = store.policies()
    assert store.policies() is first  # kept while nothing changed
    assert any(p.allow_simulated for p in first)
    store.set_policy("default/key/demo", None)  # this connection: the copy is dropped
    assert not any(p.allow_simulated for p in store.policies())
    other = KeyStore(store.path)  # another connection (`kbs set-policy`, another worker)
    try:
        other.set_policy("default/key/strict", SIM_POLICY)
        other.add("default/key/new", b"\x07" * 32)
    finally:
        other.close()
    again = store.policies()
    assert any(p.allow_simulated for p in again)
    assert len(again) == 3


def test_release_steps_are_timed_only_when_asked(broker: RunningBroker) -> None:
    from jupyter_cc.keys import kbs_client

    seen: list[tuple[str, float]] = []
    kbs_client.step_timer = lambda step, seconds: seen.append((step, seconds))
    try:
        release(uri(broker), tee="sim")
    finally:
        kbs_client.step_timer = None
    assert [step for step, _ in seen] == ["connect", "auth", "evidence", "attest", "resource", "open"]
    assert all(seconds >= 0 for _, seconds in seen)
    release(uri(broker), tee="sim")
    assert len(seen) == 6


def test_master_key_is_private_and_the_db_holds_no_plaintext(store: KeyStore) -> None:
    assert stat.S_IMODE(store.master_key_path.stat().st_mode) == 0o600
    assert len(store.master_key_path.read_bytes()) == 32
    data = store.path.read_bytes()
    for material in (KEY, STRICT_KEY):
        assert material not in data
        assert material.hex().encode() not in data
        assert base64.b64encode(material) not in data
    assert b"default/key/demo" in data  # the ids are not secret


def test_a_readable_master_key_is_refused(tmp_path: Path) -> None:
    KeyStore(tmp_path / "kbs.sqlite").close()
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(KbsError, match="chmod 600"):
        KeyStore(tmp_path / "kbs.sqlite")


def test_sealed_material_cannot_move_between_rows(store: KeyStore) -> None:
    import sqlite3

    db = sqlite3.connect(store.path)
    nonce, sealed = db.execute(
        "SELECT nonce, sealed FROM resources WHERE id = 'default/key/strict'"
    ).fetchone()
    db.execute("UPDATE resources SET nonce = ?, sealed = ? WHERE id = 'default/key/demo'", (nonce, sealed))
    db.commit()
    db.close()
    with pytest.raises(KbsError, match="does not open"):
        store.get("default/key/demo")


def test_audit_lines_for_release_and_denial_without_key_material(broker: RunningBroker) -> None:
    release(uri(broker), tee="sim")
    with pytest.raises(KeyReleaseError):
        release(uri(broker, "default/key/strict"), tee="sim")
    lines = audit_lines(broker)
    events = [(e["event"], e["resource"]) for e in lines]
    assert ("release", "default/key/demo") in events
    assert ("deny", "default/key/strict") in events
    deny = next(e for e in lines if e["event"] == "deny")
    assert any("allow_simulated" in r for r in deny["reasons"])
    assert stat.S_IMODE(broker.broker.audit_path.stat().st_mode) == 0o600
    text = broker.broker.audit_path.read_bytes()
    for material in (KEY, STRICT_KEY):
        assert material.hex().encode() not in text
        assert base64.b64encode(material) not in text
        assert base64.urlsafe_b64encode(material).rstrip(b"=") not in text


# --- URIs -------------------------------------------------------------------------------------


def test_kbs_uris() -> None:
    t = parse_kbs_uri("kbs://127.0.0.1/default/key/demo")
    assert (t.host, t.port, t.tls, str(t.resource)) == ("127.0.0.1", 8085, True, "default/key/demo")
    assert parse_kbs_uri("kbs://kbs.example/a/b/c").base_url == "https://kbs.example:8085"
    assert parse_kbs_uri("kbs+http://127.0.0.1:9/a/b/c").base_url == "http://127.0.0.1:9"
    pinned = parse_kbs_uri("kbs://h:9/a/b/c?cert-sha256=" + "AB:" * 31 + "AB")
    assert pinned.pin == "ab" * 32
    for bad in (
        "kbs://h/a/b",
        "kbs:///a/b/c",
        "kbs://h/a/../c",
        "kbs://h/a/b/c?x=1",
        "kbs://h/a/b/c?tls=1",  # the old HTTPS switch is gone: kbs:// is HTTPS
        "kbss://h/a/b/c",
        "kbs://h/a/b/c?cert-sha256=abcd",
        "kbs+http://127.0.0.1/a/b/c?cert-sha256=" + "ab" * 32,
    ):
        with pytest.raises(Exception, match=r"kbs|resource|host|query"):
            parse_kbs_uri(bad)
    with pytest.raises(Exception, match="cannot release"):
        release("https://example/a/b/c")


def test_unreachable_broker_names_the_step() -> None:
    with pytest.raises(KeyReleaseError, match="failed at auth: cannot reach"):
        release("kbs+http://127.0.0.1:9/default/key/demo", tee="sim", timeout=5)


# --- CLI --------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="jupyter-cc")
    add_commands(parser.add_subparsers(dest="command", required=True), argparse.ArgumentParser)
    args = parser.parse_args(list(argv))
    status: int = args.func(args)
    return status


def policy_and_key(folder: Path, key: bytes) -> tuple[Path, Path]:
    """The simulated-demo policy and a key file holding ``key``, written into ``folder``."""
    policy = folder / "sim.toml"
    policy.write_text(SIM_POLICY)
    keyfile = folder / "key.bin"
    keyfile.write_bytes(key)
    return policy, keyfile


def test_cli_manages_resources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.sqlite")
    policy, keyfile = policy_and_key(tmp_path, b"\x07" * 32)
    assert (
        run_cli("kbs", "add-key", "repo/key/one", "--generate", "32", "--policy", str(policy), "--db", db)
        == 0
    )
    assert run_cli("kbs", "add-key", "repo/key/two", "--from-file", str(keyfile), "--db", db) == 0
    out = capsys.readouterr().out
    assert "fingerprint" in out
    assert fingerprint(b"\x07" * 32) in out
    assert (b"\x07" * 32).hex() not in out
    assert run_cli("kbs", "list", "--db", db) == 0
    out = capsys.readouterr().out
    assert "repo/key/one" in out and "simulated-demo" in out and "active" in out
    assert run_cli("kbs", "set-policy", "repo/key/two", str(policy), "--db", db) == 0
    assert run_cli("kbs", "revoke", "repo/key/one", "--db", db) == 0
    assert run_cli("kbs", "list", "--db", db) == 0
    assert "revoked" in capsys.readouterr().out
    assert run_cli("kbs", "rotate", "repo/key/one", "--generate", "48", "--db", db) == 0
    assert "version 2, 48 bytes" in capsys.readouterr().out
    with pytest.raises(KbsError, match="already exists"):
        run_cli("kbs", "add-key", "repo/key/one", "--db", db)
    with pytest.raises(KbsError, match="no resource"):
        run_cli("kbs", "revoke", "repo/key/none", "--db", db)
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_everything = true\n")
    with pytest.raises(Exception, match="allow_everything"):
        run_cli("kbs", "set-policy", "repo/key/two", str(bad), "--db", db)


def test_cli_serve_in_a_subprocess(tmp_path: Path) -> None:
    """``kbs serve`` serves HTTPS with a certificate it made, and prints the pin that works."""
    db = str(tmp_path / "served.sqlite")
    policy, keyfile = policy_and_key(tmp_path, b"\x09" * 32)
    assert (
        run_cli(
            "kbs", "add-key", "repo/key/x", "--from-file", str(keyfile), "--policy", str(policy), "--db", db
        )
        == 0
    )
    with subprocess.Popen(
        [sys.executable, "-m", "jupyter_cc.cli.kbs", "kbs", "serve", "--port", "0", "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = proc.stdout.readline()
            assert "https://127.0.0.1:" in line, line
            port = int(line.split("https://127.0.0.1:")[1].split("/")[0])
            lines = [proc.stdout.readline() for _ in range(3)]
            pin = next(x for x in lines if "fingerprint:" in x).split("fingerprint:")[1].strip()
            assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
            key = release(f"kbs://127.0.0.1:{port}/repo/key/x?cert-sha256={pin}", tee="sim")
            assert key.material == b"\x09" * 32
            with pytest.raises(KeyReleaseError, match="not authenticated"):
                release(f"kbs://127.0.0.1:{port}/repo/key/x", tee="sim")  # no pin: self-signed is refused
        finally:
            proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert (b"\x09" * 32).hex() not in err
