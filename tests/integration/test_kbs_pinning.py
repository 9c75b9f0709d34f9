"""Issue 12's fake-broker attack, against real servers on loopback.

The fake broker never looks at the evidence: it answers every step and returns a JWE of a key
of its choosing, encrypted to the TEE key the client sends (anyone can; the key is in the
request). The client must refuse it unless the user pinned *its* certificate, and must take the
key from the real broker when that broker's fingerprint is pinned (on the URI, in
``jupyter_cc.toml``, in the environment) or its certificate is the CA file.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.errors import InputError
from jupyter_cc.kbs.broker import Broker
from jupyter_cc.kbs.protocol import encrypt_response
from jupyter_cc.kbs.server import RunningBroker, start_in_thread
from jupyter_cc.kbs.store import KeyStore
from jupyter_cc.kbs.tls import TlsIdentity, ensure_identity, server_context
from jupyter_cc.keys import KeyReleaseError, release
from jupyter_cc.keys.broker_trust import CA_ENV, PIN_ENV

ROOT = Path(__file__).resolve().parents[2]
SIM_POLICY = (ROOT / "jupyter_cc" / "policies" / "simulated.toml").read_text()
REAL_KEY = b"\x11" * 32
ATTACKER_KEY = b"\xee" * 32

pytestmark = pytest.mark.timeout(120)


class _FakeKbs(BaseHTTPRequestHandler):
    """Answers the three steps like a broker would, verifying nothing."""

    seen: list[str] = []
    tee_key: dict[str, Any] | None = None

    def _send(self, doc: Any, cookie: bool = False) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", "kbs-session-id=fake; Path=/kbs; HttpOnly")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        type(self).seen.append(self.path)
        doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path.endswith("/auth"):
            nonce = base64.b64encode(os.urandom(32)).decode()
            return self._send({"nonce": nonce, "extra-params": ""}, cookie=True)
        runtime = doc.get("runtime-data")
        if isinstance(runtime, str):  # 0.4 sends runtime-data as a JSON string in some shapes
            runtime = json.loads(runtime)
        type(self).tee_key = runtime["tee-pubkey"]
        return self._send({"token": "not-a-token"})

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        tee_key = type(self).tee_key
        assert tee_key is not None
        self._send(encrypt_response(tee_key, ATTACKER_KEY))

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def no_ambient_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No pin or CA from the environment or the user config; returns the (empty) config path."""
    config = tmp_path / "jupyter_cc.toml"
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(config))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv(CA_ENV, raising=False)
    return config


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[int, TlsIdentity]]:
    """The fake broker on loopback, HTTPS with its own self-signed certificate."""
    identity = ensure_identity(tmp_path / "fake")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKbs)
    httpd.socket = server_context(identity.cert_path, identity.key_path).wrap_socket(
        httpd.socket, server_side=True
    )
    _FakeKbs.seen = []
    _FakeKbs.tee_key = None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], identity
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def real(tmp_path: Path) -> Iterator[RunningBroker]:
    """The project's broker over HTTPS with its generated certificate."""
    store = KeyStore(tmp_path / "kbs" / "kbs.sqlite")
    store.add("default/key/demo", REAL_KEY, policy_text=SIM_POLICY)
    running = start_in_thread(Broker(store), identity=ensure_identity(tmp_path / "kbs"))
    yield running
    running.stop()
    store.close()


def test_the_fake_broker_is_a_real_threat_once_trusted(
    fake: tuple[int, TlsIdentity], no_ambient_trust: Path
) -> None:
    """Pinning the fake's own certificate hands the TEE the attacker's key: the pin is the barrier."""
    port, identity = fake
    key = release(f"kbs://127.0.0.1:{port}/default/key/demo?cert-sha256={identity.fingerprint}", tee="sim")
    assert key.material == ATTACKER_KEY


def test_an_unpinned_self_signed_broker_is_refused(
    fake: tuple[int, TlsIdentity], no_ambient_trust: Path
) -> None:
    port, _ = fake
    with pytest.raises(KeyReleaseError) as info:
        release(f"kbs://127.0.0.1:{port}/default/key/demo", tee="sim")
    sentence = info.value.diagnostics()
    assert f"key broker 127.0.0.1:{port} is not authenticated" in sentence
    assert "cert-sha256" in sentence and "jupyter-cc kbs info" in sentence
    assert _FakeKbs.seen == []  # nothing was sent, not even auth


def test_a_broker_whose_certificate_is_not_the_pinned_one_is_refused(
    fake: tuple[int, TlsIdentity],
    real: RunningBroker,
    no_ambient_trust: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, _ = fake
    pin = real.fingerprint
    assert pin is not None
    target = f"kbs://127.0.0.1:{port}/default/key/demo"
    with pytest.raises(KeyReleaseError, match=r"not the pinned one"):
        release(f"{target}?cert-sha256={pin}", tee="sim")
    no_ambient_trust.write_text(f'[brokers."127.0.0.1:{port}"]\ncert_sha256 = "{pin}"\n')
    with pytest.raises(KeyReleaseError, match=r"not the pinned one"):
        release(target, tee="sim")
    no_ambient_trust.unlink()
    monkeypatch.setenv(PIN_ENV, pin)
    with pytest.raises(KeyReleaseError, match=r"not the pinned one"):
        release(target, tee="sim")
    monkeypatch.delenv(PIN_ENV)
    monkeypatch.setenv(CA_ENV, str(real.broker.store.path.parent / "tls.crt"))
    with pytest.raises(KeyReleaseError, match=r"not authenticated: its certificate is not trusted"):
        release(target, tee="sim")
    assert _FakeKbs.seen == []


def test_plain_http_to_a_non_loopback_address_is_refused_without_connecting(
    monkeypatch: pytest.MonkeyPatch, no_ambient_trust: Path
) -> None:
    def no_connection(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("the client connected to a broker it must refuse")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    for host in ("192.0.2.10", "kbs.example.org", "localhost.example.org", "127.0.0.1.nip.io"):
        with pytest.raises(KeyReleaseError, match=r"kbs\+http:// \(plain HTTP\) is accepted only to"):
            release(f"kbs+http://{host}:8085/default/key/demo", tee="sim")
    with pytest.raises(InputError, match="cannot release a key"):
        release("kbss://127.0.0.1:8085/default/key/demo", tee="sim")  # the old form is gone


def test_the_real_broker_with_its_pinned_fingerprint(
    real: RunningBroker, no_ambient_trust: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert release(real.kbs_uri("default/key/demo"), tee="sim").material == REAL_KEY
    plain = f"kbs://127.0.0.1:{real.port}/default/key/demo"
    with pytest.raises(KeyReleaseError, match="not authenticated"):
        release(plain, tee="sim")  # self-signed and unpinned: refused like any other
    no_ambient_trust.write_text(f'[brokers."127.0.0.1:{real.port}"]\ncert_sha256 = "{real.fingerprint}"\n')
    assert release(plain, tee="sim").material == REAL_KEY
    no_ambient_trust.unlink()
    monkeypatch.setenv(PIN_ENV, str(real.fingerprint).upper())
    assert release(plain, tee="sim").material == REAL_KEY
    monkeypatch.delenv(PIN_ENV)
    cert = str(real.broker.store.path.parent / "tls.crt")
    assert release(plain, tee="sim", ca_file=cert).material == REAL_KEY  # its SAN holds 127.0.0.1


def test_serve_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    import argparse

    from jupyter_cc.cli.kbs import add_commands

    parser = argparse.ArgumentParser(prog="jupyter-cc")
    add_commands(parser.add_subparsers(dest="command", required=True), argparse.ArgumentParser)
    db = str(tmp_path / "kbs" / "kbs.sqlite")
    args = parser.parse_args(
        ["kbs", "serve", "--insecure-http", "--host", "0.0.0.0", "--port", "0", "--db", db]
    )
    with pytest.raises(InputError, match=r"plain HTTP is refused on 0\.0\.0\.0"):
        args.func(args)
    args = parser.parse_args(["kbs", "info", "--db", db])
    assert args.func(args) == 0
