"""A local HTTPS server following the part of the Kubernetes API that KubeSpawner uses.

Pods: create (201; 409 when the name exists; 422 without containers), get (404 when absent),
list and watch (``?watch=true`` streams ``ADDED``/``MODIFIED``/``DELETED`` watch events as JSON
lines), delete (200 with the pod; 404 when absent). Events: list and watch the same way. Status
moves Pending -> Running once the pod's process listens, or -> Failed when it exits.

A "pod" is a local process: its first container's command and arguments run with this Python
(``jupyter-cc ...`` becomes ``python -m jupyter_cc ...``) and that container's environment, with
two changes a test needs on one machine: ``--bind 0.0.0.0`` becomes 127.0.0.1, and the
simulated TEE is told (``JUPYTER_CC_SIM_HOST_DATA``) the HOST_DATA a confidential hypervisor
would launch it with: the SHA-256 of the pod's CCE policy, or the digest of its init-data.
``host_data`` overrides that, to play a host that launched another policy than the pod names;
``replace_command`` runs something else in the pod (an agent that never answers).
``fault`` plays a cluster that cannot run the pod: ``"pending"`` (never scheduled, stays Pending
with a FailedScheduling event), ``"image-pull"`` (Pending, its container waiting in
ImagePullBackOff) or ``"evicted"`` (Failed, reason Evicted); no process is started for it.

``FakeKube(folder).start()`` (in the test's event loop); :meth:`kubeconfig` for the client;
:attr:`requests` records what was asked; :meth:`stop` ends every pod process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from jupyter_cc.attest.pod import cce_host_data, init_data_annotation_body
from jupyter_cc.hub.kubernetes import ACI_CCE_POLICY, COCO_INITDATA_KEYS
from jupyter_cc.kbs.tls import ensure_identity
from tests.support import procs

POD_MARKER = "JUPYTER_CC_FAKE_POD"


def launch_host_data(annotations: dict[str, str]) -> bytes:
    """What a confidential hypervisor puts in HOST_DATA for a pod with these annotations."""
    if annotations.get(ACI_CCE_POLICY):
        return cce_host_data(annotations[ACI_CCE_POLICY].encode())
    for key in COCO_INITDATA_KEYS:
        if annotations.get(key):
            return hashlib.sha256(init_data_annotation_body(annotations[key]).encode()).digest()
    return bytes(32)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKube:
    def __init__(self, folder: Path, *, host_data: bytes | None = None, ready_timeout: float = 60.0) -> None:
        self.folder = folder
        self.host_data = host_data
        #: When set, a pod runs this instead of its command (a test's hung or broken "image").
        self.replace_command: list[str] | None = None
        #: When set ("pending", "image-pull", "evicted"), pods end in that state, with no process.
        self.fault: str | None = None
        self.ready_timeout = ready_timeout
        self.identity = ensure_identity(folder / "tls", ("127.0.0.1",))
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        #: Every pod as created, kept after deletion (what the cluster was given).
        self.created: list[dict[str, Any]] = []
        self.uids: dict[str, str] = {}
        self._version = 1
        self._watchers: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {"pods": [], "events": []}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- server --------------------------------------------------------------------------

    async def start(self) -> FakeKube:
        app = web.Application()
        base = "/api/v1/namespaces/{ns}"
        app.router.add_get(base + "/pods", self._list_pods)
        app.router.add_post(base + "/pods", self._create_pod)
        app.router.add_get(base + "/pods/{name}", self._get_pod)
        app.router.add_delete(base + "/pods/{name}", self._delete_pod)
        app.router.add_get(base + "/events", self._list_events)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.identity.cert_path, self.identity.key_path)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for name in list(self.procs):
            self._kill(name)
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait({})
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, namespace: str = "jhub") -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f'clusters: [{{name: fake, cluster: {{server: "{self.url}", '
            f'certificate-authority: "{self.identity.cert_path}"}}}}]\n'
            "users: [{name: hub, user: {token: fake-service-account-token}}]\n"
            f"contexts: [{{name: fake, context: {{cluster: fake, user: hub, namespace: {namespace}}}}}]\n"
            "current-context: fake\n"
        )
        return path

    # --- helpers -------------------------------------------------------------------------

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _notify(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        for q in self._watchers[kind]:
            q.put_nowait({"type": type_, "object": obj})

    def _event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        meta = pod["metadata"]
        event = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:8]}",
                "namespace": meta["namespace"],
                "uid": str(uuid.uuid4()),
            },
            "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"]},
            "reason": reason,
            "message": message,
            "type": type_,
            "lastTimestamp": _now(),
            "eventTime": None,
        }
        self._bump(event)
        self.events.append(event)
        self._notify("events", "ADDED", event)

    async def _list_or_watch(
        self, request: web.Request, kind: str, items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, str(request.rel_url)))
        if request.query.get("watch") not in ("true", "True", "1"):
            body = {
                "kind": "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
            return web.json_response(body)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._watchers[kind].append(queue)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                if not event:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers[kind].remove(queue)
        return response

    # --- handlers ------------------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        return await self._list_or_watch(request, "pods", list(self.pods.values()))

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        return await self._list_or_watch(request, "events", list(self.events))

    async def _get_pod(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", str(request.rel_url)))
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return self._status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    def _status(self, code: int, reason: str, message: str) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        return web.json_response(body, status=code)

    async def _create_pod(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", str(request.rel_url)))
        pod = await request.json()
        name = pod.get("metadata", {}).get("name", "")
        if name in self.pods:
            return self._status(409, "AlreadyExists", f'pods "{name}" already exists')
        containers = (pod.get("spec") or {}).get("containers") or []
        if not name or not containers:
            return self._status(422, "Invalid", "Pod is invalid: spec.containers: Required value")
        pod["metadata"].update(
            namespace=request.match_info["ns"], uid=str(uuid.uuid4()), creationTimestamp=_now()
        )
        pod["status"] = {
            "phase": "Pending",
            "podIP": None,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": False,
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": "",
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
                for c in containers
            ],
        }
        self._bump(pod)
        self.pods[name] = pod
        self.uids[name] = pod["metadata"]["uid"]
        self.created.append(json.loads(json.dumps(pod)))
        self._notify("pods", "ADDED", pod)
        self._event(
            pod, "Scheduled", f"Successfully assigned {pod['metadata']['namespace']}/{name} to fake-node"
        )
        asyncio.get_running_loop().create_task(self._run(name))
        return web.json_response(pod, status=201)

    async def _delete_pod(self, request: web.Request) -> web.Response:
        self.requests.append(("DELETE", str(request.rel_url)))
        name = request.match_info["name"]
        pod = self.pods.pop(name, None)
        if pod is None:
            return self._status(404, "NotFound", f'pods "{name}" not found')
        self._kill(name)
        self.deleted.append(name)
        self._bump(pod)
        self._notify("pods", "DELETED", pod)
        return web.json_response(pod)

    # --- the pod's process ---------------------------------------------------------------

    def _argv_env(self, pod: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        container = pod["spec"]["containers"][0]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if argv and argv[0] == "jupyter-cc":
            argv = [sys.executable, "-m", "jupyter_cc", *argv[1:]]
        argv = ["127.0.0.1" if a == "0.0.0.0" else a for a in argv]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "JUPYTER_DATA_DIR", "LANG")}
        env.update({e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e})
        annotations = pod["metadata"].get("annotations") or {}
        host_data = self.host_data if self.host_data is not None else launch_host_data(annotations)
        env["JUPYTER_CC_SIM_HOST_DATA"] = host_data.hex()
        env[POD_MARKER] = pod["metadata"]["uid"]  # inherited by all the pod starts: its "container"
        if self.replace_command is not None:
            port = argv[argv.index("--port") + 1] if "--port" in argv else "0"
            argv = [a.replace("{port}", port) for a in self.replace_command] + ["--port", port]
        return argv, env

    def _fault(self, pod: dict[str, Any], fault: str) -> None:
        """Put ``pod`` in the state a cluster that cannot run it reports (see :attr:`fault`)."""
        status = pod["status"]
        if fault == "pending":
            message = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
            status["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ]
            self._event(pod, "FailedScheduling", message, "Warning")
        elif fault == "image-pull":
            for container in status["containerStatuses"]:
                image = container["image"]
                container["state"] = {
                    "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
                }
            self._event(pod, "Failed", "Failed to pull image: manifest unknown", "Warning")
        elif fault == "evicted":
            message = "The node was low on resource: memory. Container notebook was using 17Gi."
            status.update(phase="Failed", reason="Evicted", message=message)
            for container in status["containerStatuses"]:
                container["state"] = {"terminated": {"exitCode": 137, "reason": "Error"}}
            self._event(pod, "Evicted", message, "Warning")
        else:
            raise ValueError(f"unknown fault {fault!r}")
        self._bump(pod)
        self._notify("pods", "MODIFIED", pod)

    async def _run(self, name: str) -> None:
        pod = self.pods[name]
        if self.fault is not None:
            self._fault(pod, self.fault)
            return
        argv, env = self._argv_env(pod)
        with open(self.folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        self._event(pod, "Started", "Started container notebook")
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
        deadline = time.monotonic() + self.ready_timeout
        while name in self.pods and time.monotonic() < deadline:
            if proc.poll() is not None:
                pod["status"]["phase"] = "Failed"
                for status in pod["status"]["containerStatuses"]:
                    status["state"] = {"terminated": {"exitCode": proc.returncode, "reason": "Error"}}
                self._bump(pod)
                self._notify("pods", "MODIFIED", pod)
                self._event(pod, "BackOff", f"container exited with {proc.returncode}", "Warning")
                return
            if port and _listening(port):
                pod["status"].update(phase="Running", podIP="127.0.0.1")
                for status in pod["status"]["containerStatuses"]:
                    status.update(ready=True, started=True, state={"running": {"startedAt": _now()}})
                self._bump(pod)
                self._notify("pods", "MODIFIED", pod)
                return
            await asyncio.sleep(0.1)

    def _kill(self, name: str) -> None:
        """End the pod's process and everything it started (a container's end kills them all)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        marker = f"{POD_MARKER}={self.uids.get(name, '')}".encode()
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        for pid in procs.pids():  # what it started in sessions of their own (the server)
            if marker in procs.environ(pid).split(b"\0"):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
