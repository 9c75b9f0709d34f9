"""The confidential pod's manifest and fault reading (jupyter_cc.remote.pod), without a cluster."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from jupyter_cc.hub.kubernetes import ACI_CCE_POLICY, ConfidentialPodError, aci_profile, coco_profile
from jupyter_cc.remote.pod import pending_error, pod_fault, pod_manifest

REGO = base64.b64encode(b'package policy\n\napi_version := "0.10.0"\n').decode()


def _pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "jupyter-cc-kernel-1"}, "status": status}


def test_an_aci_manifest_selects_the_virtual_node_and_carries_no_secret() -> None:
    pod = pod_manifest(
        "k1",
        profile=aci_profile("k", cce_policy=REGO, image="img:1"),
        command=["jupyter-cc", "guest", "serve-transport"],
        env={"JUPYTER_CC_AUTHORIZED_KEYS": "ssh-ed25519 AAAA hub"},
    )
    assert pod["metadata"]["annotations"][ACI_CCE_POLICY] == REGO
    assert pod["spec"]["nodeSelector"] == {"virtualization": "virtualnode2"}
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "img:1"
    assert {e["name"] for e in container["env"]} == {"JUPYTER_CC_AUTHORIZED_KEYS", "JUPYTER_CC_HOST_DATA"}
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16G"}


def test_a_coco_manifest_has_its_runtime_class() -> None:
    profile = coco_profile("k", kbs="https://trustee.example:8080", image="img:1")
    pod = pod_manifest("k1", profile=profile, command=["x"], env={})
    assert pod["spec"]["runtimeClassName"] == "kata-qemu-snp"


def test_a_profile_that_lost_its_policy_is_refused_before_the_pod_exists() -> None:
    profile = aci_profile("k", cce_policy=REGO, image="img:1")
    profile["kubespawner_override"]["extra_annotations"].pop(ACI_CCE_POLICY)
    with pytest.raises(ConfidentialPodError):
        pod_manifest("k1", profile=profile, command=["x"], env={})


def test_final_states_are_faults_and_waiting_ones_are_not() -> None:
    assert pod_fault(_pod({"phase": "Pending"})) is None
    assert pod_fault(_pod({"phase": "Running", "podIP": "10.0.0.1"})) is None
    evicted = pod_fault(_pod({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}))
    assert evicted is not None and "evicted" in evicted.diagnostics()
    waiting = {"image": "img:1", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
    pull = pod_fault(_pod({"phase": "Pending", "containerStatuses": [waiting]}))
    assert pull is not None and "cannot pull its image img:1 (ErrImagePull: not found)" in pull.diagnostics()
    creating = {"image": "img:1", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_fault(_pod({"phase": "Pending", "containerStatuses": [creating]})) is None


def test_a_pending_pod_names_its_last_warning() -> None:
    events = [
        {"type": "Normal", "reason": "Scheduled", "message": "ok"},
        {"type": "Warning", "reason": "FailedScheduling", "message": "0/3 nodes are available"},
    ]
    text = pending_error("p1", 5, events).diagnostics()
    assert text.startswith(
        "the pod p1 was still not running after 5 seconds; its last event: FailedScheduling"
    )
