"""The ``[profiles.NAME.azure]`` table: which confidential VM to create in Azure, and how.

:class:`AzureSettings` is parsed and checked here, with no I/O and no Azure SDK, so a typo or an
unsafe choice is refused when the profile is read, long before anything is sent to Azure::

    [profiles.lab.azure]
    subscription = "00000000-0000-0000-0000-000000000000"
    resource_group = "analysis"
    location = "westeurope"
    size = "Standard_DC4as_v5"                 # SEV-SNP; DC*es_v5/v6 TDX; NCC40ads_H100_v5 GPU
    ssh_public_key = "/home/me/.ssh/id_ed25519.pub"
    security_encryption_type = "DiskWithVMGuestState"   # or VMGuestStateOnly
    public_ip = false                          # reach it over the VNet (VPN, Bastion, peering)
    idle_minutes = 60
    max_hours = 12

Sizes are the confidential families only (DCasv5/DCadsv5/ECasv5/ECadsv5 and v6 for AMD SEV-SNP,
DCesv5/DCedsv5/ECesv5/ECedsv5 and v6 for Intel TDX, NCCadsH100v5 for SEV-SNP with an H100);
``securityType`` is always ``ConfidentialVM``, with secure boot and the vTPM on.

>>> s = AzureSettings.from_table({"subscription": "00000000-0000-0000-0000-000000000000",
...     "resource_group": "rg", "location": "westeurope", "size": "Standard_DC2as_v5"})
>>> s.tee, s.vm_name("lab")
('snp', 'lab')
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from jupyter_cc.errors import InputError

__all__ = [
    "DEFAULT_IMAGE",
    "ENCRYPTION_TYPES",
    "AzureSettings",
    "size_tee",
]

DEFAULT_IMAGE = "Canonical:ubuntu-24_04-lts:cvm:latest"
"""Ubuntu 24.04 LTS built for confidential VMs (SEV-SNP and TDX)."""

SECURITY_TYPE = "ConfidentialVM"
ENCRYPTION_TYPES = ("DiskWithVMGuestState", "VMGuestStateOnly")
DISK_TYPES = ("Premium_LRS", "StandardSSD_LRS", "Standard_LRS", "Premium_ZRS", "StandardSSD_ZRS")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_LOCATION = re.compile(r"^[a-z][a-z0-9]{1,40}$")
_GROUP = re.compile(r"^[-\w._()]{1,89}[-\w_()]$")
_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}[A-Za-z0-9]$|^[A-Za-z0-9]$")
_SNP_SIZE = re.compile(r"^Standard_(DC|EC)\d+a(d)?s_v[56]$")
_TDX_SIZE = re.compile(r"^Standard_(DC|EC)\d+e(d)?s_v[56]$")
_GPU_SIZE = re.compile(r"^Standard_NCC\d+ads_H100_v5$")
_RETIRED_SIZE = re.compile(r"^Standard_(DC|EC)\d+as_cc_v5$")
_IMAGE_ID = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/", re.I)
_SUBNET_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$",
    re.I,
)
_RESERVED_USERS = frozenset({"root", "admin", "administrator", "guest", "test", "user", "sys", "adm"})

_REQUIRED = ("subscription", "resource_group", "location", "size")
_BOOLS = ("secure_boot", "vtpm", "public_ip")
_INTS = ("idle_minutes", "max_hours", "os_disk_size_gb")


def size_tee(size: str) -> str | None:
    """The TEE a confidential size runs (``snp``, ``tdx``, ``snp+h100``), or None if not confidential."""
    if _SNP_SIZE.match(size):
        return "snp"
    if _TDX_SIZE.match(size):
        return "tdx"
    if _GPU_SIZE.match(size):
        return "snp+h100"
    return None


@dataclass(frozen=True)
class AzureSettings:
    """One ``[profiles.NAME.azure]`` table; every field is a TOML key of the same name.

    Attributes:
        subscription, resource_group, location, size: where and what to create.
        image: a marketplace URN ``publisher:offer:sku:version`` of a CVM image, or the resource id
            of a gallery or managed image built for confidential VMs.
        security_type: always ``ConfidentialVM`` (written out so the table says what it creates).
        security_encryption_type: ``DiskWithVMGuestState`` (OS disk and VM guest state encrypted
            with a key bound to the vTPM) or ``VMGuestStateOnly`` (guest state only).
        disk_encryption_set: resource id of a disk encryption set (customer-managed key), with
            ``DiskWithVMGuestState`` only.
        secure_boot, vtpm: always true: the vTPM is where the evidence comes from.
        name: the VM's resource name (default: the profile's name).
        subnet_id: an existing subnet; without it a VNet ``NAME-vnet`` is created.
        public_ip: give the VM a public address (off by default); needs ``ssh_allowed_from``.
        ssh_allowed_from: the only address (CIDR) an NSG lets reach port 22 when there is a public IP.
        ssh_public_key: local path of the public key Azure installs for the admin user.
        admin_user: the admin user Azure creates (default: the profile's ``ssh_user``).
        tags: extra tags on every resource created.
        idle_minutes, max_hours: deallocate after this long without a kernel / running (0: never).
        managed_identity_client_id, tenant_id: which Azure identity and tenant to sign in with.
        guest_package: pip requirement cloud-init installs (default: jupyter-cc at this version).
    """

    subscription: str
    resource_group: str
    location: str
    size: str
    image: str = DEFAULT_IMAGE
    security_type: str = SECURITY_TYPE
    security_encryption_type: str = "DiskWithVMGuestState"
    disk_encryption_set: str | None = None
    os_disk_type: str = "StandardSSD_LRS"
    os_disk_size_gb: int | None = None
    secure_boot: bool = True
    vtpm: bool = True
    name: str | None = None
    subnet_id: str | None = None
    vnet_address_prefix: str = "10.42.0.0/16"
    subnet_prefix: str = "10.42.0.0/24"
    public_ip: bool = False
    ssh_allowed_from: str | None = None
    ssh_public_key: str | None = None
    admin_user: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    idle_minutes: int = 60
    max_hours: int = 12
    managed_identity_client_id: str | None = None
    tenant_id: str | None = None
    guest_package: str | None = None

    def __post_init__(self) -> None:
        problems = [*self._where_problems(), *self._vm_problems(), *self._network_problems()]
        if problems:
            raise InputError("; ".join(problems))

    def _where_problems(self) -> list[str]:
        out = []
        if not _UUID.match(self.subscription):
            out.append(f"subscription {self.subscription!r} is not a subscription id (a UUID)")
        if not _GROUP.match(self.resource_group):
            out.append(f"resource_group {self.resource_group!r} is not a resource group name")
        if not _LOCATION.match(self.location):
            out.append(f"location {self.location!r} is not an Azure region name like westeurope")
        if self.name is not None and not _VM_NAME.match(self.name):
            out.append(f"name {self.name!r} is not a VM name (letters, digits and '-', at most 64)")
        for key in ("managed_identity_client_id", "tenant_id"):
            value = getattr(self, key)
            if value is not None and not _UUID.match(value):
                out.append(f"{key} {value!r} is not a UUID")
        for key in ("idle_minutes", "max_hours"):
            if getattr(self, key) < 0:
                out.append(f"{key} is negative (0 means never)")
        return out

    def _vm_problems(self) -> list[str]:
        out = []
        if _RETIRED_SIZE.match(self.size):
            out.append(f"size {self.size} is a confidential-container node size that retires 2026-08-01")
        elif size_tee(self.size) is None:
            out.append(
                f"size {self.size!r} is not a confidential VM size "
                "(DCasv5/DCasv6 or ECasv5 SEV-SNP, DCesv5/DCesv6 TDX, NCCadsH100v5 GPU)"
            )
        if self.security_type != SECURITY_TYPE:
            out.append(f"security_type {self.security_type!r} is not ConfidentialVM")
        if self.security_encryption_type not in ENCRYPTION_TYPES:
            out.append(
                f"security_encryption_type {self.security_encryption_type!r} is not one of "
                + ", ".join(ENCRYPTION_TYPES)
            )
        if self.disk_encryption_set is not None and self.security_encryption_type != "DiskWithVMGuestState":
            out.append("disk_encryption_set needs security_encryption_type DiskWithVMGuestState")
        if not self.secure_boot or not self.vtpm:
            out.append("secure_boot and vtpm must be true: the vTPM and measured boot are what is attested")
        if self.os_disk_type not in DISK_TYPES:
            out.append(f"os_disk_type {self.os_disk_type!r} is not one of {', '.join(DISK_TYPES)}")
        if self.os_disk_size_gb is not None and not 30 <= self.os_disk_size_gb <= 4095:
            out.append("os_disk_size_gb must be between 30 and 4095")
        if not (_IMAGE_ID.match(self.image) or is_cvm_urn(self.image)):
            out.append(
                f"image {self.image!r} is neither a confidential VM image URN (its SKU names cvm) "
                "nor an image resource id"
            )
        return out

    def _network_problems(self) -> list[str]:
        out = []
        if self.subnet_id is not None and not _SUBNET_ID.match(self.subnet_id):
            out.append(f"subnet_id {self.subnet_id!r} is not a subnet resource id")
        for key in ("vnet_address_prefix", "subnet_prefix"):
            if not _is_network(getattr(self, key)):
                out.append(f"{key} {getattr(self, key)!r} is not a CIDR block like 10.42.0.0/16")
        if self.public_ip and self.ssh_allowed_from is None:
            out.append("public_ip needs ssh_allowed_from, the one address (CIDR) allowed to reach SSH")
        source = self.ssh_allowed_from
        if source is not None and not _is_network(source):
            out.append(f"ssh_allowed_from {source!r} is not an address or CIDR block")
        elif source is not None and ipaddress.ip_network(source, strict=False).num_addresses > 65536:
            out.append(
                "ssh_allowed_from must be your address or a small range, not a large part of the internet"
            )
        return out

    @property
    def tee(self) -> str:
        """The TEE this size runs: ``snp``, ``tdx`` or ``snp+h100``."""
        return size_tee(self.size) or "unknown"

    def vm_name(self, profile_name: str) -> str:
        """The VM's resource name: ``name`` if set, else the profile's."""
        return self.name or profile_name

    def to_table(self) -> dict[str, Any]:
        """The TOML table: the values that differ from the defaults, plus the required ones."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _REQUIRED or (value is not None and value != f.default):
                out[f.name] = dict(value) if f.name == "tags" else value
        return out

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, where: str = "azure") -> AzureSettings:
        """Settings from a TOML table, refusing unknown keys, missing ones and wrong types."""
        if not isinstance(table, Mapping):
            raise InputError(f"{where} is a {type(table).__name__}, expected a table")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise InputError(
                f"{where} has unknown key(s) {', '.join(unknown)}", hint="known keys are " + ", ".join(known)
            )
        missing = [k for k in _REQUIRED if k not in table]
        if missing:
            raise InputError(
                f"{where} lacks {', '.join(missing)}",
                hint="subscription, resource_group, location and size are needed",
            )
        values = {k: _typed(where, k, v) for k, v in table.items()}
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(f"{where}: {exc.message}", hint=exc.hint) from None


def is_cvm_urn(image: str) -> bool:
    """Whether ``image`` is a marketplace URN whose SKU is a confidential VM build (names ``cvm``)."""
    parts = image.split(":")
    return len(parts) == 4 and all(parts) and "cvm" in parts[2].lower()


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _typed(where: str, key: str, value: Any) -> Any:
    """``value`` if it has the TOML type ``key`` takes (tags become sorted pairs)."""
    if key == "tags":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InputError(f"{where}: tags must be a table of strings")
        return tuple(sorted(value.items()))
    if key in _BOOLS:
        ok = isinstance(value, bool)
        expected = "true or false"
    elif key in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    else:
        ok = isinstance(value, str) and bool(value)
        expected = "a non-empty string"
    if not ok:
        raise InputError(f"{where}: {key} is {value!r}, expected {expected}")
    return value


def check_admin_user(user: str | None, where: str) -> None:
    """Refuse an admin user name Azure will not take (unset, reserved, or not a Linux name)."""
    if not user:
        raise InputError(f"{where}: an Azure CVM needs ssh_user, the admin user Azure creates")
    if user.lower() in _RESERVED_USERS or not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user):
        raise InputError(
            f"{where}: ssh_user {user!r} cannot be an Azure admin user",
            hint="use lowercase letters, digits, '-' and '_', and not root, admin or a reserved name",
        )
