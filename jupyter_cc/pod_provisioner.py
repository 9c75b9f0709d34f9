"""``confidential-pod``: a kernel per confidential pod, started only after the pod attested.

The way Enterprise Gateway launches kernels in pods, with the attestation of
:class:`~jupyter_cc.provisioner.ConfidentialProvisioner` in between. ``launch_kernel``:

1. creates one pod for the kernel through kubernetes_asyncio (in-cluster credentials, or the
   kubeconfig named by ``kube_config`` / ``$KUBECONFIG``), its spec built by the profile helpers of
   :mod:`jupyter_cc.hub.kubernetes`: Confidential ACI (virtual-node selector, toleration, the CCE
   policy annotation) or a CoCo runtime class with init-data. The pod runs the agent transport
   (``jupyter-cc guest serve-transport``); its spec holds the client's public key and no secret;
2. waits until the pod runs, failing fast with one sentence on an eviction or an image that
   cannot be pulled, and after ``pod_start_timeout`` seconds on a pod stuck in Pending;
3. connects to the pod's agent transport (transport ``agent``), attests it under ``policy`` and
   checks that HOST_DATA (or MRCONFIGID) binds the CCE policy or init-data *this provisioner
   deployed*, read back from the API server (:func:`~jupyter_cc.hub.kube_spawner.check_deployment`);
4. starts the kernel through the agent, its ports forwarded over the attested connection.

Any failure deletes the pod, and nothing of the user's (the kernelspec's environment, the
kernel's key) has been sent. Shutdown, and restart, delete the pod too. Configure it in kernel.json
(``jupyter-cc kernelspec install-pod`` writes this)::

    "metadata": {"kernel_provisioner": {"provisioner_name": "confidential-pod",
                  "config": {"platform": "aci", "image": "myacr.azurecr.io/cc-kernel:1",
                             "cce_policy_file": "/etc/jupyter-cc/kernel.rego.b64",
                             "namespace": "kernels", "identity_file": "~/.ssh/cc_agent_ed25519",
                             "policy": "/etc/jupyter-cc/aci.toml"}}}
"""

from __future__ import annotations

import base64
import secrets
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from traitlets import Enum, Float, Integer, Unicode

from jupyter_cc.errors import CCError, InputError
from jupyter_cc.provisioner import NOT_STARTED, ConfidentialProvisioner, KernelRefusedError
from jupyter_cc.remote.attestation import Attestation, PolicyRejectedError
from jupyter_cc.remote.pod import KERNEL_LABEL, KernelPod, PodError, pod_manifest

__all__ = ["POD_PROVISIONER_NAME", "ConfidentialPodProvisioner"]

POD_PROVISIONER_NAME = "confidential-pod"
AUTHORIZED_KEYS_ENV = "JUPYTER_CC_AUTHORIZED_KEYS"  # as jupyter_cc.guest.transport
POD_PREFIX = "jupyter-cc-kernel-"


class ConfidentialPodProvisioner(ConfidentialProvisioner):
    """One attested confidential pod per kernel. Every kernel.json ``config`` key is a traitlet."""

    transport = Enum(["agent"], default_value="agent", config=True, help="always the agent transport")
    platform = Enum(
        ["aci", "coco"], default_value="aci", config=True, help="Confidential ACI virtual nodes, or CoCo"
    )
    image = Unicode("", config=True, help="the pod's image (it must run jupyter-cc guest serve-transport)")
    namespace = Unicode("default", config=True, help="the namespace the kernel pods are created in")
    kube_config = Unicode("", config=True, help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    kube_context = Unicode("", config=True, help="the kubeconfig context (default: its current one)")
    cce_policy_file = Unicode(
        "", config=True, help="aci: the CCE policy (base64, as az confcom acipolicygen prints, or Rego)"
    )
    runtime_class = Unicode("kata-qemu-snp", config=True, help="coco: the runtime class")
    kbs = Unicode("", config=True, help="coco: the key broker the init-data points at (kbs:// or https://)")
    kbs_cert_file = Unicode("", config=True, help="coco: the broker's PEM certificate, pinned in init-data")
    pod_cpu = Float(1.0, config=True, help="CPUs requested and limited")
    pod_memory = Unicode("4G", config=True, help="memory requested and limited")
    agent_port = Integer(2222, config=True, help="the agent transport's TCP port in the pod")
    agent_aa_url = Unicode("", config=True, help="coco: the pod's Attestation Agent REST API")
    pod_start_timeout = Float(
        300.0, config=True, help="seconds the pod may take to run (image pull included)"
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.persist = False  # a pod's kernel ends with its connection: nothing to take back
        self._pod: KernelPod | None = None
        self._annotations: dict[str, str] = {}

    # --- what the pod is given: no secret --------------------------------------------

    def _read(self, path: str, what: str) -> str:
        try:
            return Path(path).expanduser().read_text()
        except OSError as exc:
            raise InputError(f"cannot read the {what} {path} ({exc.strerror})") from None

    def _profile(self) -> dict[str, Any]:
        """The ``jupyter_cc.hub.kubernetes`` profile for the kernelspec's platform settings."""
        from jupyter_cc.attest.pod import cce_policy_rego
        from jupyter_cc.hub.kubernetes import aci_profile, coco_profile

        common: dict[str, Any] = {"image": self.image or None, "cpu": self.pod_cpu, "memory": self.pod_memory}
        if self.platform == "aci":
            if not self.cce_policy_file:
                raise InputError("a confidential ACI kernel needs cce_policy_file in its kernelspec")
            rego = cce_policy_rego(self._read(self.cce_policy_file, "CCE policy").encode())
            return aci_profile("kernel", cce_policy=base64.b64encode(rego).decode(), **common)
        cert = self._read(self.kbs_cert_file, "broker certificate") if self.kbs_cert_file else None
        return coco_profile("kernel", runtime_class=self.runtime_class, kbs=self.kbs, kbs_cert=cert, **common)

    def _public_key(self) -> str:
        if not self.identity_file:
            raise InputError(
                "the confidential-pod kernelspec has no identity_file",
                hint="make a key pair (ssh-keygen -t ed25519) and set identity_file to its private half",
            )
        return self._read(self._expand(self.identity_file) + ".pub", "public key").strip()

    def _command(self) -> list[str]:
        command = ["jupyter-cc", "guest", "serve-transport", "--bind", "0.0.0.0"]  # noqa: S104 - pod network
        command += ["--port", str(self.agent_port), "--tee", self.tee]
        return command + (["--aa-url", self.agent_aa_url] if self.agent_aa_url else [])

    def _manifest(self, name: str) -> dict[str, Any]:
        return pod_manifest(
            name,
            profile=self._profile(),
            command=self._command(),
            env={AUTHORIZED_KEYS_ENV: self._public_key()},
            labels={KERNEL_LABEL: str(self.kernel_id or "")},
        )

    # --- launch ------------------------------------------------------------------------

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Create the pod, wait for it, then attest and start as the base provisioner does; any
        failure deletes the pod."""
        env = kwargs.get("env") or {}
        # A fresh suffix each launch: a restart's new pod must not meet the old one still terminating.
        name = f"{POD_PREFIX}{str(self.kernel_id or uuid.uuid4()).lower()}-{secrets.token_hex(3)}"
        self._pod = KernelPod(
            name, self.namespace, kube_config=self._expand(self.kube_config), context=self.kube_context
        )
        try:
            manifest = self._manifest(name)
            await self._pod.create(manifest)
            running = await self._pod.wait_running(self.pod_start_timeout)
        except CCError as exc:
            await self._delete_pod()
            self.attestation_error = exc.diagnostics()
            message = f"{NOT_STARTED}: {exc.sentence()}"
            self._refused(exc.check, message, env, exc)
            raise KernelRefusedError(message) from None
        except BaseException:
            await self._delete_pod()
            raise
        self.host, self.port, self._annotations = running.ip, int(self.agent_port), running.annotations
        try:
            return await super().launch_kernel(cmd, **kwargs)
        except BaseException:
            await self._delete_pod()
            raise

    def _launch_blocking(self, env: dict[str, str], cwd: str | None) -> KernelConnectionInfo:
        """The base launch; a failed check names the pod (a policy verdict keeps its rules)."""
        try:
            return super()._launch_blocking(env, cwd)
        except PolicyRejectedError:
            raise
        except CCError as exc:
            name = self._pod.name if self._pod else "?"
            hint = None if exc.hint or exc.check == "binding" else self._connect_hint()
            error = PodError(
                f"the pod {name} was not used and is deleted: {exc.diagnostics().rstrip('.')}", hint=hint
            )
            error.check = exc.check
            raise error from None

    def _connect_hint(self) -> str:
        return (
            f"check that the image runs jupyter-cc guest serve-transport on port {self.agent_port}"
            " and that the pod's network lets this server in"
        )

    def _attest_now(self) -> Attestation:
        """Attest, then check that the evidence binds the CCE policy or init-data deployed."""
        from jupyter_cc.hub.kube_spawner import check_deployment

        attestation = super()._attest_now()
        check_deployment(attestation, self._annotations)
        return attestation

    # --- shutdown ----------------------------------------------------------------------

    async def _delete_pod(self) -> None:
        pod, self._pod = self._pod, None
        if pod is not None:
            await pod.delete()

    async def cleanup(self, restart: bool = False) -> None:
        """The base cleanup (connection and forwards), then the pod is deleted (a restart makes a new one)."""
        try:
            await super().cleanup(restart)
        finally:
            await self._delete_pod()

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(pod=self._pod.name if self._pod else None, namespace=self.namespace)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.namespace = provisioner_info.get("namespace", self.namespace)
        name = provisioner_info.get("pod")
        if isinstance(name, str) and name:
            self._pod = KernelPod(name, self.namespace, kube_config=self._expand(self.kube_config))
            self._pod.created = True
