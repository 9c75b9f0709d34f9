"""The embedded key broker's HTTP face (``jupyter-cc kbs serve``): Trustee's KBS protocol on tornado.

The handlers only parse requests and write answers; :class:`~jupyter_cc.kbs.broker.Broker`
holds the protocol state and decides. Protocol details, the REPORT_DATA binding and the JWE
are in :mod:`jupyter_cc.kbs.protocol`.

* ``POST /kbs/v0/auth`` opens a session (cookie ``kbs-session-id``, HttpOnly, SameSite=Strict,
  path ``/kbs``, Secure under TLS) and answers its nonce.
* ``POST /kbs/v0/attest`` takes the 0.4.x ``Attestation`` (``runtime-data``, optional
  ``init-data``, composite ``tee-evidence``) in the upstream attesters' formats or jupyter-cc's
  own (:mod:`jupyter_cc.kbs.upstream`), and answers the broker's attestation token.
* ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` (cookie, or ``Authorization: Bearer <token>``)
  answers the key as a JWE to the attested TEE key, and the allowing policy's name in the
  ``X-Jupyter-CC-Policy`` header. 401 without an attested, unexpired session; 404 for an
  unknown resource; 403 for a revoked one or a policy denial, the body naming every failed rule
  (``failed_rules``) and the ``detail`` sentence too.

Every refusal is trustee's ``ErrorInformation`` JSON with trustee's status: 401
``AttestationError`` for any bad ``auth`` or ``attest`` (malformed, replayed, out of order,
unverifiable), 401 ``TokenNotFound`` for a resource without an attested session, 403
``PolicyDeny``, 404 ``InvalidRequestPath`` / ``PluginNotFound`` for every path no route serves
(never tornado's HTML page). Bodies over 1 MiB get 413.

Transport and load (:func:`serve`): HTTPS with the broker's certificate
(:mod:`jupyter_cc.kbs.tls`); plain HTTP only on a loopback address. A client over its ``/attest``
rate gets 429 with ``Retry-After`` before its body is read (:class:`_AttestGate`). A body-less
``GET .../resource/...`` with a bearer token (a kernel's second and later keys on a kept
session) is answered by that gate too, without tornado's routing and handler machinery, with
the same checks, statuses, bodies and headers as :class:`_ResourceHandler`
(:func:`_bearer_resource`). Evidence verification and the release's audit fsync run in worker
threads, so the event loop keeps answering; ``workers`` > 1 forks processes sharing the
listening sockets and the session store (:mod:`jupyter_cc.kbs.sessions`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.client import responses
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.log
import tornado.netutil
import tornado.web
from tornado import httputil

from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import InputError
from jupyter_cc.kbs.broker import Broker, RequestRefusedError, Session
from jupyter_cc.kbs.protocol import (
    API_PREFIX,
    ERR_ATTESTATION,
    ERR_PATH,
    ERR_PLUGIN,
    MAX_BODY,
    POLICY_HEADER,
    SESSION_COOKIE,
    KbsError,
    error_body,
)
from jupyter_cc.kbs.tls import TlsIdentity, is_loopback_host, server_context

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
            raise RequestRefusedError(401, ERR_ATTESTATION, "the request body is not JSON") from None

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
        """Every error tornado itself answers (404, 405, 500...) as ErrorInformation JSON."""
        self.clear_header("Set-Cookie")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        if status_code == 405:  # trustee: another method falls through to a plugin of that name
            self.set_status(404)
            kind, detail = (
                ERR_PLUGIN,
                f"no KBS endpoint serves {self.request.method} {self.request.path[:200]}",
            )
        elif status_code == 404:
            kind, detail = ERR_PATH, f"no KBS endpoint serves {self.request.method} {self.request.path[:200]}"
        else:
            kind, detail = "InternalError", f"HTTP {status_code} {self._reason}"
        self.finish(json.dumps(error_body(kind, detail.rstrip(".") + ".")))


class _NotFoundHandler(_Handler):
    """Unmatched routes: 404 with ErrorInformation (trustee: InvalidRequestPath / PluginNotFound)."""

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        path = self.request.path
        plugin = path[len(API_PREFIX) + 1 :].split("/", 1)[0] if path.startswith(API_PREFIX + "/") else ""
        if plugin and plugin not in ("auth", "attest", "resource"):
            refusal = RequestRefusedError(404, ERR_PLUGIN, f"there is no KBS plugin {plugin[:64]!r}")
        else:
            refusal = RequestRefusedError(
                404, ERR_PATH, f"no KBS endpoint serves {self.request.method} {path[:200]}"
            )
        self._refuse(refusal)


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
    async def post(self) -> None:
        try:
            body = self.json_body()
            session = self.broker.session(self.get_cookie(SESSION_COOKIE))
            # Verifying evidence is CPU work (signatures, chains, collateral): a worker thread
            # does it, so this process keeps answering other clients' auth and resource calls.
            loop = asyncio.get_running_loop()
            token = await loop.run_in_executor(None, self.broker.attest, session, body)
        except RequestRefusedError as refusal:
            return self._refuse(refusal)
        self.send_json({"token": token})


class _ResourceHandler(_Handler):
    async def get(self, repository: str, rtype: str, tag: str) -> None:
        try:
            session = self.session()
            # A release appends to the audit log and fsyncs it: a worker thread waits for the
            # disk, so this process keeps answering other clients meanwhile.
            loop = asyncio.get_running_loop()
            response, policy = await loop.run_in_executor(
                None, self.broker.release, session, f"{repository}/{rtype}/{tag}"
            )
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
        default_handler_class=_NotFoundHandler,
        default_handler_args=args,
        xsrf_cookies=False,
    )


class _AttestGate(httputil.HTTPServerConnectionDelegate):
    """In front of the application: answers 429 to a client over its ``/attest`` rate.

    Checked when the request line and headers arrive, before the body is read or any handler
    runs, so a refused client costs no evidence parsing (:meth:`Broker.attest_wait`).
    """

    def __init__(self, app: tornado.web.Application, broker: Broker) -> None:
        self.app = app
        self.broker = broker

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _GatedRequest(self.broker, request_conn, self.app.start_request(server_conn, request_conn))

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


_BEARER_RESOURCE = re.compile(
    rf"\A{API_PREFIX}/resource/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)\Z"
)
"""A resource path the fast path serves: plain segments (nothing tornado would unquote), no query."""


def _bearer_resource(
    start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders
) -> tuple[str, str] | None:
    """(token, resource) of a body-less ``GET /kbs/v0/resource/...`` with a bearer token, else None.

    Those are a kept session's releases (:class:`jupyter_cc.keys.kbs_client.KbsClient`); the
    fast path answers them without tornado's routing and handler machinery, with exactly the
    checks, answers and headers of :class:`_ResourceHandler`. Anything else goes to tornado.
    """
    if start_line.method != "GET":
        return None
    match = _BEARER_RESOURCE.match(start_line.path)
    if match is None or "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        return None
    auth = headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    return auth[7:].strip(), "/".join(match.groups())


class _GatedRequest(httputil.HTTPMessageDelegate):
    """One request: passed to the application unless it is an ``/attest`` over the rate (429
    here) or a kept session's bearer ``resource`` request (answered here: :func:`_bearer_resource`)."""

    def __init__(
        self, broker: Broker, conn: httputil.HTTPConnection, inner: httputil.HTTPMessageDelegate
    ) -> None:
        self.broker = broker
        self.conn = conn
        self.inner = inner
        self.refused = False
        self.fast: tuple[str, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.started = 0.0
        self.summary = ""

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        if isinstance(start_line, httputil.RequestStartLine):
            if start_line.method == "POST" and start_line.path.split("?", 1)[0] == f"{API_PREFIX}/attest":
                wait = self.broker.attest_wait(self._peer())
                if wait > 0:
                    self.refused = True
                    self._too_many(wait)
                    return None
            self.fast = _bearer_resource(start_line, headers)
            if self.fast is not None:
                self.started = time.perf_counter()
                self.summary = f"GET {start_line.path} ({self._peer()})"
                return None
        return self.inner.headers_received(start_line, headers)

    def _peer(self) -> str:
        context = getattr(self.conn, "context", None)
        return str(getattr(context, "remote_ip", "") or "")

    def _release(self, token: str, resource: str) -> tuple[dict[str, str], str]:
        """In a worker thread: the token's session, then the release (its audit fsync waits here)."""
        return self.broker.release(self.broker.session_for_token(token), resource)

    async def _answer(self, token: str, resource: str) -> None:
        loop = asyncio.get_running_loop()
        extra: dict[str, str] = {}
        try:
            response, policy = await loop.run_in_executor(None, self._release, token, resource)
            status, doc = 200, response
            extra[POLICY_HEADER] = policy
        except RequestRefusedError as refusal:
            status, doc = refusal.status, error_body(refusal.kind, refusal.detail, **refusal.extra)
        except Exception:
            tornado.log.app_log.error("Uncaught exception %s", self.summary, exc_info=True)
            status, doc = 500, error_body("InternalError", "HTTP 500 Internal Server Error.")
        body = json.dumps(doc).encode()
        headers = httputil.HTTPHeaders(
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                **extra,
            }
        )
        try:
            self.conn.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown")),
                headers,
                body,
            )
            self.conn.finish()
        except tornado.iostream.StreamClosedError:
            return
        elapsed = 1000 * (time.perf_counter() - self.started)
        log = tornado.log.access_log.info if status < 400 else tornado.log.access_log.warning
        log("%d %s %.2fms", status, self.summary, elapsed)

    def _too_many(self, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        body = json.dumps(
            error_body(
                "TooManyRequests",
                f"too many attestation requests from this client; retry after {seconds} s.",
            )
        ).encode()
        headers = httputil.HTTPHeaders(
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Retry-After": str(seconds),
                "Cache-Control": "no-store",
            }
        )
        self.conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 429, "Too Many Requests"), headers, body
        )
        self.conn.finish()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.refused or self.fast else self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.fast is not None:
            self._task = asyncio.get_running_loop().create_task(self._answer(*self.fast))
        elif not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused and self.fast is None:
            self.inner.on_connection_close()


def _server(broker: Broker, ssl_ctx: ssl.SSLContext | None) -> tornado.httpserver.HTTPServer:
    """The HTTP(S) server: the rate gate, then :func:`make_app`."""
    # Tornado's own limit sits well above ours so the handler can answer 413 itself.
    return tornado.httpserver.HTTPServer(
        _AttestGate(make_app(broker, tls=ssl_ctx is not None), broker),
        ssl_options=ssl_ctx,
        max_body_size=4 * MAX_BODY,
        idle_connection_timeout=60,
        body_timeout=30,
    )


def _ssl_context(identity: TlsIdentity | None) -> ssl.SSLContext | None:
    """The server's TLS context for ``identity`` (None: plain HTTP)."""
    return server_context(identity.cert_path, identity.key_path) if identity is not None else None


def _check_insecure(host: str, identity: TlsIdentity | None) -> None:
    if identity is None and not is_loopback_host(host):
        raise InputError(
            f"plain HTTP is refused on {host}: it is not a loopback address, so anyone on the "
            "network could stand in for this broker",
            hint="serve HTTPS (drop --insecure-http) or bind 127.0.0.1",
        )


def _bind(host: str, port: int) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _serve_forever(
    make_broker: Callable[[], Broker], sockets: list[socket.socket], ctx: ssl.SSLContext | None
) -> None:
    async def main() -> None:
        server = _server(make_broker(), ctx)
        server.add_sockets(sockets)
        await asyncio.Event().wait()

    asyncio.run(main())


def _set_parent_death_signal() -> None:
    """Linux: this worker gets SIGTERM when its parent dies, so no worker outlives the broker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's signal handler still stops the workers


def _run_workers(
    make_broker: Callable[[], Broker], sockets: list[socket.socket], ctx: ssl.SSLContext | None, workers: int
) -> None:
    """Fork ``workers`` processes serving the shared sockets; wait; stop them all together.

    The parent only supervises: when it is interrupted or terminated, or one worker exits, it
    stops the others and returns. Each worker builds its broker after the fork (SQLite
    connections must not cross a fork).
    """
    pids: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker
            status = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _set_parent_death_signal()
                _serve_forever(make_broker, sockets, ctx)
            except KeyboardInterrupt:
                pass
            except BaseException:
                traceback.print_exc()
                status = 1
            os._exit(status)
        pids.append(pid)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    died: tuple[int, int] | None = None
    try:
        died = os.wait()  # the first worker to exit ends the broker
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    stopped = (0, -signal.SIGINT, -signal.SIGTERM)  # Ctrl-C reaches the workers too
    if died is not None and os.waitstatus_to_exitcode(died[1]) not in stopped:
        raise KbsError(
            f"broker worker {died[0]} exited (wait status {died[1]}), so the broker stopped",
            hint="its error is on stderr above",
        )


def serve(
    make_broker: Callable[[], Broker],
    *,
    host: str = "127.0.0.1",
    port: int = 8085,
    identity: TlsIdentity | None = None,
    workers: int = 1,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted; ``ready`` gets the base URL once listening.

    Args:
        make_broker: builds the broker; called in each worker after the fork (once, here, with
            one worker). Workers share the listening sockets and the session store the broker
            is given, and must share its signing key.
        identity: the certificate to serve HTTPS with; None serves plain HTTP, refused unless
            ``host`` is a loopback address.
        workers: processes serving together (1: this process).

    Raises:
        InputError: plain HTTP off loopback, an unloadable certificate, a port in use.
    """
    _check_insecure(host, identity)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    ctx = _ssl_context(identity)
    sockets = _bind(host, port)
    bound = sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if ready:
        ready(f"{'https' if ctx else 'http'}://{shown}:{bound}")
    if workers == 1:
        _serve_forever(make_broker, sockets, ctx)
    else:
        _run_workers(make_broker, sockets, ctx, workers)


@dataclass
class RunningBroker:
    """A broker serving from a background thread (tests, benchmarks, the demo).

    ``url`` is ``https://...`` when it serves TLS; ``fingerprint`` is then its certificate's
    SHA-256 (what a client pins), and :meth:`kbs_uri` gives a client URI that pins it.
    """

    url: str
    port: int
    broker: Broker
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _thread: threading.Thread
    fingerprint: str | None = None

    def kbs_uri(self, resource: str) -> str:
        """A client URI for ``resource`` on this broker (pinned when it serves TLS)."""
        host = self.url.split("://", 1)[1]
        if self.fingerprint is None:
            return f"kbs+http://{host}/{resource}"
        return f"kbs://{host}/{resource}?cert-sha256={self.fingerprint}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def start_in_thread(
    broker: Broker, *, host: str = "127.0.0.1", port: int = 0, identity: TlsIdentity | None = None
) -> RunningBroker:
    """Serve ``broker`` on ``host:port`` (0: a free port) from a daemon thread.

    ``identity`` serves HTTPS with that certificate (see :func:`jupyter_cc.kbs.tls.ensure_identity`);
    without it the broker serves plain HTTP, on loopback only.
    """
    _check_insecure(host, identity)
    ctx = _ssl_context(identity)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = _server(broker, ctx)
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
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if ctx else "http"
    return RunningBroker(
        f"{scheme}://{shown}:{bound}",
        bound,
        broker,
        box["loop"],
        box["stop"],
        thread,
        identity.fingerprint if identity else None,
    )
