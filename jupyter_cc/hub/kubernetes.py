"""KubeSpawner profiles for confidential pods (pattern 3): confidential ACI and CoCo runtime classes.

KubeSpawner has no runtime-class or CCE-policy trait; everything goes through generic traits
(``extra_pod_config``, ``extra_annotations``, ``node_selector``, ``tolerations``,
``extra_resource_limits``) set per profile in ``profile_list[...]["kubespawner_override"]``, and
:func:`modify_pod_hook` checks the final pod before it is created. No cluster is contacted here.

- :func:`aci_profile`: AKS virtual nodes on confidential Azure Container Instances. The pod
  carries the CCE policy (``az confcom acipolicygen --virtual-node-yaml pod.yaml``) in the
  annotation :data:`ACI_CCE_POLICY`, selects ``virtualization: virtualnode2`` and tolerates
  ``virtual-kubelet.io/provider``. The SHA-256 of the (decoded) policy is what SEV-SNP reports
  as HOST_DATA, so :func:`aci_policy_toml` writes the matching jupyter-cc policy for key release.
- :func:`coco_profile`: upstream Confidential Containers runtime classes (:data:`COCO_RUNTIME_CLASSES`)
  with init-data (annotation :data:`COCO_INITDATA`) pointing the guest's attestation agent and
  confidential data hub at a key broker: the project's ``kbs://`` broker or a Trustee KBS.
- Per-spawn values (:data:`PER_SPAWN_ENV`: the API token, the user name, OAuth ids...) change
  every spawn, while a CCE policy hashes the whole pod. Generate the policy once per profile from
  a rendered pod with these variables allowed by the rules of :func:`cce_env_rules` (regular
  expressions, not values): the policy, hence HOST_DATA, then stays the same for every user and
  spawn. :func:`modify_pod_hook` records their names in :data:`PER_SPAWN_ANNOTATION` and refuses a
  pod that lost its runtime class or policy (a Helm chart that drops ``extra_pod_config``, a
  profile override that replaced the annotations) instead of starting it unprotected.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jupyter_cc.errors import InputError
from jupyter_cc.policy import Policy

__all__ = [
    "ACI_CCE_POLICY",
    "ACI_IDENTITY",
    "COCO_INITDATA",
    "COCO_INITDATA_KEYS",
    "COCO_RUNTIME_CLASSES",
    "PER_SPAWN_ANNOTATION",
    "PER_SPAWN_ENV",
    "ConfidentialPodError",
    "aci_host_data",
    "aci_policy_toml",
    "aci_profile",
    "cce_env_rules",
    "coco_initdata",
    "coco_profile",
    "kbs_cert_sha256",
    "modify_pod_hook",
]

ACI_CCE_POLICY = "microsoft.containerinstance.virtualnode.ccepolicy"
ACI_IDENTITY = "microsoft.containerinstance.virtualnode.identity"
ACI_NODE_SELECTOR = {"virtualization": "virtualnode2"}
ACI_TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
COCO_INITDATA = "io.katacontainers.config.hypervisor.cc_init_data"
COCO_INITDATA_KEYS = (COCO_INITDATA, "io.katacontainers.config.runtime.cc_init_data")
"""The init-data annotation: ``hypervisor`` for kata-qemu runtime classes, ``runtime`` for peer pods."""
COCO_RUNTIME_CLASSES: Mapping[str, str] = {
    "kata-qemu-snp": "snp",
    "kata-qemu-tdx": "tdx",
    "kata-qemu-nvidia-gpu-snp": "snp",
    "kata-qemu-nvidia-gpu-tdx": "tdx",
}
"""Runtime class -> TEE family of the pod VM."""
GPU_RESOURCE = "nvidia.com/pgpu"
PER_SPAWN_ANNOTATION = "jupyter-cc.io/per-spawn-env"
PROFILE_ANNOTATION = "jupyter-cc.io/confidential"
PER_SPAWN_ENV = (
    "JUPYTERHUB_API_TOKEN",
    "JPY_API_TOKEN",
    "JUPYTERHUB_CLIENT_ID",
    "JUPYTERHUB_USER",
    "JUPYTERHUB_SERVER_NAME",
    "JUPYTERHUB_SERVICE_PREFIX",
    "JUPYTERHUB_SERVICE_URL",
    "JUPYTERHUB_OAUTH_CALLBACK_URL",
    "JUPYTERHUB_OAUTH_SCOPES",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
    "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    "JUPYTERHUB_ACTIVITY_URL",
    "JUPYTERHUB_BASE_URL",
    "JUPYTERHUB_HOST",
    "JUPYTERHUB_PUBLIC_URL",
    "JUPYTERHUB_PUBLIC_HUB_URL",
    "JUPYTERHUB_DEFAULT_URL",
    "JUPYTERHUB_ROOT_DIR",
    "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED",
    "JUPYTER_IMAGE",
    "JUPYTER_IMAGE_SPEC",
    "MEM_GUARANTEE",
    "MEM_LIMIT",
    "CPU_GUARANTEE",
    "CPU_LIMIT",
)
"""Environment variables KubeSpawner or JupyterHub set differently for each user or spawn."""


class ConfidentialPodError(InputError):
    """A pod meant to be confidential would not be: refused before it is created."""

    check = "confidential pod"


def _decode_policy(cce_policy: str) -> bytes:
    try:
        return base64.b64decode(cce_policy, validate=True)
    except ValueError:
        raise InputError(
            "the CCE policy is not base64",
            hint="pass the output of az confcom acipolicygen as it is (base64 Rego)",
        ) from None


def aci_host_data(cce_policy: str) -> str:
    """The HOST_DATA (hex SHA-256 of the decoded Rego policy) that SNP reports for this policy."""
    return hashlib.sha256(_decode_policy(cce_policy)).hexdigest()


def aci_policy_toml(name: str, cce_policy: str, *, allow_debug: bool = False) -> str:
    """A jupyter-cc policy accepting only pods that run under this CCE policy (SNP, VMPL 0)."""
    text = (
        f"# Confidential ACI pods whose CCE policy hashes to this HOST_DATA.\n"
        f'name = "{name}"\n'
        f"allow_debug = {'true' if allow_debug else 'false'}\n"
        f'tee = ["snp", "az-snp-vtpm"]\n\n'
        f"[snp]\n"
        f'host_data = "{aci_host_data(cce_policy)}"\n'
        f"vmpl = 0\n"
    )
    Policy.from_toml(text)  # a policy this module writes must be one the verifier reads
    return text


def cce_env_rules(extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Environment rules for ``az confcom acipolicygen`` that let per-spawn values vary."""
    return [{"name": name, "value": ".*", "strategy": "re2"} for name in (*PER_SPAWN_ENV, *extra)]


def _resources(cpu: float | None, memory: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cpu is not None:
        out["cpu_limit"] = out["cpu_guarantee"] = float(cpu)
    if memory is not None:
        out["mem_limit"] = out["mem_guarantee"] = memory
    return out


def aci_profile(
    display_name: str,
    *,
    cce_policy: str,
    slug: str | None = None,
    description: str = "",
    image: str | None = None,
    identity: str | None = None,
    cpu: float | None = 4,
    memory: str | None = "16G",
    default: bool = False,
    override: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``profile_list`` entry for confidential ACI through AKS virtual nodes.

    ``cce_policy`` is the base64 policy from ``az confcom acipolicygen``; an empty policy would
    make the container group non-confidential, so it is refused. ``identity`` is a user-assigned
    managed identity's resource id (for key release from Azure Key Vault).
    """
    if not cce_policy:
        raise InputError(
            "a confidential ACI profile needs its CCE policy",
            hint="an empty policy annotation starts an ordinary, non-confidential container group",
        )
    _decode_policy(cce_policy)
    annotations = {ACI_CCE_POLICY: cce_policy, PROFILE_ANNOTATION: "aci"}
    if identity:
        annotations[ACI_IDENTITY] = identity
    kso: dict[str, Any] = {
        "node_selector": dict(ACI_NODE_SELECTOR),
        "tolerations": [dict(ACI_TOLERATION)],
        "extra_annotations": annotations,
        "environment": {"JUPYTER_CC_HOST_DATA": aci_host_data(cce_policy)},
        **_resources(cpu, memory),
    }
    if image:
        kso["image"] = image
    kso.update(override or {})
    return _entry(display_name, slug, description, default, kso)


def _kbs_url(kbs: str) -> str:
    """The URL the pod's attestation agent and CDH use for ``kbs`` (design section 13).

    ``kbs://`` is the project's broker, over HTTPS; ``https://`` a Trustee KBS; ``kbs+http://`` and
    ``http://`` are plain HTTP and refused here, since a pod never reaches a loopback broker.
    """
    url = urlsplit(kbs)
    if url.scheme in ("http", "kbs+http"):
        raise InputError(
            f"key broker {kbs!r} is plain HTTP: anyone on the path could answer the pod",
            hint="serve it over HTTPS (as jupyter-cc kbs serve does); pass its certificate as kbs_cert",
        )
    if url.scheme not in ("kbs", "https") or not url.netloc:
        raise InputError(
            f"key broker {kbs!r} is not a kbs:// or https:// URL",
            hint="write it like kbs://kbs.example:8085 or https://trustee.example:8080",
        )
    return f"https://{url.netloc}{url.path.rstrip('/')}"


def _kbs_cert(kbs: str, kbs_cert: str | None) -> str:
    """The broker certificate (PEM) the pod pins; required for ``kbs://`` (self-signed by default).

    Raises:
        InputError: missing for ``kbs://``, not a PEM certificate, or not safe inside the TOML.
    """
    if not kbs_cert:
        if urlsplit(kbs).scheme == "kbs":
            raise InputError(
                f"the pod cannot authenticate the key broker {kbs}: no certificate to pin",
                hint="pass kbs_cert, the PEM certificate the broker serves (its data dir's certificate)",
            )
        return ""
    from jupyter_cc.attest.certs import load_certificates

    if "-----BEGIN CERTIFICATE-----" not in kbs_cert or '"""' in kbs_cert or "'''" in kbs_cert:
        raise InputError("kbs_cert must be the broker's PEM certificate")
    load_certificates(kbs_cert.encode("ascii", "replace"), what="kbs_cert")
    return kbs_cert.strip() + "\n"


def kbs_cert_sha256(kbs_cert: str) -> str:
    """The pin (hex SHA-256 of the DER) of ``kbs_cert``, for the pod's own ``kbs://`` client."""
    from jupyter_cc.kbs.tls import cert_fingerprint

    return cert_fingerprint(kbs_cert.encode("ascii", "replace"))


def coco_initdata(kbs: str, *, kbs_cert: str | None = None) -> str:
    """The init-data annotation value (gzip + base64 TOML) pointing AA and CDH at ``kbs``.

    The broker is reached over HTTPS and, with ``kbs_cert``, only if it presents that certificate
    (``cert`` for the attestation agent's token config, ``kbs_cert`` for CDH's KBC). Since the
    digest of this TOML is HOST_DATA or MRCONFIGID, the pinned certificate is attested too.
    """
    url = _kbs_url(kbs)
    pem = _kbs_cert(kbs, kbs_cert)
    aa = f'[token_configs]\n[token_configs.coco_as]\nurl = "{url}"\n\n'
    aa += f'[token_configs.kbs]\nurl = "{url}"\n' + (f'cert = """\n{pem}"""\n' if pem else "")
    cdh = 'socket = "unix:///run/confidential-containers/cdh.sock"\n\n'
    cdh += f'[kbc]\nname = "cc_kbc"\nurl = "{url}"\n' + (f'kbs_cert = """\n{pem}"""\n' if pem else "")
    toml = (
        'version = "0.1.0"\nalgorithm = "sha256"\n\n[data]\n'
        f"\"aa.toml\" = '''\n{aa}'''\n\n\"cdh.toml\" = '''\n{cdh}'''\n"
    )
    return base64.b64encode(gzip.compress(toml.encode(), mtime=0)).decode()


def coco_profile(
    display_name: str,
    *,
    runtime_class: str = "kata-qemu-snp",
    kbs: str,
    kbs_cert: str | None = None,
    slug: str | None = None,
    description: str = "",
    image: str | None = None,
    gpus: int = 0,
    cpu: float | None = 4,
    memory: str | None = "16G",
    default: bool = False,
    override: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``profile_list`` entry for an upstream Confidential Containers runtime class."""
    if runtime_class not in COCO_RUNTIME_CLASSES:
        raise InputError(
            f"runtime class {runtime_class!r} is not one of {', '.join(COCO_RUNTIME_CLASSES)}",
            hint="kata-cc-isolation (AKS Confidential Containers) is retired; use confidential ACI",
        )
    gpu_class = "nvidia-gpu" in runtime_class
    if gpus and not gpu_class:
        raise InputError(f"runtime class {runtime_class} has no GPU; use kata-qemu-nvidia-gpu-snp or -tdx")
    if gpu_class and gpus < 1:
        gpus = 1
    kso: dict[str, Any] = {
        "extra_pod_config": {"runtimeClassName": runtime_class},
        "extra_annotations": {
            COCO_INITDATA: coco_initdata(kbs, kbs_cert=kbs_cert),
            PROFILE_ANNOTATION: "coco",
        },
        "environment": {
            "JUPYTER_CC_TEE": COCO_RUNTIME_CLASSES[runtime_class],
            "JUPYTER_CC_KBS": kbs,
            **({"JUPYTER_CC_KBS_CERT_SHA256": kbs_cert_sha256(kbs_cert)} if kbs_cert else {}),
        },
        **_resources(cpu, memory),
    }
    if gpus:
        kso["extra_resource_limits"] = {GPU_RESOURCE: str(gpus)}
    if image:
        kso["image"] = image
    kso.update(override or {})
    return _entry(display_name, slug, description, default, kso)


def _entry(
    display_name: str, slug: str | None, description: str, default: bool, kso: dict[str, Any]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "display_name": display_name,
        "description": description,
        "kubespawner_override": kso,
    }
    if slug:
        entry["slug"] = slug
    if default:
        entry["default"] = True
    return entry


def _get(obj: Any, name: str) -> Any:
    """A field of a kubernetes client model or of a plain dict (camelCase keys)."""
    if isinstance(obj, Mapping):
        camel = name.split("_")[0] + "".join(w.title() for w in name.split("_")[1:])
        return obj.get(camel, obj.get(name))
    return getattr(obj, name, None)


def _check_protection(kind: str, annotations: Mapping[str, str], spec: Any) -> None:
    """Refuse a pod of our ``kind`` that lost its runtime class, node selector or annotation."""
    if kind == "aci":
        if not annotations.get(ACI_CCE_POLICY):
            raise ConfidentialPodError("the confidential ACI pod has no CCE policy annotation")
        if dict(_get(spec, "node_selector") or {}).get("virtualization") != "virtualnode2":
            raise ConfidentialPodError("the confidential ACI pod does not select the virtual node")
    elif kind == "coco":
        runtime = _get(spec, "runtime_class_name")
        if runtime not in COCO_RUNTIME_CLASSES:
            raise ConfidentialPodError(
                f"the Confidential Containers pod has runtime class {runtime!r}, not a confidential one",
                hint="set it with c.KubeSpawner.extra_pod_config, which some Helm chart versions drop",
            )
        if not any(annotations.get(key) for key in COCO_INITDATA_KEYS):
            raise ConfidentialPodError("the Confidential Containers pod has no init-data annotation")
    else:
        raise ConfidentialPodError(f"unknown confidential pod kind {kind!r} in {PROFILE_ANNOTATION}")


def modify_pod_hook(spawner: Any, pod: Any) -> Any:
    """``c.KubeSpawner.modify_pod_hook``: refuse a confidential pod that lost its protection,
    and record which environment variables are per-spawn (see :data:`PER_SPAWN_ENV`)."""
    metadata = _get(pod, "metadata")
    spec = _get(pod, "spec")
    annotations = dict(_get(metadata, "annotations") or {})
    kind = annotations.get(PROFILE_ANNOTATION)
    if kind is None:
        return pod  # not one of our profiles: left as it is
    _check_protection(kind, annotations, spec)
    names: set[str] = set()
    for container in _get(spec, "containers") or []:
        for var in _get(container, "env") or []:
            name = _get(var, "name")
            if name in PER_SPAWN_ENV:
                names.add(str(name))
    annotations[PER_SPAWN_ANNOTATION] = ",".join(sorted(names))
    if isinstance(metadata, dict):
        metadata["annotations"] = annotations
    else:
        metadata.annotations = annotations
    return pod
