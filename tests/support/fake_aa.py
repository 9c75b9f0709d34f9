"""A local stand-in for guest-components' ``api-server-rest`` (the CoCo Attestation Agent's REST API).

It follows the documented API (``api-server-rest/openapi/api.json``): ``GET /info`` names the TEE,
``GET /aa/evidence?runtime_data=...[&encoding=base64]`` answers the attester's evidence, 400 for
a missing ``runtime_data``, 404 for other paths, 405 for other methods. Runtime data longer than
64 bytes is refused, shorter is zero-padded, as the SNP and TDX attesters do.

Evidence comes from the simulated TEE, with the HOST_DATA the pod VM was "launched" with (the
init-data digest, as the hypervisor sets it): in the ``sample`` format with jupyter-cc's simulated
report inside (``tee="sample"``, what ``kata-qemu-coco-dev`` answers), or in the upstream SNP
format (``tee="snp"``: ``attestation_report`` fields and an empty ``cert_chain``).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jupyter_cc.attest.sim import SimulatedTee
from jupyter_cc.kbs.upstream import serialize_snp_report


class FakeAttestationAgent:
    """``FakeAttestationAgent(tee, host_data).start()``; :attr:`url`; :meth:`stop`."""

    def __init__(self, sim: SimulatedTee, *, tee: str = "sample", host_data: bytes = bytes(32)) -> None:
        self.sim = sim
        self.tee = tee
        self.host_data = host_data
        self.requests: list[str] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                agent.requests.append(self.path)
                status, body = agent.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeAttestationAgent:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, bytes]:
        parts = urlsplit(path)
        if parts.path == "/info":
            doc = {"version": "v0.0.0-fake", "tee": self.tee, "additional_tees": [], "feature": "all"}
            return 200, json.dumps(doc).encode()
        if parts.path != "/aa/evidence":
            return 404, b""
        query = parse_qs(parts.query)
        if "runtime_data" not in query:
            return 400, b""
        text = query["runtime_data"][0]
        try:
            data = (
                base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                if query.get("encoding") == ["base64"]
                else text.encode()
            )
        except (binascii.Error, ValueError):
            return 400, b""
        if len(data) > 64:
            return 500, b"runtime data is longer than 64 bytes"
        return 200, json.dumps(self.evidence(data.ljust(64, b"\x00"))).encode()

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        report = self.sim.mint(report_data, host_data=self.host_data)
        if self.tee == "snp":
            return {"attestation_report": serialize_snp_report(report), "cert_chain": []}
        signed = {"kind": "sim-snp", "evidence": {"report": base64.b64encode(report).decode()}}
        return {"svn": "1", "report_data": base64.b64encode(report_data).decode(), "jupyter-cc": signed}
