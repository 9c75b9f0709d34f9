"""One confidential pod's life through the Kubernetes API: create, wait until it runs, delete.

Used by the ``confidential-pod`` provisioner (:mod:`jupyter_cc.pod_provisioner`, a kernel per pod,
the way Enterprise Gateway launches kernels in pods) and, for its fault sentences, by
:class:`~jupyter_cc.hub.kube_spawner.AttestedKubeSpawner`. The pod spec comes from the profile
builders of :mod:`jupyter_cc.hub.kubernetes` (:func:`~jupyter_cc.hub.kubernetes.aci_profile`,
:func:`~jupyter_cc.hub.kubernetes.coco_profile`) and is checked by its
:func:`~jupyter_cc.hub.kubernetes.modify_pod_hook` before it is created, so a kernel pod carries
exactly the runtime class / virtual-node selector and CCE policy or init-data a Hub pod would.

The pod's spec holds no secret: its command is the agent transport
(``jupyter-cc guest serve-transport``), its environment the profile's values and the client's
*public* key. The kernel's HMAC key is made by the agent inside the TEE after attestation.

A pod that cannot run is one :class:`PodError` sentence naming the pod and what to do: stuck in
Pending past the start timeout (with the last warning event), evicted, an image that cannot be
pulled, a container that exited. kubernetes_asyncio is imported only when a pod is made, so the
rest of jupyter-cc imports without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyter_cc.errors import CCError

__all__ = [
    "IMAGE_PULL_REASONS",
    "KernelPod",
    "PodError",
    "RunningPod",
    "pending_error",
    "pod_fault",
    "pod_manifest",
]

log = logging.getLogger(__name__)

#: Container waiting reasons that mean the image will not come (the kubelet retries forever).
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
#: Other waiting reasons that will not resolve by waiting.
STUCK_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
MANAGED_BY = {"app.kubernetes.io/managed-by": "jupyter-cc", "app.kubernetes.io/component": "kernel"}
KERNEL_LABEL = "jupyter-cc.io/kernel-id"


class PodError(CCError):
    """A confidential pod did not run (Pending too long, evicted, image not pulled, API refusal)."""

    check = "pod"


# --- reading a pod's state (plain dicts, camelCase, as the API and KubeSpawner's reflector hold them)


def _waiting(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(container, reason, message) of the first container waiting for a reason that will not pass."""
    status = pod.get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in IMAGE_PULL_REASONS or reason in STUCK_REASONS:
            return (
                str(container.get("image") or container.get("name") or "?"),
                reason,
                str(waiting.get("message") or ""),
            )
    return None


def pod_fault(pod: Mapping[str, Any]) -> PodError | None:
    """The error for a pod that will not run as it is, or None while it may still start or runs.

    Evicted (or otherwise Failed/Succeeded before it served), and containers whose image cannot be
    pulled or whose config is broken, are final: waiting longer would only use the start timeout.
    """
    name = str((pod.get("metadata") or {}).get("name") or "?")
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        reason = str(status.get("reason") or "")
        detail = str(status.get("message") or "").rstrip(".")
        if reason == "Evicted":
            return PodError(
                f"the pod {name} was evicted by its node ({detail or 'no reason given'})",
                hint="start the kernel again, and if it recurs lower its resources or give the node more",
            )
        return PodError(
            f"the pod {name} stopped ({phase}{': ' + reason if reason else ''}) before its agent answered",
            hint=f"see kubectl logs {name} (the image must run jupyter-cc guest serve-transport)",
        )
    waiting = _waiting(pod)
    if waiting is None:
        return None
    image, reason, message = waiting
    if reason in IMAGE_PULL_REASONS:
        return PodError(
            f"the pod {name} cannot pull its image {image} ({reason}{': ' + message if message else ''})",
            hint="check the image name and tag and the registry's pull secret (imagePullSecrets)",
        )
    return PodError(
        f"the pod {name} cannot start its container ({reason}{': ' + message if message else ''})",
        hint=f"see kubectl describe pod {name}",
    )


def pending_error(name: str, timeout: float, events: Sequence[Mapping[str, Any]]) -> PodError:
    """The error for a pod still not running after ``timeout`` seconds, with its last warning."""
    warnings = [e for e in events if e.get("type") == "Warning"] or list(events)
    last = (
        f"; its last event: {warnings[-1].get('reason')}: {warnings[-1].get('message')}" if warnings else ""
    )
    return PodError(
        f"the pod {name} was still not running after {timeout:g} seconds{last}",
        hint=(
            "check that the cluster has a node for its runtime class or virtual node,"
            " or raise pod_start_timeout"
        ),
    )


# --- the pod's manifest


def _container_resources(kso: Mapping[str, Any]) -> dict[str, Any]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if kso.get("cpu_limit") is not None:
        limits["cpu"] = f"{kso['cpu_limit']:g}"
    if kso.get("cpu_guarantee") is not None:
        requests["cpu"] = f"{kso['cpu_guarantee']:g}"
    if kso.get("mem_limit"):
        limits["memory"] = str(kso["mem_limit"])
    if kso.get("mem_guarantee"):
        requests["memory"] = str(kso["mem_guarantee"])
    limits.update({k: str(v) for k, v in (kso.get("extra_resource_limits") or {}).items()})
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def pod_manifest(
    name: str,
    *,
    profile: Mapping[str, Any],
    command: list[str],
    env: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    image: str = "",
) -> dict[str, Any]:
    """The pod (a plain dict, as the API takes it) for a profile of :mod:`jupyter_cc.hub.kubernetes`.

    ``profile`` is a ``profile_list`` entry (or its ``kubespawner_override``); its node selector,
    tolerations, annotations, environment, resources and ``extra_pod_config`` (the runtime class)
    are applied as KubeSpawner would, then :func:`~jupyter_cc.hub.kubernetes.modify_pod_hook`
    refuses a pod that lost its protection.

    Raises:
        ConfidentialPodError: the pod would not be confidential; InputError: no image.
    """
    from jupyter_cc.errors import InputError
    from jupyter_cc.hub.kubernetes import modify_pod_hook

    kso: Mapping[str, Any] = profile.get("kubespawner_override", profile)
    image = image or str(kso.get("image") or "")
    if not image:
        raise InputError("the confidential pod has no image", hint="set image in the kernelspec's config")
    container: dict[str, Any] = {
        "name": "kernel",
        "image": image,
        "command": list(command),
        "env": [{"name": k, "value": str(v)} for k, v in {**(kso.get("environment") or {}), **env}.items()],
        "resources": _container_resources(kso),
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if kso.get("node_selector"):
        spec["nodeSelector"] = dict(kso["node_selector"])
    if kso.get("tolerations"):
        spec["tolerations"] = [dict(t) for t in kso["tolerations"]]
    spec.update(kso.get("extra_pod_config") or {})
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {**MANAGED_BY, **(labels or {})},
            "annotations": dict(kso.get("extra_annotations") or {}),
        },
        "spec": spec,
    }
    modify_pod_hook(None, pod)
    return pod


# --- the API


@dataclass
class RunningPod:
    """What the provisioner needs of a pod that runs: where to reach it, what it was deployed with."""

    name: str
    ip: str
    annotations: dict[str, str] = field(default_factory=dict)


class KernelPod:
    """One pod through kubernetes_asyncio: :meth:`create`, :meth:`wait_running`, :meth:`delete`.

    Each call opens its own API client and closes it (no session outlives a call, so a kernel that
    lives for days holds no idle connection and a Jupyter server that exits leaks none).
    ``kube_config``: a kubeconfig path; empty means in-cluster credentials when the process runs in
    a pod (``KUBERNETES_SERVICE_HOST``), else ``$KUBECONFIG`` or ``~/.kube/config``.
    """

    def __init__(self, name: str, namespace: str, *, kube_config: str = "", context: str = "") -> None:
        self.name = name
        self.namespace = namespace
        self.kube_config = kube_config
        self.context = context
        self.created = False

    async def _client(self) -> Any:
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        if not self.kube_config and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=self.kube_config or None,
                context=self.context or None,
                client_configuration=configuration,
            )
        return client.ApiClient(configuration)

    def _api_error(self, action: str, exc: Exception) -> PodError:
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        return PodError(
            f"the cluster refused to {action} the pod {self.name} in namespace {self.namespace}"
            f" ({status or 'no answer'}: {reason})",
            hint="check the kubeconfig or service account and its permission to manage pods there",
        )

    async def create(self, manifest: dict[str, Any]) -> None:
        """Create the pod. Raises PodError: the API refused (409 exists, 422 invalid, 403...)."""
        from kubernetes_asyncio import client

        try:
            async with await self._client() as api:
                await client.CoreV1Api(api).create_namespaced_pod(self.namespace, manifest)  # type: ignore[arg-type]
        except CCError:
            raise
        except Exception as exc:
            raise self._api_error("create", exc) from None
        self.created = True

    async def _read(self, api: Any) -> dict[str, Any]:
        from kubernetes_asyncio import client

        pod = await client.CoreV1Api(api).read_namespaced_pod(self.name, self.namespace)
        out: dict[str, Any] = api.sanitize_for_serialization(pod)
        return out

    async def _events(self, api: Any) -> list[dict[str, Any]]:
        from kubernetes_asyncio import client

        try:
            answer = await client.CoreV1Api(api).list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={self.name}"
            )
        except Exception:  # events are a courtesy in the message: their absence changes nothing
            return []
        events = api.sanitize_for_serialization(answer).get("items") or []
        return [e for e in events if (e.get("involvedObject") or {}).get("name") == self.name]

    async def wait_running(self, timeout: float, interval: float = 0.25) -> RunningPod:
        """Poll until the pod is Running with an IP; fail fast on a final fault.

        Raises:
            PodError: a fault (:func:`pod_fault`), the pod vanished, the API failed, or ``timeout``.
        """
        deadline = time.monotonic() + timeout
        try:
            async with await self._client() as api:
                while True:
                    pod = await self._read(api)
                    fault = pod_fault(pod)
                    if fault is not None:
                        raise fault
                    status = pod.get("status") or {}
                    if status.get("phase") == "Running" and status.get("podIP"):
                        annotations = (pod.get("metadata") or {}).get("annotations") or {}
                        return RunningPod(self.name, str(status["podIP"]), dict(annotations))
                    if time.monotonic() >= deadline:
                        raise pending_error(self.name, timeout, await self._events(api))
                    await asyncio.sleep(interval)
        except CCError:
            raise
        except Exception as exc:
            raise self._api_error("read", exc) from None

    async def delete(self) -> bool:
        """Delete the pod now (grace 0); True if it was deleted or already gone. Never raises:
        a pod that cannot be deleted is logged with the command that deletes it."""
        if not self.created:
            return True
        from kubernetes_asyncio import client

        try:
            async with await self._client() as api:
                await client.CoreV1Api(api).delete_namespaced_pod(
                    self.name, self.namespace, grace_period_seconds=0
                )
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                self.created = False
                return True
            log.error(
                "the pod %s could not be deleted (%s); delete it with kubectl delete pod -n %s %s",
                self.name,
                getattr(exc, "reason", None) or exc.__class__.__name__,
                self.namespace,
                self.name,
            )
            return False
        self.created = False
        return True
