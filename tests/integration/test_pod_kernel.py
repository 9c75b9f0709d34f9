"""The ``confidential-pod`` kernelspec against a local HTTPS Kubernetes API (tests/support/fake_kube.py)
through the real kubernetes_asyncio client: a pod per kernel, running the agent transport with the
simulated TEE, attested (HOST_DATA against the CCE policy the provisioner deployed) before the
kernel starts.

Faults first: a pod stuck in Pending, evicted, or whose image cannot be pulled; a host that launched
another CCE policy than the pod names; an agent that never answers. Each is one sentence naming the
pod and what to do, the pod is deleted, and the kernel was never started (so nothing of the user's
was sent). Then jupyter_kernel_test's suite through the agent transport, and shutdown deletes the pod.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.cli import main
from jupyter_cc.kernelspec import POD_PROVISIONER_NAME, simulated_policy_path
from tests.integration import test_kernel_suite as suite
from tests.integration.test_kube_spawner import HANG, OTHER, REGO, KubeThread, _hub_key
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "kernels"


def register_pod_provisioner() -> None:
    """``confidential-pod`` is loadable through the installed entry point (pyproject.toml)."""
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    factory = KernelProvisionerFactory.instance()
    assert POD_PROVISIONER_NAME in factory.provisioners, "pip install -e . registers confidential-pod"
    assert (
        factory.provisioners[POD_PROVISIONER_NAME].value
        == "jupyter_cc.pod_provisioner:ConfidentialPodProvisioner"
    )


def install_pod_kernelspec(root: Path, kube: KubeThread, name: str, *timeouts: str) -> int:
    """Install kernelspec ``name`` under ``root/prefix`` with the CLI, as a user would; its port."""
    policy = root / "kernel.rego.b64"
    policy.write_text(base64.b64encode(REGO).decode())
    key = root / "hub_agent_ed25519"
    if not key.exists():
        _hub_key(root)
    port = free_port()
    status = main(
        [
            "kernelspec",
            "install-pod",
            name,
            "--platform",
            "aci",
            "--image",
            "example.azurecr.io/cc-kernel:1",
            "--cce-policy",
            str(policy),
            "--namespace",
            NAMESPACE,
            "--identity-file",
            str(key),
            "--policy",
            str(simulated_policy_path()),
            "--tee",
            "sim",
            "--kubeconfig",
            str(kube.kube.kubeconfig(root / "kubeconfig")),
            "--agent-port",
            str(port),
            *timeouts,
            "--prefix",
            str(root / "prefix"),
        ]
    )
    assert status == 0
    return port


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, sim_tee: Any) -> Iterator[KubeThread]:
    root = tmp_path_factory.mktemp("pod-faults")
    kube = KubeThread(root)
    install_pod_kernelspec(root, kube, "cc-pod-faults", "--pod-start-timeout", "8", "--connect-timeout", "4")
    register_pod_provisioner()
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root / "prefix" / "share" / "jupyter")
    try:
        yield kube
    finally:
        kube.stop()
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


async def _refused(kernel_name: str) -> str:
    """Start a kernel that must be refused; the refusal's text."""
    from jupyter_cc.provisioner import KernelRefusedError

    km = AsyncKernelManager(kernel_name=kernel_name)
    with pytest.raises(KernelRefusedError) as info:
        await km.start_kernel()
    await km.cleanup_resources()
    return str(info.value.log_message)


def _check_refused(kube: KubeThread, message: str) -> str:
    """The refusal is one sentence naming the pod; the pod is gone; its spec held nothing secret."""
    created = kube.kube.created[-1]
    name = str(created["metadata"]["name"])
    assert message.startswith("Confidential kernel not started: "), message
    assert name in message, message
    assert "\n" not in message, message
    assert name in kube.kube.deleted and name not in kube.kube.pods
    env = {e["name"] for e in created["spec"]["containers"][0]["env"]}
    assert env == {"JUPYTER_CC_AUTHORIZED_KEYS", "JUPYTER_CC_HOST_DATA"}, env
    return name


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("pending", "was still not running after 8 seconds; its last event: FailedScheduling"),
        ("image-pull", "cannot pull its image example.azurecr.io/cc-kernel:1 (ImagePullBackOff"),
        ("evicted", "was evicted by its node (The node was low on resource: memory"),
    ],
)
def test_a_pod_that_cannot_run_is_one_sentence_and_deleted(faulty: KubeThread, fault: str, says: str) -> None:
    faulty.kube.fault = fault
    try:
        message = asyncio.run(_refused("cc-pod-faults"))
    finally:
        faulty.kube.fault = None
    _check_refused(faulty, message)
    assert "pod check failed: the pod jupyter-cc-kernel-" in message and says in message, message


def test_a_pod_launched_under_another_cce_policy_is_refused_and_deleted(faulty: KubeThread) -> None:
    faulty.kube.host_data = hashlib.sha256(OTHER).digest()
    try:
        message = asyncio.run(_refused("cc-pod-faults"))
    finally:
        faulty.kube.host_data = None
    _check_refused(faulty, message)
    assert "binding check failed" in message, message
    assert hashlib.sha256(REGO).hexdigest() in message and hashlib.sha256(OTHER).hexdigest() in message


def test_a_coco_pod_whose_init_data_is_not_the_bound_one_is_refused(
    faulty: KubeThread, tmp_path: Path
) -> None:
    from jupyter_cc.kbs.tls import ensure_identity

    cert = ensure_identity(tmp_path / "broker").cert_path
    prefix = Path(os.environ["JUPYTER_PATH"]).parent.parent
    status = main(
        [
            "kernelspec",
            "install-pod",
            "cc-pod-coco",
            "--platform",
            "coco",
            "--runtime-class",
            "kata-qemu-snp",
            "--kbs",
            "kbs://kbs.example:8085",
            "--kbs-cert",
            str(cert),
            "--image",
            "example.azurecr.io/cc-kernel:1",
            "--namespace",
            NAMESPACE,
            "--identity-file",
            str(prefix.parent / "hub_agent_ed25519"),
            "--policy",
            str(simulated_policy_path()),
            "--tee",
            "sim",
            "--kubeconfig",
            str(prefix.parent / "kubeconfig"),
            "--agent-port",
            str(free_port()),
            "--connect-timeout",
            "4",
            "--prefix",
            str(prefix),
        ]
    )
    assert status == 0
    faulty.kube.host_data = hashlib.sha256(b"some other init-data").digest()
    try:
        message = asyncio.run(_refused("cc-pod-coco"))
    finally:
        faulty.kube.host_data = None
    created = faulty.kube.created[-1]
    assert created["spec"]["runtimeClassName"] == "kata-qemu-snp"
    name = created["metadata"]["name"]
    assert "binding check failed" in message and "init-data" in message and name in message, message
    assert name in faulty.kube.deleted and name not in faulty.kube.pods


def test_a_pod_whose_agent_never_answers_is_refused_and_deleted(faulty: KubeThread) -> None:
    faulty.kube.replace_command = [sys.executable, "-c", HANG]
    try:
        message = asyncio.run(_refused("cc-pod-faults"))
    finally:
        faulty.kube.replace_command = None
    _check_refused(faulty, message)
    assert "ssh check failed" in message, message


async def _start_restart_stop(kube: KubeThread) -> tuple[str, str]:
    km = AsyncKernelManager(kernel_name="cc-pod-faults")
    await km.start_kernel()
    try:
        first = str(kube.kube.created[-1]["metadata"]["name"])
        await km.restart_kernel()
        second = str(kube.kube.created[-1]["metadata"]["name"])
        assert list(kube.kube.pods) == [second]
    finally:
        await km.shutdown_kernel()
    return first, second


def test_restart_makes_a_new_pod_and_shutdown_deletes_it(faulty: KubeThread) -> None:
    first, second = asyncio.run(_start_restart_stop(faulty))
    assert first != second
    assert first in faulty.kube.deleted and second in faulty.kube.deleted
    assert not faulty.kube.pods


class ConfidentialPodKernelSuite(suite.ConfidentialKernelSuite):
    """jupyter_kernel_test's checks through a pod: created, attested, the agent transport's forwards."""

    kernel_name = "cc-pod-suite"
    _kube: KubeThread

    @classmethod
    def setUpClass(cls) -> None:
        from jupyter_cc.attest.sim import SimulatedTee

        SimulatedTee.load_or_create()  # before the pod's agent, so neither races to create it
        cls._tmp = tempfile.TemporaryDirectory()
        root = Path(cls._tmp.name)
        cls._kube = KubeThread(root)
        install_pod_kernelspec(root, cls._kube, cls.kernel_name, "--pod-start-timeout", "60")
        register_pod_provisioner()
        cls._old_path = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = str(root / "prefix" / "share" / "jupyter")
        super(suite.ConfidentialKernelSuite, cls).setUpClass()
        pods = list(cls._kube.kube.pods.values())
        assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running", pods

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super(suite.ConfidentialKernelSuite, cls).tearDownClass()
            assert not cls._kube.kube.pods, "shutdown left the kernel's pod behind"
            assert len(cls._kube.kube.deleted) == 1
        finally:
            cls._kube.stop()
            if cls._old_path is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = cls._old_path
            cls._tmp.cleanup()

    def test_the_kernel_runs_in_the_attested_pod(self) -> None:
        created = self._kube.kube.created[-1]
        assert created["metadata"]["annotations"]["microsoft.containerinstance.virtualnode.ccepolicy"]
        assert created["spec"]["nodeSelector"] == {"virtualization": "virtualnode2"}
        reply, output_msgs = self.execute_helper("import os; print(os.environ.get('JUPYTER_CC_FAKE_POD'))")
        assert reply["content"]["status"] == "ok"
        text = "".join(m["content"].get("text", "") for m in output_msgs if m["msg_type"] == "stream")
        assert text.strip() == created["metadata"]["uid"]  # the kernel is the pod's process
