"""The embedded key broker's HTTP face (``jupyter-cc kbs serve``): Trustee's KBS protocol on tornado.

The handlers only parse requests and write answers; :class:`~jupyter_cc.kbs.broker.Broker`
holds the protocol state and decides. Protocol details, the REPORT_DATA binding and the JWE
are in :mod:`jupyter_cc.kbs.protocol`.

* ``POST /kbs/v0/auth`` opens a session (cookie ``kbs-session-id``, HttpOnly, SameSite=Strict,
  path ``/kbs``, Secure under TLS) and answers its nonce.
* ``POST /kbs/v0/attest`` takes the runtime data and the evidence. The evidence is
  jupyter-cc's: ``{"kind": "sim-snp", "evidence": {"report": ...}}`` with the fields of the
  evidence bundle (or the same object as ``primary_evidence`` of Trustee's composite form),
  and answers the broker's attestation token.
* ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` (cookie, or ``Authorization: Bearer <token>``)
  answers the key as a JWE to the attested TEE key, and the allowing policy's name in the
  ``X-Jupyter-CC-Policy`` header. 401 without an attested, unexpired session; 404 for an
  unknown resource; 403 for a revoked one or a policy denial, the body naming every failed rule
  (``failed_rules``) and the ``detail`` sentence too.

Bodies over 1 MiB get 413. Upstream Trustee clients speak the same envelope but send their
attesters' evidence formats (for SNP ``{"attestation_report", "cert_chain"}``), which this
broker does not parse; they get 401 with a sentence saying so.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import InputError
from jupyter_cc.kbs.broker import Broker, RequestRefusedError, Session
from jupyter_cc.kbs.protocol import API_PREFIX, MAX_BODY, POLICY_HEADER, SESSION_COOKIE, KbsError, error_body

__all__ = ["RunningBroker", "make_app", "serve", "start_in_thread"]


@tornado.web.stream_request_body
class _Handler(tornado.web.RequestHandler):
    """Bounded JSON bodies, Trustee error bodies, no caching."""

    broker: Broker
    tls: bool

    def initialize(self, broker: Broker, tls: bool) -> None:
        self.broker = broker
        self.tls = tls
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            self._refuse(
                RequestRefusedError(413, "PayloadTooLarge", f"request bodies are limited to {MAX_BODY} bytes")
            )

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_BODY:
            self._chunks.append(chunk)

    def json_body(self) -> Any:
        if self._size > MAX_BODY:
            raise RequestRefusedError(
                413, "PayloadTooLarge", f"request bodies are limited to {MAX_BODY} bytes"
            )
        try:
            return strict_json(b"".join(self._chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RequestRefusedError(400, "InvalidRequest", "the request body is not JSON") from None

    def _refuse(self, refusal: RequestRefusedError) -> None:
        self.set_status(refusal.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(refusal.kind, refusal.detail, **refusal.extra)))

    def send_json(self, doc: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(doc))

    def session(self) -> Session | None:
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return self.broker.session_for_token(auth[7:].strip())
        return self.broker.session(self.get_cookie(SESSION_COOKIE))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body("InternalError", f"HTTP {status_code} {self._reason}.")))


class _AuthHandler(_Handler):
    def post(self) -> None:
        try:
            session = self.broker.auth(self.json_body(), peer=self.request.remote_ip or "")
        except RequestRefusedError as refusal:
            return self._refuse(refusal)
        self.set_cookie(
            SESSION_COOKIE,
            session.id,
            path="/kbs",
            max_age=int(self.broker.session_ttl),
            httponly=True,
            secure=self.tls,
            samesite="Strict",
        )
        self.send_json(
            {"nonce": session.nonce, "extra-params": {"selected-hash-algorithm": session.hash_algorithm}}
        )


class _AttestHandler(_Handler):
    def post(self) -> None:
        try:
            body = self.json_body()
            token = self.broker.attest(self.broker.session(self.get_cookie(SESSION_COOKIE)), body)
        except RequestRefusedError as refusal:
            return self._refuse(refusal)
        self.send_json({"token": token})


class _ResourceHandler(_Handler):
    def get(self, repository: str, rtype: str, tag: str) -> None:
        try:
            response, policy = self.broker.release(self.session(), f"{repository}/{rtype}/{tag}")
        except RequestRefusedError as refusal:
            return self._refuse(refusal)
        self.set_header(POLICY_HEADER, policy)
        self.send_json(response)


def make_app(broker: Broker, *, tls: bool = False) -> tornado.web.Application:
    """The tornado application serving ``broker`` under ``/kbs/v0``."""
    args = {"broker": broker, "tls": tls}
    segment = r"([^/]+)"
    return tornado.web.Application(
        [
            (rf"{API_PREFIX}/auth", _AuthHandler, args),
            (rf"{API_PREFIX}/attest", _AttestHandler, args),
            (rf"{API_PREFIX}/resource/{segment}/{segment}/{segment}", _ResourceHandler, args),
        ],
        xsrf_cookies=False,
    )


def _server(broker: Broker, ssl_ctx: ssl.SSLContext | None) -> tornado.httpserver.HTTPServer:
    # Tornado's own limit sits well above ours so the handler can answer 413 itself.
    return tornado.httpserver.HTTPServer(
        make_app(broker, tls=ssl_ctx is not None),
        ssl_options=ssl_ctx,
        max_body_size=4 * MAX_BODY,
        idle_connection_timeout=60,
        body_timeout=30,
    )


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise InputError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the TLS certificate {cert} and key {key} ({exc})") from None
    return ctx


def serve(
    broker: Broker,
    *,
    host: str = "127.0.0.1",
    port: int = 8085,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted; ``ready`` gets the base URL once listening."""
    ctx = _ssl_context(tls_cert, tls_key)

    async def main() -> None:
        try:
            sockets = tornado.netutil.bind_sockets(port, host)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
        server = _server(broker, ctx)
        server.add_sockets(sockets)
        bound = sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        if ready:
            ready(f"{'https' if ctx else 'http'}://{shown}:{bound}")
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class RunningBroker:
    """A broker serving from a background thread (tests, benchmarks, the demo)."""

    url: str
    port: int
    broker: Broker
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _thread: threading.Thread

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def start_in_thread(broker: Broker, *, host: str = "127.0.0.1", port: int = 0) -> RunningBroker:
    """Serve ``broker`` on ``host:port`` (0: a free port) from a daemon thread."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = _server(broker, None)
        server.add_sockets(sockets)
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop = asyncio.Event()
        box["port"] = sockets[0].getsockname()[1]
        started.set()
        await stop.wait()
        server.stop()
        await server.close_all_connections()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the starter below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="kbs-broker", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in box or "port" not in box:
        raise KbsError(f"the key broker did not start ({box.get('error', 'timeout')})")
    bound = box["port"]
    return RunningBroker(f"http://{host}:{bound}", bound, broker, box["loop"], box["stop"], thread)
