"""``jupyter-cc kernelspec install-pod NAME``: a kernelspec whose kernels each run in an attested pod.

The kernelspec names the ``confidential-pod`` provisioner (:mod:`jupyter_cc.pod_provisioner`) and
its settings: the image, the platform (Confidential ACI virtual nodes with a CCE policy, or a CoCo
runtime class with init-data pointing at a key broker), the namespace, the Hub-side key for the
agent transport and the attestation policy::

    jupyter-cc kernelspec install-pod cc-aci --platform aci --image myacr.azurecr.io/cc-kernel:1 \\
        --cce-policy kernel.rego.b64 --namespace kernels --identity-file ~/.ssh/cc_agent_ed25519 \\
        --policy /etc/jupyter-cc/aci.toml --sys-prefix
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.errors import InputError

__all__ = ["add_install_pod"]


def add_install_pod(ks_sub: Any, add_location: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``install-pod`` to the ``kernelspec`` subcommands."""
    p = ks_sub.add_parser("install-pod", help="install a kernelspec that runs each kernel in an attested pod")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--display-name", metavar="TEXT")
    p.add_argument("--platform", choices=("aci", "coco"), default="aci")
    p.add_argument("--image", required=True, help="the pod's image (runs jupyter-cc guest serve-transport)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--cce-policy", metavar="FILE", help="aci: the CCE policy (base64 or Rego)")
    p.add_argument("--runtime-class", default="kata-qemu-snp", help="coco: the runtime class")
    p.add_argument("--kbs", metavar="URL", help="coco: the key broker (kbs://host:port or https://...)")
    p.add_argument("--kbs-cert", metavar="FILE", help="coco: the broker's PEM certificate")
    p.add_argument(
        "--identity-file", required=True, metavar="FILE", help="private key; FILE.pub goes to the pod"
    )
    p.add_argument("--policy", metavar="FILE", help="attestation policy (TOML)")
    p.add_argument("--tee", choices=TEE_CHOICES, default="auto", help="the evidence the pod collects")
    p.add_argument("--kubeconfig", metavar="FILE", help="default: in-cluster credentials, else $KUBECONFIG")
    p.add_argument("--agent-port", type=int, help="the agent transport's port in the pod (default 2222)")
    p.add_argument("--pod-start-timeout", type=float, help="seconds the pod may take to run (default 300)")
    p.add_argument("--connect-timeout", type=float, help=argparse.SUPPRESS)
    add_location(p)
    p.set_defaults(func=_cmd_install_pod)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def _check(args: argparse.Namespace) -> None:
    if args.platform == "aci" and not args.cce_policy:
        raise InputError(
            "--platform aci needs --cce-policy FILE", hint="the output of az confcom acipolicygen"
        )
    if args.platform == "coco" and not args.kbs:
        raise InputError("--platform coco needs --kbs URL", hint="the key broker the pod's init-data names")
    if args.tee == "sim" and not args.policy:
        raise InputError("--tee sim needs a --policy with allow_simulated = true")


def _cmd_install_pod(args: argparse.Namespace) -> int:
    """Write the kernelspec (files are made absolute: the provisioner runs from another folder)."""
    from jupyter_cc.cli.kernels import _prefix
    from jupyter_cc.kernelspec import POD_PROVISIONER_NAME, install, kernelspec, provisioner_config

    _check(args)
    config = provisioner_config(
        "agent",
        args.tee,
        platform=args.platform,
        image=args.image,
        namespace=args.namespace,
        cce_policy_file=_absolute(args.cce_policy) if args.platform == "aci" else None,
        runtime_class=args.runtime_class if args.platform == "coco" else None,
        kbs=args.kbs if args.platform == "coco" else None,
        kbs_cert_file=_absolute(args.kbs_cert) if args.platform == "coco" else None,
        identity_file=_absolute(args.identity_file),
        policy=args.policy,
        kube_config=_absolute(args.kubeconfig),
        agent_port=args.agent_port,
        pod_start_timeout=args.pod_start_timeout,
        connect_timeout=args.connect_timeout,
    )
    display = args.display_name or f"Python 3 (confidential pod, {args.platform})"
    spec = kernelspec(display, config, provisioner=POD_PROVISIONER_NAME)
    where = install(args.name, spec, user=args.user, prefix=_prefix(args))
    print(f"installed kernelspec {args.name} in {where}")
    return 0
