"""A local Azure Resource Manager for the CVM lifecycle tests, and a managed-identity token endpoint.

Azure is not reachable from the tests, so the real ``azure-mgmt-compute``, ``-network`` and
``-resource`` clients (and ``azure-identity``'s ``DefaultAzureCredential``) are pointed at this
server with their documented ``base_url`` and run unchanged. It follows the ARM contract those
clients exercise:

* ``PUT`` of virtual machines, network interfaces, virtual networks, public IP addresses and
  network security groups answers ``201`` with ``provisioningState: Creating`` and an
  ``Azure-AsyncOperation`` header; the operation (``GET /operations/{id}``) is ``InProgress``
  for ``polls`` polls, then ``Succeeded`` (or ``Failed`` with an error), and only then does the
  resource exist as ``Succeeded`` -- the SDK then reads it back with ``GET``;
* ``POST .../virtualMachines/{name}/start|deallocate|powerOff`` and ``DELETE`` answer ``202``
  with ``Azure-AsyncOperation`` and ``Location``; the power state in ``$expand=instanceView``
  changes when the operation succeeds;
* resource groups: ``HEAD`` (exists: 204, else 404) and ``PUT``; VM lists; ``404`` for a
  missing resource, subscription or group; ``401`` without the bearer token it issued;
* error bodies are ``{"error": {"code", "message"}}``; :meth:`FakeArm.fail` makes the next
  request of a kind fail with any code (``SkuNotAvailable``, ``QuotaExceeded``,
  ``AuthorizationFailed``...), and :attr:`FakeArm.hang` keeps operations ``InProgress``;
  :attr:`FakeArm.retry_after` sends ``Retry-After`` (else the client's polling interval applies).

The VM request is checked as Azure checks a confidential VM (security type, UEFI settings, OS
disk encryption type, a CVM image and a size the region offers); a refusal is the error Azure
gives. :class:`TokenEndpoint` is the App Service managed identity endpoint
(``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER``) that ``DefaultAzureCredential`` finds in the
environment. Every request is recorded in :attr:`FakeArm.requests`. :func:`lab_profile` is the
profile of the CVM "lab" these tests create, which an OpenSSH sshd on loopback stands in for.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jupyter_cc.azure.settings import AzureSettings
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.profiles import Profile
from tests.support.fake_azure import Pki
from tests.support.sshd import Sshd, sim_profile

#: The subscription the lab's CVM lives in.
SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"

#: Variables that would make ``DefaultAzureCredential`` take another credential than
#: :class:`TokenEndpoint`'s: removed before its ``env`` is set.
OTHER_CREDENTIALS = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "MSI_ENDPOINT",
    "IDENTITY_ENDPOINT",
)

CVM_SIZES = {
    "westeurope": {"Standard_DC2as_v5", "Standard_DC4as_v5", "Standard_DC4es_v5", "Standard_NCC40ads_H100_v5"}
}
"""The confidential sizes each fake region offers."""

_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<group>[^/]+)"
    r"(?:/providers/(?P<provider>microsoft\.[a-z]+)/(?P<type>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<action>[a-z]+))?)?)?$",
    re.IGNORECASE,
)
_KINDS = {
    "virtualmachines": "Microsoft.Compute/virtualMachines",
    "networkinterfaces": "Microsoft.Network/networkInterfaces",
    "virtualnetworks": "Microsoft.Network/virtualNetworks",
    "publicipaddresses": "Microsoft.Network/publicIPAddresses",
    "networksecuritygroups": "Microsoft.Network/networkSecurityGroups",
}
_POWER_AFTER = {"start": "running", "deallocate": "deallocated", "poweroff": "stopped"}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request as the fake saw it (the body parsed as JSON)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


def cvm_problems(body: dict[str, Any], location: str) -> tuple[str, str] | None:
    """The (code, message) Azure would refuse this confidential VM request with, or None."""
    props = body.get("properties") or {}
    size = (props.get("hardwareProfile") or {}).get("vmSize")
    if size not in CVM_SIZES.get(location, set()):
        return (
            "SkuNotAvailable",
            f"The requested VM size {size} is currently not available in location '{location}'.",
        )
    security = props.get("securityProfile") or {}
    disk_security = ((props.get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk", {}).get(
        "securityProfile"
    ) or {}
    if security.get("securityType") != "ConfidentialVM":
        return "InvalidParameter", "securityProfile.securityType must be ConfidentialVM for this size."
    uefi = security.get("uefiSettings") or {}
    if uefi.get("vTpmEnabled") is not True:
        return "InvalidParameter", "vTpmEnabled must be true for a Confidential VM."
    if disk_security.get("securityEncryptionType") not in ("VMGuestStateOnly", "DiskWithVMGuestState"):
        return "InvalidParameter", "osDisk.managedDisk.securityProfile.securityEncryptionType is required."
    image = (props.get("storageProfile") or {}).get("imageReference") or {}
    if "id" not in image and "cvm" not in str(image.get("sku", "")).lower():
        return "InvalidParameter", "The image does not support the security type ConfidentialVM."
    return None


class FakeArm:
    """A local ARM over HTTPS (see the module docstring). ``base_url`` and ``ca_file`` are what a
    client needs; ``token`` is the only bearer token it accepts.

    Args:
        folder: where the TLS files go.
        subscriptions: the subscription ids that exist.
        address: the private (and public) IP the fake NICs and public IPs report.
        polls: how many polls an operation stays InProgress.
    """

    def __init__(
        self, folder: Path, subscriptions: set[str], *, address: str = "127.0.0.1", polls: int = 1
    ) -> None:
        self.pki = Pki("fake ARM CA")
        self.ca_file = self.pki.write_ca(folder)
        self.context = self.pki.server_context(self.pki.issue("localhost"), folder, "arm")
        self.subscriptions = {s.lower() for s in subscriptions}
        self.address = address
        self.polls = polls
        self.token = secrets.token_urlsafe(24)
        self.hang = False
        self.retry_after: int | None = None  # seconds, as ARM sends it (an integer), or no header
        self.groups: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.requests: list[Seen] = []
        self._faults: dict[str, tuple[int, str, str]] = {}
        self._lock = threading.RLock()
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self.base_url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeArm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- knobs and views -------------------------------------------------------------------
    def fail(self, kind: str, status: int, code: str, message: str) -> None:
        """Make the next request for a resource of ``kind`` (``virtualMachines``, ...) fail."""
        self._faults[kind.lower()] = (status, code, message)

    def sent(self, method: str, kind: str) -> list[Seen]:
        """The requests of ``method`` whose path names ``kind`` (case-insensitive)."""
        return [
            r for r in self.requests if r.method == method and f"/{kind.lower()}/" in r.path.lower() + "/"
        ]

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            for rid, res in self.resources.items():
                if rid.endswith(f"/{kind.lower()}/{name.lower()}"):
                    return res
        return None

    # -- the contract --------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        parsed = json.loads(body) if body else None
        with self._lock:
            self.requests.append(Seen(method, url.path, query, parsed))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "InvalidAuthenticationToken", "The access token is missing or invalid.")
        if url.path.startswith("/operations/"):
            return self._operation(url.path.rsplit("/", 1)[1])
        if "api-version" not in query:
            return _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        match = _RESOURCE.match(url.path)
        if match is None:
            return _error(404, "InvalidResourceType", f"No route for {url.path}.")
        if match["sub"].lower() not in self.subscriptions:
            return _error(
                404, "SubscriptionNotFound", f"The subscription '{match['sub']}' could not be found."
            )
        with self._lock:
            if match["type"] is None:
                return self._group(method, match["group"], parsed)
            if match["group"].lower() not in self.groups:
                return _error(
                    404, "ResourceGroupNotFound", f"Resource group '{match['group']}' could not be found."
                )
            fault = self._faults.pop(match["type"].lower(), None)
            if fault is not None:
                return _error(*fault)
            return self._resource(method, match, parsed, query)

    def _group(self, method: str, group: str, body: Any) -> Reply:
        key = group.lower()
        if method == "HEAD":
            return Reply(204 if key in self.groups else 404)
        if method == "PUT":
            existed = key in self.groups
            self.groups[key] = {"name": group, "location": body["location"], "tags": body.get("tags", {})}
            return Reply(200 if existed else 201, {"id": f"/resourceGroups/{group}", **self.groups[key]})
        if key not in self.groups:
            return _error(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        return Reply(200, self.groups[key])

    def _resource(self, method: str, match: re.Match[str], body: Any, query: dict[str, list[str]]) -> Reply:
        kind = match["type"].lower()
        if kind not in _KINDS:
            return _error(404, "InvalidResourceType", f"Resource type {kind} is not known here.")
        prefix = f"/subscriptions/{match['sub']}/resourceGroups/{match['group']}/providers/{_KINDS[kind]}"
        if match["name"] is None:
            items = [r for rid, r in self.resources.items() if rid.startswith(prefix.lower() + "/")]
            return Reply(200, {"value": [self._view(r, expand=False) for r in items]})
        rid = f"{prefix}/{match['name']}"
        existing = self.resources.get(rid.lower())
        if match["action"] is not None:
            return self._action(existing, match["action"].lower(), match["name"])
        if method == "PUT":
            return self._put(kind, rid, match["name"], body)
        if existing is None:
            return _error(
                404, "ResourceNotFound", f"The Resource '{_KINDS[kind]}/{match['name']}' was not found."
            )
        if method == "DELETE":
            return self._start_operation(lambda: self.resources.pop(rid.lower(), None), 202)
        return Reply(200, self._view(existing, expand=query.get("$expand") == ["instanceView"]))

    def _put(self, kind: str, rid: str, name: str, body: Any) -> Reply:
        location = body.get("location", "")
        if kind == "virtualmachines":
            problem = cvm_problems(body, location)
            if problem is not None:
                return _error(409 if problem[0] == "SkuNotAvailable" else 400, *problem)
        resource = {
            "id": rid,
            "name": name,
            "type": _KINDS[kind],
            "location": location,
            "tags": body.get("tags", {}),
            "properties": {**(body.get("properties") or {}), "provisioningState": "Creating"},
        }
        if "sku" in body:
            resource["sku"] = body["sku"]
        self._fill(kind, resource)

        def done() -> None:
            resource["properties"]["provisioningState"] = "Succeeded"
            resource["power"] = "running"
            self.resources[rid.lower()] = resource

        reply = self._start_operation(done, 201)
        reply.body = {**resource, "properties": dict(resource["properties"])}
        return reply

    def _fill(self, kind: str, resource: dict[str, Any]) -> None:
        """What ARM adds to a resource: addresses for NICs and public IPs, a VM id."""
        props = resource["properties"]
        if kind == "networkinterfaces":
            for config in props.get("ipConfigurations", []):
                config.setdefault("properties", {})["privateIPAddress"] = self.address
        elif kind == "publicipaddresses":
            props["ipAddress"] = self.address
        elif kind == "virtualmachines":
            props["vmId"] = str(uuid.uuid4())

    def _action(self, existing: dict[str, Any] | None, action: str, name: str) -> Reply:
        if existing is None:
            return _error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/{name}' was not found.",
            )
        if action not in _POWER_AFTER:
            return _error(400, "InvalidAction", f"Unknown action {action}.")

        def done() -> None:
            existing["power"] = _POWER_AFTER[action]

        return self._start_operation(done, 202)

    def _start_operation(self, done: Any, status: int) -> Reply:
        op = uuid.uuid4().hex
        self.operations[op] = {"left": self.polls, "done": done, "status": "InProgress"}
        url = f"{self.base_url}/operations/{op}?api-version=2026-04-01"
        headers = {"Azure-AsyncOperation": url, **self._retry_after()}  # none: the client's interval
        if status == 202:
            headers["Location"] = url
        return Reply(status, None, headers)

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def _operation(self, op_id: str) -> Reply:
        with self._lock:
            op = self.operations.get(op_id)
            if op is None:
                return _error(404, "OperationNotFound", f"Operation {op_id} was not found.")
            if op["status"] == "InProgress" and not self.hang:
                if op["left"] > 0:
                    op["left"] -= 1
                else:
                    op["done"]()
                    op["status"] = "Succeeded"
            body = {"name": op_id, "status": op["status"], "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
            return Reply(200, body, self._retry_after())

    @staticmethod
    def _view(resource: dict[str, Any], *, expand: bool) -> dict[str, Any]:
        out = {k: v for k, v in resource.items() if k != "power"}
        out["properties"] = dict(resource["properties"])
        if expand and resource["type"] == "Microsoft.Compute/virtualMachines":
            out["properties"]["instanceView"] = {
                "statuses": [
                    {"code": f"ProvisioningState/{resource['properties']['provisioningState'].lower()}"},
                    {"code": f"PowerState/{resource.get('power', 'running')}"},
                ]
            }
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, arm: FakeArm) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.arm = arm

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        sock.settimeout(10)
        try:
            return self.arm.context.wrap_socket(sock, server_side=True), address
        except (OSError, ssl.SSLError):
            sock.close()
            raise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.server.arm.handle(self.command, self.path, self.headers, body)
        except Exception as exc:  # a bug in the fake: a 500 makes the test fail loudly
            reply = _error(500, "FakeServerBug", repr(exc))
        data = b"" if reply.body is None or self.command == "HEAD" else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)) if self.command != "HEAD" else "0")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve


class TokenEndpoint:
    """The App Service managed identity endpoint (plain HTTP on 127.0.0.1, as App Service's is):
    ``GET ?api-version=2019-08-01&resource=...`` with ``X-IDENTITY-HEADER`` returns ``token``.

    ``env`` is what a test puts in the environment for ``DefaultAzureCredential`` to find it.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.header = secrets.token_urlsafe(16)
        self.refuse = False
        self.calls = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                endpoint.calls += 1
                ok = self.headers.get("X-IDENTITY-HEADER") == endpoint.header and not endpoint.refuse
                body = (
                    {
                        "access_token": endpoint.token,
                        "expires_on": str(int(time.time()) + 3600),
                        "token_type": "Bearer",
                    }
                    if ok
                    else {"error": "invalid_request", "error_description": "Identity not found"}
                )
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def env(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def lab_profile(sshd: Sshd, folder: Path, *, port: int | None = None, **azure: Any) -> Profile:
    """The profile "lab": an Azure CVM in :data:`SUBSCRIPTION` (``azure`` changes its settings)
    whose address the NIC gives, which ``sshd`` stands in for (``port``: another, where nothing
    may listen); its public key and (empty) known_hosts are written in ``folder``."""
    key = folder / "id.pub"
    key.write_text(sshd.identity_file.with_suffix(".pub").read_text())
    settings = AzureSettings(
        **{
            "subscription": SUBSCRIPTION,
            "resource_group": "rg1",
            "location": "westeurope",
            "size": "Standard_DC4as_v5",
            **azure,
        },
        ssh_public_key=str(key),
        admin_user="cvmadmin",  # what Azure would create; the stand-in sshd lets in the test's user
    )
    base = sim_profile(sshd, "lab", policy=simulated_policy_path())
    return dataclasses.replace(
        base,
        host=None,  # looked up from the NIC
        port=port if port is not None else sshd.port,
        ssh_user=sshd.user,
        known_hosts=str(folder / "lab.known_hosts"),  # empty: the key is not known beforehand
        azure=settings,
    )
