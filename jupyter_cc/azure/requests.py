"""The ARM requests that create, act on and delete one CVM, built and checked with no I/O.

:func:`create_plan` turns a profile's :class:`~jupyter_cc.azure.settings.AzureSettings` into the
ordered PUTs (resource group, NSG, VNet, public IP, NIC, VM) whose bodies are exactly what the
Azure SDK sends (REST-shaped dicts, as in Azure's own examples); ``jupyter-cc cvm create
--dry-run`` prints the same plan. :func:`check_vm_body` refuses a VM body that would not be a
confidential, encrypted VM, listing every problem at once; :mod:`jupyter_cc.azure.lifecycle`
calls it before the first request is sent, so a mistake never becomes a running ordinary VM.

>>> from jupyter_cc.azure.settings import AzureSettings
>>> s = AzureSettings("00000000-0000-0000-0000-000000000000", "rg", "westeurope", "Standard_DC2as_v5")
>>> plan = create_plan("lab", s, admin_user="azureuser", ssh_public_key="ssh-ed25519 AAAA me",
...                    custom_data="")
>>> [step.kind for step in plan.steps]
['resourceGroup', 'virtualNetwork', 'networkInterface', 'virtualMachine']
>>> check_vm_body(plan.vm.body)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jupyter_cc.azure.errors import UnsafeRequestError
from jupyter_cc.azure.settings import ENCRYPTION_TYPES, SECURITY_TYPE, AzureSettings, is_cvm_urn, size_tee

__all__ = [
    "CREATED_TAG",
    "PROFILE_TAG",
    "Names",
    "Plan",
    "Step",
    "action_plan",
    "check_vm_body",
    "create_plan",
    "names_for",
    "network_resources",
]

PROFILE_TAG = "jupyter-cc-profile"
"""Tag on every resource created for a profile: ``cvm list`` finds the profile's VMs by it."""
CREATED_TAG = "jupyter-cc-created"
"""Tag on network resources jupyter-cc created (``cvm delete`` removes only those)."""

_NETWORK = "providers/Microsoft.Network"
_COMPUTE = "providers/Microsoft.Compute"


@dataclass(frozen=True)
class Step:
    """One ARM request: ``method`` on ``path`` (a resource id, or id + ``/action``) with ``body``."""

    kind: str
    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The request as ``--dry-run`` prints it."""
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "method": self.method, "path": self.path}
        if self.body is not None:
            out["body"] = self.body
        return out


@dataclass(frozen=True)
class Names:
    """The resource names and ids of one profile's CVM, all derived from its VM name."""

    subscription: str
    group: str
    vm: str

    @property
    def group_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.group}"

    def id(self, kind: str, name: str) -> str:
        """The resource id of ``name``, a ``virtualMachines`` or Microsoft.Network ``kind``."""
        provider = _COMPUTE if kind == "virtualMachines" else _NETWORK
        return f"{self.group_id}/{provider}/{kind}/{name}"

    @property
    def vm_id(self) -> str:
        return self.id("virtualMachines", self.vm)

    @property
    def nic(self) -> str:
        return f"{self.vm}-nic"

    @property
    def vnet(self) -> str:
        return f"{self.vm}-vnet"

    @property
    def nsg(self) -> str:
        return f"{self.vm}-nsg"

    @property
    def public_ip(self) -> str:
        return f"{self.vm}-ip"

    @property
    def os_disk(self) -> str:
        return f"{self.vm}-osdisk"


@dataclass(frozen=True)
class Plan:
    """The ordered requests of a ``cvm create``; :attr:`vm` is the last, the VM itself."""

    names: Names
    steps: tuple[Step, ...]

    @property
    def vm(self) -> Step:
        return self.steps[-1]

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


def names_for(profile_name: str, settings: AzureSettings) -> Names:
    """The :class:`Names` of ``profile_name``'s CVM."""
    return Names(settings.subscription, settings.resource_group, settings.vm_name(profile_name))


def _tags(profile_name: str, settings: AzureSettings, *, created: bool = False) -> dict[str, str]:
    tags = dict(settings.tags)
    tags[PROFILE_TAG] = profile_name
    if created:
        tags[CREATED_TAG] = "true"
    return tags


def _image_reference(image: str) -> dict[str, str]:
    if image.startswith("/"):
        return {"id": image}
    publisher, offer, sku, version = image.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def _nsg_body(names: Names, settings: AzureSettings, tags: dict[str, str]) -> dict[str, Any]:
    rule = {
        "name": "ssh-from-caller",
        "properties": {
            "priority": 1000,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": "Tcp",
            "sourceAddressPrefix": settings.ssh_allowed_from,
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "22",
        },
    }
    return {"location": settings.location, "tags": tags, "properties": {"securityRules": [rule]}}


def _vnet_body(settings: AzureSettings, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "location": settings.location,
        "tags": tags,
        "properties": {
            "addressSpace": {"addressPrefixes": [settings.vnet_address_prefix]},
            "subnets": [{"name": "default", "properties": {"addressPrefix": settings.subnet_prefix}}],
        },
    }


def _public_ip_body(settings: AzureSettings, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "location": settings.location,
        "tags": tags,
        "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
    }


def _nic_body(names: Names, settings: AzureSettings, subnet_id: str, tags: dict[str, str]) -> dict[str, Any]:
    ip_config: dict[str, Any] = {"subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic"}
    properties: dict[str, Any] = {"ipConfigurations": [{"name": "ipconfig1", "properties": ip_config}]}
    if settings.public_ip:
        ip_config["publicIPAddress"] = {
            "id": names.id("publicIPAddresses", names.public_ip),
            "properties": {"deleteOption": "Delete"},
        }
        properties["networkSecurityGroup"] = {"id": names.id("networkSecurityGroups", names.nsg)}
    return {"location": settings.location, "tags": tags, "properties": properties}


def _vm_body(
    names: Names,
    settings: AzureSettings,
    admin_user: str,
    ssh_public_key: str,
    custom_data: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    disk_security: dict[str, Any] = {"securityEncryptionType": settings.security_encryption_type}
    if settings.disk_encryption_set:
        disk_security["diskEncryptionSet"] = {"id": settings.disk_encryption_set}
    os_disk: dict[str, Any] = {
        "name": names.os_disk,
        "createOption": "FromImage",
        "deleteOption": "Delete",
        "managedDisk": {"storageAccountType": settings.os_disk_type, "securityProfile": disk_security},
    }
    if settings.os_disk_size_gb is not None:
        os_disk["diskSizeGB"] = settings.os_disk_size_gb
    os_profile: dict[str, Any] = {
        "computerName": names.vm,
        "adminUsername": admin_user,
        "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {
                "publicKeys": [
                    {"path": f"/home/{admin_user}/.ssh/authorized_keys", "keyData": ssh_public_key}
                ]
            },
        },
    }
    if custom_data:
        os_profile["customData"] = custom_data
    return {
        "location": settings.location,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": settings.size},
            "securityProfile": {
                "securityType": settings.security_type,
                "uefiSettings": {"secureBootEnabled": settings.secure_boot, "vTpmEnabled": settings.vtpm},
            },
            "storageProfile": {"imageReference": _image_reference(settings.image), "osDisk": os_disk},
            "osProfile": os_profile,
            "networkProfile": {
                "networkInterfaces": [
                    {
                        "id": names.id("networkInterfaces", names.nic),
                        "properties": {"primary": True, "deleteOption": "Delete"},
                    }
                ]
            },
        },
    }


def create_plan(
    profile_name: str, settings: AzureSettings, *, admin_user: str, ssh_public_key: str, custom_data: str
) -> Plan:
    """The PUTs that create ``profile_name``'s CVM, in the order ARM needs them.

    The resource group step is only taken when the group does not exist (its tags are the
    owner's). The network interface uses ``settings.subnet_id`` or a new VNet; a public IP and
    an NSG allowing SSH only from ``ssh_allowed_from`` come only with ``public_ip = true``.
    """
    names = names_for(profile_name, settings)
    tags = _tags(profile_name, settings)
    created = _tags(profile_name, settings, created=True)
    steps = [
        Step(
            "resourceGroup", names.group, "PUT", names.group_id, {"location": settings.location, "tags": tags}
        )
    ]
    if settings.public_ip:
        nsg_id = names.id("networkSecurityGroups", names.nsg)
        steps.append(
            Step("networkSecurityGroup", names.nsg, "PUT", nsg_id, _nsg_body(names, settings, created))
        )
    subnet_id = settings.subnet_id
    if subnet_id is None:
        vnet_id = names.id("virtualNetworks", names.vnet)
        steps.append(Step("virtualNetwork", names.vnet, "PUT", vnet_id, _vnet_body(settings, created)))
        subnet_id = f"{vnet_id}/subnets/default"
    if settings.public_ip:
        ip_id = names.id("publicIPAddresses", names.public_ip)
        steps.append(
            Step("publicIPAddress", names.public_ip, "PUT", ip_id, _public_ip_body(settings, created))
        )
    steps.append(
        Step(
            "networkInterface",
            names.nic,
            "PUT",
            names.id("networkInterfaces", names.nic),
            _nic_body(names, settings, subnet_id, created),
        )
    )
    vm_body = _vm_body(names, settings, admin_user, ssh_public_key, custom_data, tags)
    steps.append(Step("virtualMachine", names.vm, "PUT", names.vm_id, vm_body))
    return Plan(names, tuple(steps))


def action_plan(names: Names, action: str) -> list[Step]:
    """The request of a VM action (``start``, ``powerOff``, ``deallocate``) or of ``delete``.

    ``delete`` removes the VM (its OS disk, NIC and public IP go with it: they are created with
    ``deleteOption: Delete``), then whatever network resources jupyter-cc created for it and are
    still there (tagged :data:`CREATED_TAG`; the lifecycle checks the tag before deleting).
    """
    if action == "delete":
        return [
            Step("virtualMachine", names.vm, "DELETE", names.vm_id),
            *(
                Step(kind, name, "DELETE", names.id(f"{kind}s", name))
                for kind, name in network_resources(names)
            ),
        ]
    return [Step("virtualMachine", names.vm, "POST", f"{names.vm_id}/{action}")]


def network_resources(names: Names) -> list[tuple[str, str]]:
    """The network resources a create may make, in the order they can be deleted."""
    return [
        ("networkInterface", names.nic),
        ("publicIPAddress", names.public_ip),
        ("networkSecurityGroup", names.nsg),
        ("virtualNetwork", names.vnet),
    ]


def _get(body: Mapping[str, Any], *path: str) -> Any:
    node: Any = body
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _image_problems(image: Any) -> list[str]:
    if not isinstance(image, Mapping):
        return ["storageProfile.imageReference is missing"]
    if "id" in image:
        return []
    urn = ":".join(str(image.get(k, "")) for k in ("publisher", "offer", "sku", "version"))
    if not is_cvm_urn(urn):
        return [f"image {urn} is not a confidential VM image (its SKU does not name cvm)"]
    return []


def check_vm_body(body: Mapping[str, Any]) -> None:
    """Refuse a VM request that is not a confidential VM with an encrypted guest state.

    Checks what Azure's CVM schema requires: ``securityProfile.securityType = ConfidentialVM``,
    ``uefiSettings`` with secure boot and vTPM on, ``osDisk.managedDisk.securityProfile.
    securityEncryptionType`` set, a confidential size and image, and SSH keys only (no password).

    Raises:
        UnsafeRequestError: listing every problem found.
    """
    props = _get(body, "properties") or {}
    problems = []
    if _get(props, "securityProfile", "securityType") != SECURITY_TYPE:
        problems.append("securityProfile.securityType is not ConfidentialVM")
    uefi = _get(props, "securityProfile", "uefiSettings") or {}
    if uefi.get("secureBootEnabled") is not True or uefi.get("vTpmEnabled") is not True:
        problems.append("uefiSettings must enable both secure boot and the vTPM")
    encryption = _get(
        props, "storageProfile", "osDisk", "managedDisk", "securityProfile", "securityEncryptionType"
    )
    if encryption not in ENCRYPTION_TYPES:
        problems.append(
            f"osDisk securityEncryptionType is {encryption!r}, not one of {', '.join(ENCRYPTION_TYPES)}"
        )
    size = _get(props, "hardwareProfile", "vmSize")
    if not isinstance(size, str) or size_tee(size) is None:
        problems.append(f"vmSize {size!r} is not a confidential VM size")
    problems += _image_problems(_get(props, "storageProfile", "imageReference"))
    if _get(props, "osProfile", "linuxConfiguration", "disablePasswordAuthentication") is not True:
        problems.append("password sign-in must be disabled")
    if _get(props, "osProfile", "adminPassword") is not None:
        problems.append("the request carries an admin password")
    if problems:
        raise UnsafeRequestError(
            "refusing to send a VM request that would not be a confidential, encrypted VM: "
            + "; ".join(problems),
            hint="nothing was sent to Azure; fix the profile's azure table",
        )
