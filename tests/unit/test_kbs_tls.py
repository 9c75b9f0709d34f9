"""The broker's TLS identity and the client's broker authentication (pins, CA files, loopback).

Real TLS servers on loopback stand in for brokers: the client must refuse every one it cannot
authenticate before it sends a request, and the refusal names the broker and what to pin.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jupyter_cc.errors import InputError
from jupyter_cc.kbs.tls import (
    CERT_NAME,
    KEY_NAME,
    cert_fingerprint,
    ensure_identity,
    is_loopback_host,
    load_identity,
    server_context,
)
from jupyter_cc.keys import KeyReleaseError
from jupyter_cc.keys.broker_trust import PIN_ENV, normalize_pin, resolve_trust


def test_identity_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    first = ensure_identity(tmp_path / "kbs")
    assert first.generated
    assert stat.S_IMODE((tmp_path / "kbs" / KEY_NAME).stat().st_mode) == 0o600
    again = ensure_identity(tmp_path / "kbs")
    assert not again.generated
    assert again.fingerprint == first.fingerprint
    der = x509.load_pem_x509_certificate((tmp_path / "kbs" / CERT_NAME).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert first.fingerprint == hashlib.sha256(der).hexdigest() == cert_fingerprint(der)
    assert [p.name for p in (tmp_path / "kbs").glob(".*")] == [".tls.lock"]  # no temp files left


def test_a_half_written_identity_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "kbs"
    ensure_identity(folder)
    (folder / CERT_NAME).unlink()
    assert ensure_identity(folder).generated


def test_operator_certificate_must_match_its_key(tmp_path: Path) -> None:
    a, b = ensure_identity(tmp_path / "a"), ensure_identity(tmp_path / "b")
    assert load_identity(a.cert_path, a.key_path).fingerprint == a.fingerprint
    with pytest.raises(InputError, match="cannot load the TLS certificate"):
        load_identity(a.cert_path, b.key_path)
    with pytest.raises(InputError, match="cannot read"):
        load_identity(tmp_path / "none.pem", a.key_path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("kbs.example.org", False),
        ("::ffff:10.0.0.1", False),
        ("127.0.0.1%evil", False),
        ("::1%lo", True),
        ("0x7f000001", False),
        ("127.1", False),
    ],
)
def test_loopback_is_literal(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_pins_are_normalized_and_checked() -> None:
    assert normalize_pin("AB:" * 31 + "AB", "x") == "ab" * 32
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(InputError, match="64 hex digits"):
            normalize_pin(bad, "x")


def test_plain_http_only_to_loopback() -> None:
    assert not resolve_trust("127.0.0.1", 1, tls=False, uri_pin=None).tls
    assert not resolve_trust("localhost", 1, tls=False, uri_pin=None).tls
    for host in ("10.1.2.3", "kbs.example.org", "localhost.example"):
        with pytest.raises(KeyReleaseError, match=rf"key broker {host}:1 is not authenticated: kbs\+http"):
            resolve_trust(host, 1, tls=False, uri_pin=None)


def test_localhost_is_not_resolved_for_plain_http() -> None:
    conn = resolve_trust("localhost", 8085, tls=False, uri_pin=None).connection(5)
    assert conn.host == "127.0.0.1"


def test_pin_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "jupyter_cc.toml"
    config.write_text(f'[brokers."kbs.example:8085"]\ncert_sha256 = "{"cc" * 32}"\n')
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(config))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv("JUPYTER_CC_KBS_CA", raising=False)
    assert resolve_trust("kbs.example", 8085, tls=True, uri_pin=None).pin == "cc" * 32
    assert resolve_trust("other.example", 8085, tls=True, uri_pin=None).pin is None
    monkeypatch.setenv(PIN_ENV, "bb" * 32)
    assert resolve_trust("kbs.example", 8085, tls=True, uri_pin=None).pin == "bb" * 32
    assert resolve_trust("kbs.example", 8085, tls=True, uri_pin="aa" * 32).pin == "aa" * 32
    config.write_text('[brokers."kbs.example:8085"]\ncert = "x"\n')
    monkeypatch.delenv(PIN_ENV)
    with pytest.raises(InputError, match="unknown keys: cert"):
        resolve_trust("kbs.example", 8085, tls=True, uri_pin=None)


# --- against real TLS servers -----------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A TLS server on loopback with a fresh self-signed certificate: (port, pin, cert file)."""
    identity = ensure_identity(tmp_path / "srv")
    ctx = server_context(identity.cert_path, identity.key_path)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Hello)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    _Hello.requests = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], identity.fingerprint, identity.cert_path
    httpd.shutdown()
    httpd.server_close()


def _get(port: int, **kw: str | None) -> int:
    conn = resolve_trust("127.0.0.1", port, tls=True, uri_pin=kw.get("pin"), ca_file=kw.get("ca")).connection(
        5
    )
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_pinned_certificate_is_accepted(tls_server: tuple[int, str, Path]) -> None:
    port, pin, _ = tls_server
    assert _get(port, pin=pin) == 200


def test_another_certificate_than_the_pinned_one_is_refused_before_any_request(
    tls_server: tuple[int, str, Path],
) -> None:
    port, pin, _ = tls_server
    wrong = ("0" if pin[0] != "0" else "1") + pin[1:]
    with pytest.raises(KeyReleaseError, match=rf"127.0.0.1:{port} is not authenticated: .*not the pinned"):
        _get(port, pin=wrong)
    assert _Hello.requests == 0


def test_an_unpinned_self_signed_broker_is_refused(
    tls_server: tuple[int, str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv("JUPYTER_CC_KBS_CA", raising=False)
    port, _, _ = tls_server
    with pytest.raises(ssl.SSLError) as info:
        _get(port)
    trust = resolve_trust("127.0.0.1", port, tls=True, uri_pin=None)
    sentence = trust.handshake_refusal(info.value).message
    assert f"127.0.0.1:{port} is not authenticated" in sentence and "cert-sha256" in sentence
    assert _Hello.requests == 0


def test_a_ca_file_authenticates_with_host_name_checks(tls_server: tuple[int, str, Path]) -> None:
    port, _, cert = tls_server
    assert _get(port, ca=str(cert)) == 200  # its subjectAltName holds 127.0.0.1


@pytest.mark.parametrize(
    ("kbs", "refusal"),
    [
        ("kbs://kbs.example:8085?cert-sha256=" + "ab" * 32, None),
        ("kbs+http://127.0.0.1:8085", None),
        ("http://localhost:8085", None),
        ("http://kbs.example:8085", "plain HTTP to a broker that is not on loopback"),
        ("kbs+http://10.0.0.1:8085", "plain HTTP to a broker that is not on loopback"),
        ("kbs://kbs.example:8085?cert-sha256=abcd", "64 hex digits"),
        ("kbs://kbs.example:8085?tls=1", "unknown query parameter"),
    ],
)
def test_a_profile_names_an_authenticated_broker(kbs: str, refusal: str | None) -> None:
    from jupyter_cc.profiles import Profile

    if refusal is None:
        assert Profile(name="p", transport="local", kbs=kbs).kbs == kbs
    else:
        with pytest.raises(InputError, match=refusal):
            Profile(name="p", transport="local", kbs=kbs)
