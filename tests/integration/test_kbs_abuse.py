"""Issue 12's lockout and restart, against ``jupyter-cc kbs serve`` over loopback HTTPS.

Before: about 10,000 unauthenticated ``/auth`` calls filled the broker's global session cap for
300 s and every TEE got 503. Now a flood only churns the flooding client's own unattested
sessions: TEEs release keys during and after it, ``/attest`` is rate limited per client (429,
``Retry-After``, ErrorInformation body), and a restart (one worker or several) keeps every key
and policy while sessions opened before it get a clean 401.

Loopback has a whole /8: the flooder speaks from 127.0.0.2, so "another client" is real.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.keys import release
from tests.support.sshd import free_port

ROOT = Path(__file__).resolve().parents[2]
SIM_POLICY = (ROOT / "jupyter_cc" / "policies" / "simulated.toml").read_text()
KEY = b"\x42" * 32
AUTH = json.dumps({"version": "0.4.0", "tee": "sample", "extra-params": ""}).encode()

pytestmark = pytest.mark.timeout(300)


@dataclass
class Served:
    port: int
    pin: str
    proc: subprocess.Popen[str]

    def uri(self) -> str:
        return f"kbs://127.0.0.1:{self.port}/default/key/demo?cert-sha256={self.pin}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "kbs" / "kbs.sqlite"
    store = KeyStore(path)
    store.add("default/key/demo", KEY, policy_text=SIM_POLICY)
    store.close()
    return path


@contextmanager
def serve(db: Path, port: int, *extra: str) -> Iterator[Served]:
    """``jupyter-cc kbs serve`` (HTTPS, its own certificate) until the block ends; log beside ``db``."""
    with open(db.parent / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_cc",
                "kbs",
                "serve",
                "--port",
                str(port),
                "--db",
                str(db),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=dict(os.environ),
        )
    assert proc.stdout is not None
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "https://127.0.0.1:" in lines[0], (lines, (db.parent / "serve.log").read_text()[-2000:])
        pin = next(x for x in lines if "fingerprint:" in x).split("fingerprint:")[1].strip()
        yield Served(port, pin, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
    return ctx


def connect(port: int, source: str) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=30, context=_context(), source_address=(source, 0)
    )


def call(
    port: int, method: str, path: str, body: bytes | None = None, *, source: str, cookie: str | None = None
) -> tuple[int, Any, http.client.HTTPResponse]:
    conn = connect(port, source)
    try:
        headers = {"Content-Type": "application/json"}
        if cookie:
            headers["Cookie"] = f"kbs-session-id={cookie}"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, resp
    finally:
        conn.close()


def flood(port: int, total: int, source: str, threads: int = 4) -> list[int]:
    """``total`` unauthenticated ``/auth`` calls over keep-alive connections; their statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(count: int) -> None:
        conn = connect(port, source)
        mine = []
        try:
            for _ in range(count):
                conn.request("POST", "/kbs/v0/auth", body=AUTH, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                mine.append(resp.status)
        finally:
            conn.close()
            with lock:
                statuses.extend(mine)

    workers = [threading.Thread(target=one, args=(total // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


def test_a_10000_request_auth_flood_locks_no_tee_out(db: Path) -> None:
    with serve(db, free_port()) as broker:
        during: list[bytes] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def legitimate() -> None:
            try:
                while not stop.wait(0.2):  # a TEE's pace, well under the /attest rate limit
                    during.append(release(broker.uri(), tee="sim").material)
            except BaseException as exc:  # reported below
                errors.append(exc)

        tee = threading.Thread(target=legitimate)
        tee.start()
        started = time.monotonic()
        statuses = flood(broker.port, 10_000, "127.0.0.2")
        elapsed = time.monotonic() - started
        stop.set()
        tee.join(timeout=60)
        assert not errors, errors
        assert statuses.count(200) == 10_000, {s: statuses.count(s) for s in set(statuses)}
        assert during and set(during) == {KEY}, "a TEE released its key while the flood ran"
        # After the flood, a release succeeds at once, even from the flooder's own address.
        assert release(broker.uri(), tee="sim").material == KEY
        print(f"flood: 10,000 /auth in {elapsed:.1f} s; {len(during)} releases meanwhile")


def test_attest_is_rate_limited_per_client(db: Path) -> None:
    with serve(db, free_port(), "--attest-rate", "5") as broker:
        statuses = []
        for _ in range(12):
            status, doc, resp = call(broker.port, "POST", "/kbs/v0/attest", b"{}", source="127.0.0.3")
            statuses.append(status)
            if status == 429:
                break
        assert statuses[:10] == [401] * 10  # the burst: each refused for what it is (no session)
        assert status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert doc["type"].endswith("TooManyRequests") and doc["detail"].endswith(".")
        # Another client is not held back by this one.
        assert release(broker.uri(), tee="sim").material == KEY


@pytest.mark.parametrize("workers", [1, 2])
def test_a_restart_keeps_keys_and_policies_and_ends_sessions_cleanly(db: Path, workers: int) -> None:
    port = free_port()
    extra = ("--workers", str(workers))
    with serve(db, port, *extra) as broker:
        for _ in range(4):  # with two workers, the steps land on both
            assert release(broker.uri(), tee="sim").material == KEY
        status, _, resp = call(port, "POST", "/kbs/v0/auth", AUTH, source="127.0.0.1")
        assert status == 200
        cookie = resp.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        pin = broker.pin
    with serve(db, port, *extra) as broker:
        assert broker.pin == pin  # the same certificate: TEEs keep their pin
        status, doc, _ = call(port, "POST", "/kbs/v0/attest", b"{}", source="127.0.0.1", cookie=cookie)
        assert status == 401 and isinstance(doc, dict) and doc.get("detail"), doc
        status, doc, _ = call(
            port, "GET", "/kbs/v0/resource/default/key/demo", source="127.0.0.1", cookie=cookie
        )
        assert status == 401 and isinstance(doc, dict) and doc.get("detail"), doc
        assert release(broker.uri(), tee="sim").material == KEY  # the key and its policy survived


def test_verification_does_not_block_other_clients(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one TEE's evidence is being verified (here: a slow verifier), others are answered."""
    from jupyter_cc.kbs import broker as broker_module
    from jupyter_cc.kbs.server import start_in_thread
    from jupyter_cc.kbs.tls import ensure_identity

    real_verify = broker_module.verify_tee_evidence

    def slow_verify(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(broker_module, "verify_tee_evidence", slow_verify)
    store = KeyStore(db)
    running = start_in_thread(broker_module.Broker(store), identity=ensure_identity(db.parent))
    try:
        slow = threading.Thread(
            target=release, args=(running.kbs_uri("default/key/demo"),), kwargs={"tee": "sim"}
        )
        slow.start()
        time.sleep(0.3)  # the slow release is in its attest step now
        started = time.monotonic()
        status, _, _ = call(running.port, "POST", "/kbs/v0/auth", AUTH, source="127.0.0.4")
        assert status == 200
        assert time.monotonic() - started < 1.0, "auth waited for another client's verification"
        slow.join(timeout=30)
    finally:
        running.stop()
        store.close()
