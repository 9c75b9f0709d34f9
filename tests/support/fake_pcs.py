"""A local Intel PCS v4 (and certificates host) on loopback, serving collateral as Intel does.

Routes follow design section 12: ``/tdx/certification/v4/tcb?fmspc=`` (404 for an unknown
FMSPC, issuer chain URL-encoded in ``TCB-Info-Issuer-Chain``), ``/tdx/certification/v4/qe/identity``
(``SGX-Enclave-Identity-Issuer-Chain``), ``/sgx/certification/v4/pckcrl?ca=`` (``SGX-PCK-CRL-Issuer-Chain``)
and ``/IntelSGXRootCA.der``. Faults are set per test: ``rate_limit`` (429s with Retry-After
before answering), ``delay`` (seconds before answering), ``status`` (always answer that).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["FakeService", "Route", "pcs_routes", "serve"]


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


@dataclass
class FakeService:
    """Routes by path-with-query; counters and faults a test can read and set."""

    routes: dict[str, Route] = field(default_factory=dict)
    rate_limit: int = 0
    retry_after: str = "1"
    delay: float = 0.0
    status: int | None = None
    hits: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str) -> Route:
        self.hits.append(path)
        if self.delay:
            time.sleep(self.delay)
        if self.status is not None:
            return Route(b"", status=self.status)
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return Route(b"", {"Retry-After": self.retry_after}, status=429)
        return self.routes.get(path) or Route(b"", status=404)


def _handler(service: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = service.answer(self.path)
            try:
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve(service: FakeService) -> Iterator[FakeService]:
    """Run ``service`` on 127.0.0.1 in a thread; ``service.url`` is its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


def _quoted(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe="")


def pcs_routes(
    tdx: Path,
    *,
    tcb_info: bytes | None = None,
    qe_identity: bytes | None = None,
    tcb_chain: bytes | None = None,
    fmspc: str = "50806f000000",
) -> dict[str, Route]:
    """The PCS and certificates routes for the collateral in ``tdx`` (../shared/vectors/tdx)."""
    chain = tcb_chain or (tdx / "tcb-info-issuer-chain.pem").read_bytes()
    qe_chain = tcb_chain or (tdx / "qe-identity-issuer-chain.pem").read_bytes()
    return {
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": Route(
            tcb_info or (tdx / f"tcb-info-{fmspc}.json").read_bytes(),
            {"TCB-Info-Issuer-Chain": _quoted(chain), "Content-Type": "application/json"},
        ),
        "/tdx/certification/v4/qe/identity": Route(
            qe_identity or (tdx / "qe-identity.json").read_bytes(),
            {"SGX-Enclave-Identity-Issuer-Chain": _quoted(qe_chain)},
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Route(
            (tdx / "pck-platform-crl.der").read_bytes(),
            {"SGX-PCK-CRL-Issuer-Chain": _quoted((tdx / "pck-crl-issuer-chain.pem").read_bytes())},
        ),
        "/IntelSGXRootCA.der": Route((tdx / "root-ca-crl.der").read_bytes()),
    }
