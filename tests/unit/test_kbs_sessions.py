"""The broker's session store: expiry, per-client caps and eviction, the /attest bucket, sharing.

Issue 12's lockout: ten thousand unauthenticated ``auth`` calls filled a global cap and every TEE
got 503 for five minutes. These tests hold the store to the rules that prevent it.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from jupyter_cc.attest.claims import Claims
from jupyter_cc.kbs.sessions import Session, SessionStore, claims_from_doc, claims_to_doc


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def new_session(clock: Clock, peer: str = "10.0.0.1", nonce_ttl: float = 60, ttl: float = 300) -> Session:
    return Session(
        id=secrets.token_urlsafe(32),
        nonce=base64.b64encode(os.urandom(32)).decode(),
        tee="sample",
        hash_algorithm="sha384",
        expires=clock() + ttl,
        nonce_expires=clock() + nonce_ttl,
        peer=peer,
    )


CLAIMS = Claims(
    kind="sim-snp",
    simulated=True,
    debug=False,
    report_data=b"\x01" * 64,
    details={"measurement": "ab" * 48, "tcb": {"snp": 3}, "list": [1, 2]},
    gpu=Claims(kind="nvidia-h100", simulated=True, debug=False, report_data=b"", details={"x": 1}),
)


def attest(store: SessionStore, s: Session) -> None:
    assert store.consume_nonce(s)
    s.claims, s.tee_pubkey, s.token_id = CLAIMS, {"kty": "EC"}, secrets.token_urlsafe(16)
    store.save_attested(s)


def test_claims_survive_the_round_trip() -> None:
    assert claims_from_doc(claims_to_doc(CLAIMS)) == CLAIMS


def test_every_gpu_survives_the_round_trip() -> None:
    # A resource policy judges every GPU at release, from the stored claims: none may be lost.
    gpus = tuple(
        Claims(kind="nvidia", simulated=False, debug=False, report_data=b"", details={"index": i})
        for i in range(8)
    )
    claims = Claims(
        kind="snp", simulated=False, debug=False, report_data=b"\x02" * 64, gpu=gpus[0], gpus=gpus
    )
    back = claims_from_doc(claims_to_doc(claims))
    assert back == claims and len(back.gpus) == 8 and back.gpus[7].get("index") == 7


def test_a_nonce_is_consumed_once() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock)
    s = new_session(clock)
    store.open(s)
    assert store.consume_nonce(s)
    assert not store.consume_nonce(s)
    got = store.get(s.id)
    assert got is not None and got.nonce_used


def test_unattested_sessions_are_reclaimed_when_their_nonce_expires() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock)
    waiting, done = new_session(clock), new_session(clock)
    store.open(waiting)
    store.open(done)
    attest(store, done)
    clock.now += 61
    assert store.counts() == (0, 1)
    assert store.get(waiting.id) is None
    got = store.by_token(done.token_id or "")
    assert got is not None and got.claims == CLAIMS and got.tee_pubkey == {"kty": "EC"}
    clock.now += 240
    assert store.get(done.id) is None and store.by_token(done.token_id or "") is None


def test_a_flooding_client_evicts_only_its_own_oldest_unattested_session() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock, max_per_client=8, max_sessions=100)
    victim = new_session(clock, peer="10.0.0.2")
    store.open(victim)
    attested = new_session(clock, peer="10.0.0.1")
    store.open(attested)
    attest(store, attested)
    flood = []
    for _ in range(50):
        clock.now += 0.001
        s = new_session(clock, peer="10.0.0.1")
        store.open(s)
        flood.append(s)
    assert store.get(victim.id) is not None  # another client's handshake is untouched
    assert store.get(attested.id) is not None  # the flooder's own attested session too
    assert [store.get(s.id) is not None for s in flood] == [False] * 42 + [True] * 8


def test_past_the_global_cap_the_oldest_unattested_session_goes_never_an_attested_one() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock, max_per_client=4, max_sessions=10)
    keep = new_session(clock, peer="192.0.2.1")
    store.open(keep)
    attest(store, keep)
    for i in range(40):
        clock.now += 0.001
        store.open(new_session(clock, peer=f"198.51.100.{i}"))
    assert store.counts() == (10, 1)
    assert store.get(keep.id) is not None


def test_attest_bucket_per_client() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock, attest_rate=2, attest_burst=3)
    assert [store.attest_wait("a") for _ in range(3)] == [0, 0, 0]
    wait = store.attest_wait("a")
    assert wait == pytest.approx(0.5)
    assert store.attest_wait("b") == 0  # another client has its own bucket
    clock.now += 0.5
    assert store.attest_wait("a") == 0
    assert store.attest_wait("a") > 0


def test_a_file_store_is_shared_and_reset_at_start(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "sessions.sqlite"
    one, two = SessionStore(path, clock=clock), SessionStore(path, clock=clock)
    s = new_session(clock)
    one.open(s)
    assert two.get(s.id) is not None
    assert two.consume_nonce(s)
    assert not one.consume_nonce(s)  # the nonce is used for every worker at once
    for name in ("sessions.sqlite", "sessions.sqlite-wal", "sessions.sqlite-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name  # session ids are secrets
    SessionStore(path, clock=clock).reset()  # a broker restart
    assert one.get(s.id) is None and two.get(s.id) is None


def test_saving_an_evicted_session_fails_cleanly() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock)
    s = new_session(clock)
    store.open(s)
    store.reset()
    s.claims, s.tee_pubkey, s.token_id = CLAIMS, {"kty": "EC"}, "t"
    with pytest.raises(Exception, match="start again"):
        store.save_attested(s)
