"""AttestedSSHSpawner through a real JupyterHub and configurable-http-proxy on loopback, with the
OpenSSH sshd fixture and the simulated TEE standing in for the confidential VM."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.guest.agent import Agent
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.paths import data_dir
from tests.support import procs
from tests.support.hub import Hub, find_chp, hub_config
from tests.support.sshd import Sshd, sim_guest_traits

pytestmark = pytest.mark.timeout(300)


def need_module(name: str) -> None:
    """Skip without the Hub packages, except under CI=true, where that is a failure."""
    import importlib.util

    from tests.support.env import need_tool

    if importlib.util.find_spec(name) is None:
        need_tool(f"the Python package {name} (pip install -e '.[hub]')")


def guest_agents() -> list[int]:
    return [p for p in procs.guest_agents(str(data_dir() / "sim").encode()) if procs.alive(p)]


def guest_servers() -> list[int]:
    """Single-user servers started by this session's guest agents (their env names the sim dir)."""
    marker = b"JUPYTER_CC_SIM_DIR=" + str(data_dir() / "sim").encode()
    return [
        p
        for p in procs.pids()
        if b"jupyterhub.singleuser" in procs.cmdline(p) and marker in procs.environ(p) and procs.alive(p)
    ]


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


USERS = ("alice", "bob", "carol")

# carol's server starts without --allow-root: as root (the test sshd runs as root here) the
# single-user server refuses to run and exits while starting.
NO_ALLOW_ROOT_FOR_CAROL = """
c.Authenticator.allowed_users = {"alice", "bob", "carol"}
def _drop_allow_root(spawner):
    if spawner.user.name == "carol":
        spawner.args = [a for a in spawner.args if a != "--allow-root"]
c.Spawner.pre_spawn_hook = _drop_allow_root
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, sshd: Sshd) -> Iterator[Hub]:
    from tests.support.env import need_tool

    need_module("jupyterhub")
    chp = find_chp()
    if chp is None:
        need_tool("configurable-http-proxy (npm install --prefix .ci/node configurable-http-proxy)")
    assert chp is not None
    work = tmp_path_factory.mktemp("hub")
    strict = work / "strict.toml"
    strict.write_text('name = "hardware-only"\nallow_simulated = false\n')
    spawner: dict[str, Any] = {
        "remote_hosts": ["127.0.0.1"],
        "ssh_port": sshd.port,
        "ssh_user": sshd.user,
        **sim_guest_traits(sshd),
        "profile_list": [
            {"slug": "sim", "display_name": "Simulated CVM", "default": True},
            {"slug": "strict", "display_name": "Hardware TEE only", "policy": str(strict)},
        ],
        "args": ["--allow-root"] if os.geteuid() == 0 else [],
    }
    token = os.urandom(16).hex()
    config = hub_config(work=work, token=token, spawner=spawner, chp=chp, extra=NO_ALLOW_ROOT_FOR_CAROL)
    hub = Hub(work, config, token).start()
    for name in USERS:
        hub.request("POST", f"/hub/api/users/{name}")
    try:
        yield hub
    finally:
        for name in USERS:
            try:
                hub.request("DELETE", f"/hub/api/users/{name}/server", timeout=30)
            except OSError:
                pass
        hub.stop()
        for pid in guest_servers():  # started by this test session's agents: ours to end
            os.killpg(pid, signal.SIGKILL)


def user_token(hub: Hub, name: str) -> str:
    answer = hub.request("POST", f"/hub/api/users/{name}/tokens", {"note": "test", "expires_in": 3600})
    assert answer.status == 201, answer.body
    return str(answer.json()["token"])


def spawn(hub: Hub, name: str, token: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    answer = hub.request("POST", f"/hub/api/users/{name}/server", options, token=token, timeout=120)
    if answer.status >= 400:
        return [{"failed": True, "message": answer.json().get("message", "")}]
    if answer.status == 201:
        return [{"ready": True, "message": "ready at once"}]
    return list(hub.events(name, token=token))


def server_state(hub: Hub, name: str) -> dict[str, Any]:
    model = hub.request("GET", f"/hub/api/users/{name}").json()
    server = (model.get("servers") or {}).get("")
    return server or {}


def status_through_proxy(hub: Hub, name: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{hub.url}/user/{name}/api/status")
    req.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        import json

        return dict(json.loads(resp.read()))


def test_refusing_policy_names_the_rule_and_leaves_nothing(hub: Hub) -> None:
    token = user_token(hub, "bob")
    events = spawn(hub, "bob", token, {"profile": "strict"})
    last = events[-1]
    assert last.get("failed"), events
    # One sentence, then each failed rule on its own line: in the failure and in progress().
    sentence, *rules = last["message"].split("\n")
    assert sentence == (
        "Spawn failed: The confidential VM 127.0.0.1 was not used: "
        "policy 'hardware-only' refused the sim-snp TEE."
    )
    assert rules and all(r.startswith("- ") for r in rules), last["message"]
    assert any(r.startswith("- allow_simulated: expected a hardware TEE") for r in rules), rules
    # The spawn pending page shows html_message: the sentence, then the rules as an escaped list.
    assert "<ul><li>allow_simulated: expected a hardware TEE" in last["html_message"]
    # progress() sent the refusal with its rules too (the Hub replays only the failure to a
    # reader that came after it, so the spawner's own event is also read from the Hub's log).
    for refused in [e for e in events if str(e.get("message", "")).startswith("Refused: ")]:
        assert refused["message"].split("\n")[1:] == rules
        assert [f"- {r}" for r in refused["rules"]] == rules
    assert "Refused: The confidential VM 127.0.0.1 was not used" in hub.log_tail(20000)
    assert re.search(r"\n\s*- allow_simulated: expected a hardware TEE", hub.log_tail(20000))
    wait_for(lambda: not guest_agents(), what="the refused guest agent to exit")
    assert guest_servers() == []
    assert server_state(hub, "bob") == {}


def test_server_that_exits_while_starting_names_the_cause(hub: Hub) -> None:
    if os.geteuid() != 0:
        pytest.skip("the single-user server refuses to start only as root (this sshd is not root)")
    token = user_token(hub, "carol")
    events = spawn(hub, "carol", token, {})
    last = events[-1]
    assert last.get("failed"), events
    # The line that explains the exit (error level), not the server's last or first line.
    assert "Running as root is not recommended. Use --allow-root to bypass." in last["message"], last[
        "message"
    ]
    assert "Skipped non-installed" not in last["message"]
    assert last["message"].startswith(
        "Spawn failed: The server did not start in the confidential VM 127.0.0.1"
    )
    wait_for(lambda: not guest_servers(), what="the failed server to be gone")
    assert server_state(hub, "carol") == {}


def test_spawn_progress_proxy_restart_and_stop(hub: Hub) -> None:
    token = user_token(hub, "alice")
    events = spawn(hub, "alice", token, {})
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), f"{messages}\n{hub.log_tail()}"
    assert any(m.startswith("Connecting to the confidential VM") for m in messages)
    assert any(m.startswith("Attesting 127.0.0.1") for m in messages)
    verified = [m for m in messages if m.startswith("Verified under policy simulated-demo")]
    assert verified, messages
    assert "sim-snp" in verified[0]
    assert "SIMULATED" in verified[0]
    assert any("Starting jupyterhub-singleuser" in m for m in messages)

    status = status_through_proxy(hub, "alice", token)
    assert "started" in status
    state = server_state(hub, "alice")["state"]
    pid = state["pid"]
    assert state["host"] == "127.0.0.1"
    assert len(state["evidence_sha256"]) == 64
    assert guest_servers() == [pid]
    env = procs.environ(pid)
    assert b"JUPYTER_CC_CONFIDENTIAL=1" in env
    # The token reached the server through the agent's stdin only: not on any command line.
    token_var = next(v for v in env.split(b"\0") if v.startswith(b"JUPYTERHUB_API_TOKEN="))
    secret = token_var.split(b"=", 1)[1]
    assert secret
    assert all(secret not in procs.cmdline(p) for p in procs.pids())
    runtime = Path(os.environ["JUPYTER_DATA_DIR"]) / "runtime" / "jupyter-cc-servers"
    assert oct(runtime.stat().st_mode & 0o777) == "0o700"
    assert all(secret not in f.read_bytes() for f in runtime.rglob("*") if f.is_file())

    # Restart the Hub: the server stays, the new Hub attests again and re-attaches.
    hub.stop()
    wait_for(lambda: not guest_agents(), what="the old agent connection to end")
    assert guest_servers() == [pid]
    hub.start()
    wait_for(lambda: server_state(hub, "alice").get("ready") is True, what="the server to be found again")
    new_state = server_state(hub, "alice")["state"]
    assert new_state["pid"] == pid
    assert "started" in status_through_proxy(hub, "alice", token)
    assert "re-attached to server" in hub.log_tail(20000)

    # Stop through the API: the remote server and its forward are gone.
    answer = hub.request("DELETE", "/hub/api/users/alice/server", token=token)
    assert answer.status in (202, 204)
    wait_for(lambda: server_state(hub, "alice") == {}, what="the server to stop")
    wait_for(lambda: not guest_servers(), what="the remote server to end")
    wait_for(lambda: not guest_agents(), what="the agent to exit")
    assert not list(runtime.iterdir())


def test_agent_server_requests_refuse_bad_input(tmp_path: Path) -> None:
    agent = Agent(tee="sim")
    bad_name = agent.handle({"op": "start_server", "argv_name": "bash", "env": {}})
    assert bad_name["ok"] is False
    assert "argv_name" in bad_name["error"]
    missing = agent.handle({"op": "attach", "server_id": "0" * 32})
    assert missing["ok"] is False
    assert missing["check"] == "server"
    assert agent.handle({"op": "attach", "server_id": "../etc"})["check"] == "input"
    agent.kernel.stop(now=True)


# --- pattern 2: confidential kernels for ordinary servers ------------------------------------


def test_confidential_kernels_writes_specs_and_environment(tmp_path: Path) -> None:
    need_module("jupyterhub")
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets.config import Config

    from jupyter_cc.hub import confidential_kernels

    c = Config()
    c.Spawner.environment = {"JUPYTER_PATH": "/srv/other", "KEEP": "1"}
    config = {"host": "cvm.example", "tee": "sim", "policy": str(simulated_policy_path())}
    specs = confidential_kernels(c, {"cc-prod": config}, folder=str(tmp_path / "share"))
    assert c.Spawner.environment == {
        "JUPYTER_PATH": f"{tmp_path / 'share'}{os.pathsep}/srv/other",
        "KEEP": "1",
    }
    found = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "kernels")]).get_kernel_spec("cc-prod")
    provisioner = found.metadata["kernel_provisioner"]
    assert provisioner["provisioner_name"] == "confidential-provisioner"
    assert provisioner["config"]["host"] == "cvm.example"
    assert specs["cc-prod"]["interrupt_mode"] == "message"


# --- pattern 3: KubeSpawner manifests ----------------------------------------------------------

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: "not-a-token"}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: jhub}}]
current-context: nowhere
"""
CCE = "cGFja2FnZSBwb2xpY3kKZGVmYXVsdCBhbGxvdyA6PSB0cnVl"  # base64 of a tiny Rego policy


async def render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles: list[Any], slug: str) -> Any:
    """The pod KubeSpawner would create for ``slug``, built by KubeSpawner itself (no cluster)."""
    need_module("kubespawner")
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner

    from jupyter_cc.hub.kubernetes import modify_pod_hook

    # Read once at import: point it at the kubeconfig that leads nowhere whatever ran first.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    spawner = KubeSpawner(_mock=True, profile_list=profiles, image="quay.io/jupyter/base-notebook:2025-01-01")
    try:
        spawner.api_token = "per-spawn-secret"
        spawner.user_options = {"profile": slug}
        await spawner.load_user_options()
        pod = await spawner.get_pod_manifest()
        return modify_pod_hook(spawner, pod)
    finally:
        await spawner.api.api_client.close()


def _broker_cert() -> str:
    """The PEM certificate of a broker identity made for these tests (what a pod pins)."""
    import tempfile

    from jupyter_cc.kbs.tls import ensure_identity

    return ensure_identity(Path(tempfile.mkdtemp())).cert_path.read_text()


def _profiles() -> list[dict[str, Any]]:
    from jupyter_cc.hub.kubernetes import COCO_RUNTIME_CLASSES, aci_profile, coco_profile

    out = [aci_profile("Confidential ACI", cce_policy=CCE, slug="aci", identity="/subscriptions/x/uami")]
    out += [
        coco_profile(rc, runtime_class=rc, kbs="kbs://kbs.example:8085", kbs_cert=_broker_cert(), slug=rc)
        for rc in COCO_RUNTIME_CLASSES
    ]
    return out


async def test_aci_profile_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import hashlib

    from jupyter_cc.hub.kubernetes import ACI_CCE_POLICY, ACI_IDENTITY, PER_SPAWN_ANNOTATION, aci_policy_toml
    from jupyter_cc.policy import Policy

    pod = await render(tmp_path, monkeypatch, _profiles(), "aci")
    annotations = pod.metadata.annotations
    assert annotations[ACI_CCE_POLICY] == CCE
    assert annotations[ACI_IDENTITY] == "/subscriptions/x/uami"
    assert pod.spec.node_selector == {"virtualization": "virtualnode2"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
        ("virtual-kubelet.io/provider", "Exists", "NoSchedule")
    ]
    assert pod.spec.runtime_class_name is None
    (container,) = pod.spec.containers
    assert container.image == "quay.io/jupyter/base-notebook:2025-01-01"
    assert container.resources.limits["cpu"] == 4.0
    assert container.resources.requests["memory"] == 16 * 1024**3
    host_data = hashlib.sha256(base64.b64decode(CCE)).hexdigest()
    assert {e.name: e.value for e in container.env}["JUPYTER_CC_HOST_DATA"] == host_data
    assert "JUPYTERHUB_API_TOKEN" in annotations[PER_SPAWN_ANNOTATION].split(",")
    assert "per-spawn-secret" not in str(annotations)
    policy = Policy.from_toml(aci_policy_toml("aci-prod", CCE))
    assert policy.snp_host_data == host_data
    assert policy.name == "aci-prod"


@pytest.mark.parametrize(
    "runtime_class",
    ["kata-qemu-snp", "kata-qemu-tdx", "kata-qemu-nvidia-gpu-snp", "kata-qemu-nvidia-gpu-tdx"],
)
async def test_coco_profile_manifest(
    runtime_class: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import gzip

    from jupyter_cc.hub.kubernetes import COCO_INITDATA

    pod = await render(tmp_path, monkeypatch, _profiles(), runtime_class)
    assert pod.spec.runtime_class_name == runtime_class
    assert pod.spec.node_selector is None
    initdata = gzip.decompress(base64.b64decode(pod.metadata.annotations[COCO_INITDATA])).decode()
    assert 'url = "https://kbs.example:8085"' in initdata  # the broker is HTTPS, its certificate pinned
    assert initdata.count("-----BEGIN CERTIFICATE-----") == 2
    assert '"aa.toml"' in initdata
    assert '"cdh.toml"' in initdata
    (container,) = pod.spec.containers
    env = {e.name: e.value for e in container.env}
    assert env["JUPYTER_CC_TEE"] == runtime_class.rsplit("-", 1)[1]
    gpus = container.resources.limits.get("nvidia.com/pgpu")
    assert gpus == ("1" if "gpu" in runtime_class else None)


async def test_hook_refuses_a_pod_that_lost_its_runtime_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_cc.hub.kubernetes import ConfidentialPodError, modify_pod_hook

    pod = await render(tmp_path, monkeypatch, _profiles(), "kata-qemu-snp")
    pod.spec.runtime_class_name = None  # what a Helm chart dropping extraPodConfig leaves
    with pytest.raises(ConfidentialPodError, match="runtime class None"):
        modify_pod_hook(None, pod)


def test_profile_helpers_refuse_unsafe_input() -> None:
    from jupyter_cc.errors import InputError
    from jupyter_cc.hub.kubernetes import aci_profile, coco_profile

    with pytest.raises(InputError, match="needs its CCE policy"):
        aci_profile("x", cce_policy="")
    with pytest.raises(InputError, match="is not one of"):
        coco_profile("x", runtime_class="kata-cc-isolation", kbs="kbs://k:1")
    with pytest.raises(InputError, match="is not a kbs"):
        coco_profile("x", kbs="ftp://k")
