"""AttestedKubeSpawner through a real JupyterHub, the real KubeSpawner and kubernetes_asyncio, against
a local HTTPS Kubernetes API (tests/support/fake_kube.py) whose pods are local processes running
the agent transport with the simulated TEE, launched with the HOST_DATA their CCE policy or
init-data gives (or, to play a tampering host, another one).

Attacks first: a pod launched under another CCE policy than the one it names, a CoCo pod whose
init-data is not the one bound, are refused with the failed rule and deleted; nothing of the
user's (the API token) ever reached them. Then the spawn that works: an attestation step in the
progress events, the server answering through the proxy, the pod deleted on stop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jupyter_cc.kernelspec import simulated_policy_path
from tests.support.hub import Hub, find_chp, hub_config
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(240)

REGO = b'package policy\n\napi_version := "0.10.0"\ndefault allow := true\n'
OTHER = b'package policy\n\napi_version := "0.10.0"\nallow_exec_in_container := true\n'


class KubeThread:
    """The fake Kubernetes API in its own thread and event loop, for a Hub in another process."""

    def __init__(self, folder: Path) -> None:
        from tests.support.fake_kube import FakeKube

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.kube = FakeKube(folder)
        asyncio.run_coroutine_threadsafe(self.kube.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.kube.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _hub_key(folder: Path) -> Path:
    private = Ed25519PrivateKey.generate()
    path = folder / "hub_agent_ed25519"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    Path(str(path) + ".pub").write_bytes(public + b" hub\n")
    return path


def _profiles(folder: Path) -> list[dict[str, Any]]:
    from jupyter_cc.hub.kubernetes import aci_profile, coco_profile
    from jupyter_cc.kbs.tls import ensure_identity

    pem = ensure_identity(folder / "broker").cert_path.read_text()
    return [
        aci_profile("Confidential ACI", cce_policy=base64.b64encode(REGO).decode(), slug="aci", default=True),
        coco_profile(
            "CoCo SNP", runtime_class="kata-qemu-snp", kbs="kbs://kbs.example:8085", kbs_cert=pem, slug="coco"
        ),
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, sim_tee: Any) -> Iterator[tuple[Hub, KubeThread]]:
    from tests.support.env import need_tool

    chp = find_chp()
    if chp is None:
        need_tool("configurable-http-proxy (npm install --prefix .ci/node configurable-http-proxy)")
    assert chp is not None
    work = tmp_path_factory.mktemp("kube-hub")
    kube = KubeThread(work)
    kubeconfig = kube.kube.kubeconfig(work / "kubeconfig")
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)  # the Hub process reads it (load_kube_config)
    spawner = {
        "namespace": "jhub",
        "image": "quay.io/jupyter/base-notebook:2025-01-01",
        "k8s_api_host": kube.kube.url,
        "k8s_api_ssl_ca_cert": str(kube.kube.identity.cert_path),
        "identity_file": str(_hub_key(work)),
        "agent_port": free_port(),
        "agent_tee": "sim",
        "attestation_policy": str(simulated_policy_path()),
        "profile_list": _profiles(work),
        "args": ["--allow-root"] if os.geteuid() == 0 else [],
        "storage_pvc_ensure": False,
        "start_timeout": 90,
        "connect_timeout": 5.0,
        "pod_start_timeout": 20.0,
    }
    token = os.urandom(16).hex()
    extra = "\n".join(
        [
            'c.JupyterHub.spawner_class = "jupyter_cc.hub.AttestedKubeSpawner"',
            "from jupyter_cc.hub.kubernetes import modify_pod_hook",
            "c.AttestedKubeSpawner.modify_pod_hook = modify_pod_hook",
            *(f"c.AttestedKubeSpawner.{name} = {value!r}" for name, value in spawner.items()),
        ]
    )
    hub = Hub(work, hub_config(work=work, token=token, spawner={}, chp=chp, extra=extra), token).start()
    for name in ("alice", "bob"):
        hub.request("POST", f"/hub/api/users/{name}")
    try:
        yield hub, kube
    finally:
        for name in ("alice", "bob"):
            try:
                hub.request("DELETE", f"/hub/api/users/{name}/server", timeout=30)
            except OSError:
                pass
        hub.stop()
        kube.stop()
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def _spawn(hub: Hub, name: str, profile: str) -> tuple[list[dict[str, Any]], str]:
    from tests.integration.test_hub import user_token

    token = user_token(hub, name)
    answer = hub.request(
        "POST", f"/hub/api/users/{name}/server", {"profile": profile}, token=token, timeout=120
    )
    if answer.status >= 400:
        return [{"failed": True, "message": answer.json().get("message", "")}], token
    # 201 or 202: the progress stream says how the spawn ended either way
    return list(hub.events(name, token=token)), token


def _pod_env(kube: KubeThread, pod: str) -> dict[str, str]:
    spec = [p for p in kube.kube.created if p["metadata"]["name"] == pod][-1]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in spec.get("env") or []}


def test_a_pod_launched_under_another_cce_policy_is_refused_and_deleted(
    cluster: tuple[Hub, KubeThread],
) -> None:
    hub, kube = cluster
    kube.kube.host_data = hashlib.sha256(OTHER).digest()  # the host launched another policy
    try:
        events, _ = _spawn(hub, "bob", "aci")
    finally:
        kube.kube.host_data = None
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("failed"), messages
    sentence, *rules = messages[-1].split("\n")
    assert (
        sentence == "Spawn failed: The confidential pod jupyter-bob was not used: its binding check failed."
    )
    assert hashlib.sha256(REGO).hexdigest() in rules[0] and hashlib.sha256(OTHER).hexdigest() in rules[0]
    assert "jupyter-bob" in kube.kube.deleted and "jupyter-bob" not in kube.kube.pods
    created = [p for p in kube.kube.created if p["metadata"]["name"] == "jupyter-bob"][-1]
    env = {e["name"] for e in created["spec"]["containers"][0].get("env") or []}
    assert not env & {"JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}  # the token was never the pod's


def test_a_coco_pod_whose_init_data_is_not_the_bound_one_is_refused(cluster: tuple[Hub, KubeThread]) -> None:
    hub, kube = cluster
    kube.kube.host_data = hashlib.sha256(b"some other init-data").digest()
    try:
        events, _ = _spawn(hub, "bob", "coco")
    finally:
        kube.kube.host_data = None
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("failed"), messages
    assert "init-data" in messages[-1], messages
    assert "jupyter-bob" not in kube.kube.pods


HANG = "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[-1]))); time.sleep(600)"


def test_a_pod_whose_agent_never_answers_is_refused_and_deleted(cluster: tuple[Hub, KubeThread]) -> None:
    import sys

    hub, kube = cluster
    kube.kube.replace_command = [sys.executable, "-c", HANG]
    try:
        events, _ = _spawn(hub, "bob", "aci")
    finally:
        kube.kube.replace_command = None
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("failed"), messages
    assert messages[-1].startswith(
        "Spawn failed: The confidential pod jupyter-bob was not used: its ssh check failed."
    )
    assert "jupyter-bob" not in kube.kube.pods
    assert hub.request("GET", "/hub/api/").status == 200  # the Hub keeps serving


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("image-pull", "cannot pull its image quay.io/jupyter/base-notebook:2025-01-01 (ImagePullBackOff"),
        ("evicted", "was evicted by its node (The node was low on resource: memory"),
        ("pending", "was still not running after 20 seconds; its last event: FailedScheduling"),
    ],
)
def test_a_pod_that_cannot_run_is_one_sentence_and_deleted(
    cluster: tuple[Hub, KubeThread], fault: str, says: str
) -> None:
    hub, kube = cluster
    kube.kube.fault = fault
    try:
        events, _ = _spawn(hub, "bob", "aci")
    finally:
        kube.kube.fault = None
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("failed"), messages
    assert messages[-1].startswith("Spawn failed: The pod jupyter-bob "), messages
    assert says in messages[-1] and "\n" not in messages[-1], messages
    assert "jupyter-bob" not in kube.kube.pods
    assert hub.request("GET", "/hub/api/").status == 200  # the Hub keeps serving


def test_an_attested_pod_serves_the_user_through_the_proxy(cluster: tuple[Hub, KubeThread]) -> None:
    from tests.integration.test_hub import server_state, status_through_proxy, wait_for

    hub, kube = cluster
    events, token = _spawn(hub, "alice", "aci")
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), f"{messages}\n{hub.log_tail()}"
    assert any(m.startswith("Attesting pod jupyter-alice") for m in messages), messages
    verified = next(m for m in messages if m.startswith("Verified under policy"))
    assert "HOST_DATA is the SHA-256 of the pod's CCE policy" in verified
    assert "started" in status_through_proxy(hub, "alice", token)
    env = _pod_env(kube, "jupyter-alice")
    assert "JUPYTERHUB_API_TOKEN" not in env and "JPY_API_TOKEN" not in env  # sent through the agent only
    assert env["JUPYTER_CC_AUTHORIZED_KEYS"].startswith("ssh-ed25519 ")
    answer = hub.request("DELETE", "/hub/api/users/alice/server", token=token)
    assert answer.status in (202, 204)
    wait_for(lambda: server_state(hub, "alice") == {}, what="the server to stop")
    wait_for(lambda: "jupyter-alice" not in kube.kube.pods, what="the pod to be deleted")
