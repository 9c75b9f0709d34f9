"""``jupyter-cc profile add|list|remove``: named CVMs in the user config (:mod:`jupyter_cc.profiles`).

:func:`add_commands` adds ``profile`` to the CLI's subparsers. The options are those of
``jupyter-cc kernelspec install``; local paths (policy, identity file, known hosts) are stored
absolute, paths on the CVM (host key file, Python) as given::

    jupyter-cc profile add lab --host cvm.example.org --ssh-user azureuser --policy prod.toml
    jupyter-cc profile add lab --azure-subscription S --azure-resource-group G --azure-location L \
        --azure-size Standard_DC4as_v5 --ssh-user azureuser --ssh-public-key ~/.ssh/id_ed25519.pub
    jupyter-cc profile list
    jupyter-cc profile remove lab
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.errors import InputError
from jupyter_cc.paths import config_path
from jupyter_cc.profiles import TRANSPORTS, Profile, load_profiles, remove_profile, save_profile

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``profile add``, ``profile list`` and ``profile remove`` to the CLI's subparsers."""
    profile_p = sub.add_parser("profile", help="named CVM profiles for %%cc connect, %%attest and kernels")
    profile_sub = profile_p.add_subparsers(dest="profile_command", required=True, parser_class=parser_class)

    add = profile_sub.add_parser(
        "add",
        help="add a profile to the user config",
        description="Add NAME to the user config (~/.jupyter/jupyter_cc.toml, or $JUPYTER_CC_CONFIG).",
    )
    add.add_argument("name", metavar="NAME", help="letters, digits, '-' and '_'")
    add.add_argument("--transport", choices=TRANSPORTS, default="ssh", help="ssh to a CVM, or local")
    add.add_argument("--host", metavar="H", help="the CVM's address")
    add.add_argument("--port", metavar="N", type=int, help="its sshd port (default 22)")
    add.add_argument("--ssh-user", metavar="U", help="the SSH user (default: the local user name)")
    add.add_argument("--identity-file", metavar="F", help="private key file for SSH (default: ssh-agent)")
    add.add_argument("--known-hosts", metavar="F", help="known_hosts file (default ~/.ssh/known_hosts)")
    add.add_argument(
        "--host-key-file",
        metavar="F",
        help="path ON THE CVM of the sshd public key to bind (default /etc/ssh)",
    )
    add.add_argument("--policy", metavar="FILE", help="TOML policy (default: valid, no debug, no simulated)")
    add.add_argument("--python", metavar="PATH", help="Python ON THE CVM with jupyter-cc (default python3)")
    add.add_argument("--tee", choices=TEE_CHOICES, default="auto", help="which evidence to collect")
    add.add_argument("--kbs", metavar="URL", help="the key broker, like http://host:8085")
    add.add_argument("--sim-dir", metavar="PATH_ON_CVM", help=argparse.SUPPRESS)
    add.add_argument("--replace", action="store_true", help="replace a profile of the same name")
    _add_azure_options(add)
    add.set_defaults(func=_cmd_add)

    lst = profile_sub.add_parser("list", help="list the profiles in the user config")
    lst.add_argument("--json", action="store_true", help="print one JSON object, profiles by name")
    lst.set_defaults(func=_cmd_list)

    rm = profile_sub.add_parser("remove", help="remove a profile from the user config")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=_cmd_remove)


# --azure-* option (argparse dest) -> key of the [profiles.NAME.azure] table.
_AZURE_KEYS = {
    "azure_subscription": "subscription",
    "azure_resource_group": "resource_group",
    "azure_location": "location",
    "azure_size": "size",
    "azure_image": "image",
    "azure_encryption": "security_encryption_type",
    "azure_disk_encryption_set": "disk_encryption_set",
    "azure_os_disk_type": "os_disk_type",
    "azure_vm_name": "name",
    "azure_subnet_id": "subnet_id",
    "azure_public_ip": "public_ip",
    "azure_ssh_from": "ssh_allowed_from",
    "azure_idle_minutes": "idle_minutes",
    "azure_max_hours": "max_hours",
    "azure_managed_identity": "managed_identity_client_id",
    "azure_tenant": "tenant_id",
    "azure_guest_package": "guest_package",
    "azure_admin_user": "admin_user",
}


def _add_azure_options(add: argparse.ArgumentParser) -> None:
    """The ``--azure-*`` options that write the profile's ``[profiles.NAME.azure]`` table."""
    from jupyter_cc.azure.settings import ENCRYPTION_TYPES

    az = add.add_argument_group("Azure confidential VM (see docs/azure.md)")
    az.add_argument("--azure-subscription", metavar="S", help="subscription id")
    az.add_argument("--azure-resource-group", metavar="G", help="resource group (created if missing)")
    az.add_argument("--azure-location", metavar="L", help="region, like westeurope")
    az.add_argument("--azure-size", metavar="SIZE", help="a confidential size, like Standard_DC4as_v5")
    az.add_argument("--ssh-public-key", metavar="FILE", help="public key Azure installs for --ssh-user")
    az.add_argument("--azure-image", metavar="URN", help="CVM image URN or id (default Ubuntu 24.04 CVM)")
    az.add_argument("--azure-encryption", choices=ENCRYPTION_TYPES, help="OS disk securityEncryptionType")
    az.add_argument("--azure-disk-encryption-set", metavar="ID", help="disk encryption set (customer key)")
    az.add_argument("--azure-os-disk-type", metavar="TYPE", help="OS disk storage type (StandardSSD_LRS)")
    az.add_argument("--azure-vm-name", metavar="N", help="the VM's name (default: the profile's)")
    az.add_argument("--azure-subnet-id", metavar="ID", help="an existing subnet (default: a new VNet)")
    az.add_argument("--azure-public-ip", action="store_true", default=None, help="give the VM a public IP")
    az.add_argument("--azure-ssh-from", metavar="CIDR", help="the only address allowed to reach SSH")
    az.add_argument("--azure-tag", metavar="K=V", action="append", help="a tag on every resource (repeat)")
    az.add_argument("--azure-idle-minutes", metavar="N", type=int, help="deallocate after N idle minutes")
    az.add_argument("--azure-max-hours", metavar="N", type=int, help="deallocate after N hours running")
    az.add_argument(
        "--azure-admin-user", metavar="U", help="the admin user Azure creates (default --ssh-user)"
    )
    az.add_argument("--azure-managed-identity", metavar="ID", help="client id of a managed identity")
    az.add_argument("--azure-tenant", metavar="ID", help="the tenant to sign in to")
    az.add_argument(
        "--azure-guest-package", metavar="REQ", help="what the CVM pip-installs (default: this version)"
    )


def _azure_settings(args: argparse.Namespace) -> Any:
    """The azure table the ``--azure-*`` options describe, or None when none was given."""
    table: dict[str, Any] = {key: getattr(args, dest) for dest, key in _AZURE_KEYS.items()}
    table = {k: v for k, v in table.items() if v is not None}
    if args.ssh_public_key is not None:
        key = _local_path(args.ssh_public_key, "--ssh-public-key")
        if key is None or not os.path.isfile(key):
            raise InputError(f"SSH public key {key} does not exist")
        table["ssh_public_key"] = key
    if args.azure_tag:
        pairs = [t.split("=", 1) for t in args.azure_tag]
        if any(len(p) != 2 or not p[0] for p in pairs):
            raise InputError("--azure-tag takes KEY=VALUE")
        table["tags"] = dict(pairs)
    if not table:
        return None
    from jupyter_cc.azure.settings import AzureSettings

    return AzureSettings.from_table(table, where="the --azure-* options")


def _local_path(value: str | None, option: str) -> str | None:
    """An absolute form of a local path, so the profile means the same from any directory."""
    if value is None:
        return None
    if not value:
        raise InputError(f"{option} is empty")
    return os.path.abspath(os.path.expanduser(value))


def _cmd_add(args: argparse.Namespace) -> int:
    azure = _azure_settings(args)
    if azure is not None:
        return _add_azure_profile(args, azure)
    if args.transport == "ssh" and not args.host:
        raise InputError(
            "--transport ssh needs --host", hint="pass the CVM's address, or use --transport local"
        )
    if args.transport == "local" and args.host:
        raise InputError("--host makes no sense with --transport local", hint="leave it out")
    if args.tee == "sim" and not args.policy:
        raise InputError(
            "--tee sim needs a --policy with allow_simulated = true",
            hint="the default policy rejects simulated evidence",
        )
    policy = _local_path(args.policy, "--policy")
    if policy is not None and not os.path.isfile(policy):
        raise InputError(f"policy file {policy} does not exist")
    profile = Profile(
        name=args.name,
        transport=args.transport,
        host=args.host,
        port=args.port,
        ssh_user=args.ssh_user,
        identity_file=_local_path(args.identity_file, "--identity-file"),
        known_hosts=_local_path(args.known_hosts, "--known-hosts"),
        host_key_file=args.host_key_file,
        policy=policy,
        python=args.python,
        tee=args.tee,
        kbs=args.kbs,
        sim_dir=args.sim_dir,
    )
    where = save_profile(profile, replace=args.replace)
    print(f"{'saved' if args.replace else 'added'} profile {profile.name} to {where}")
    return 0


def _add_azure_profile(args: argparse.Namespace, azure: Any) -> int:
    """Save a profile whose CVM jupyter-cc creates in Azure: its known_hosts is its own file
    (where the host key is pinned once attestation binds it) and its Python the one cloud-init
    installs."""
    from jupyter_cc.azure.cloudinit import GUEST_PYTHON
    from jupyter_cc.azure.settings import check_admin_user
    from jupyter_cc.paths import data_dir

    if args.transport != "ssh":
        raise InputError("an Azure CVM is reached over SSH", hint="leave out --transport")
    check_admin_user(azure.admin_user or args.ssh_user, f"profile {args.name}")
    policy = _local_path(args.policy, "--policy")
    if policy is not None and not os.path.isfile(policy):
        raise InputError(f"policy file {policy} does not exist")
    known = _local_path(args.known_hosts, "--known-hosts") or str(
        data_dir() / "azure" / f"{args.name}.known_hosts"
    )
    profile = Profile(
        name=args.name,
        host=args.host,
        port=args.port,
        ssh_user=args.ssh_user,
        identity_file=_local_path(args.identity_file, "--identity-file"),
        known_hosts=known,
        host_key_file=args.host_key_file,
        policy=policy,
        python=args.python or GUEST_PYTHON,
        tee=args.tee,
        kbs=args.kbs,
        sim_dir=args.sim_dir,
        azure=azure,
    )
    where = save_profile(profile, replace=args.replace)
    verb = "saved" if args.replace else "added"
    print(f"{verb} profile {profile.name} (Azure CVM {azure.vm_name(args.name)}) to {where}")
    return 0


def _target(profile: Profile) -> str:
    if profile.transport == "local":
        return "local"
    if profile.azure is not None and not profile.host:
        return f"azure:{profile.azure.resource_group}/{profile.azure.vm_name(profile.name)}"
    user = f"{profile.ssh_user}@" if profile.ssh_user else ""
    port = f":{profile.port}" if profile.port is not None else ""
    return f"{user}{profile.host}{port}"


def _cmd_list(args: argparse.Namespace) -> int:
    profiles = load_profiles()
    if args.json:
        print(json.dumps({name: p.to_json() for name, p in sorted(profiles.items())}, indent=2))
        return 0
    if not profiles:
        print(f"no profiles in {config_path()}; add one with 'jupyter-cc profile add NAME --host HOST'")
        return 0
    rows = [("NAME", "TARGET", "TEE", "POLICY", "KBS")]
    for name, p in sorted(profiles.items()):
        rows.append((name, _target(p), p.tee, p.policy or "(default)", p.kbs or "-"))
    widths = [max(len(repr(r[i])) if "\n" in r[i] else len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        cells = [repr(c) if "\n" in c else c for c in row]
        print("  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True)) + "  " + cells[4])
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    where = remove_profile(args.name)
    print(f"removed profile {args.name} from {where}")
    return 0
