"""The real Azure SDK clients (compute, network, resources) behind the few calls the lifecycle makes.

:class:`ArmClient` is the boundary: it takes :class:`~jupyter_cc.azure.requests.Step` requests
and plain resource names, returns REST-shaped dicts, waits for long-running operations within a
deadline, and turns every SDK failure into one :class:`~jupyter_cc.azure.errors.CloudError`
sentence naming the resource and what to do. Nothing else in jupyter-cc imports the SDK, and
this module imports it only when a client is first used, so the base package works without the
``jupyter-cc[azure]`` extra.

Production code injects only an :class:`ArmEndpoint` (the SDK's documented ``base_url``, a CA
bundle for a private endpoint) and, optionally, a credential; the default credential is
``azure.identity.DefaultAzureCredential`` with the profile's managed identity client id and
tenant. Tests point the same code at a local ARM endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_cc.azure.errors import (
    ArmError,
    ArmTimeoutError,
    AzureSdkMissingError,
    CloudError,
    CredentialError,
)
from jupyter_cc.azure.requests import Step, check_vm_body
from jupyter_cc.azure.settings import AzureSettings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.polling import LROPoller
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient

__all__ = ["ArmClient", "ArmEndpoint", "default_credential"]

T = TypeVar("T")

_TENANT_KEYWORDS = (
    "interactive_browser_tenant_id",
    "shared_cache_tenant_id",
    "visual_studio_code_tenant_id",
    "workload_identity_tenant_id",
    "broker_tenant_id",
)

# What to do about the refusals an analyst meets most, by Azure's error code.
_REMEDIES: dict[str, str] = {
    "SkuNotAvailable": "pick another size or region (az vm list-skus --location LOCATION --size Standard_DC)",
    "QuotaExceeded": "ask for more vCPU quota for this size family in this region (portal: Quotas), "
    "or pick a smaller size",
    "OperationNotAllowed": "check the vCPU quota for this size family in this region (portal: Quotas)",
    "AuthorizationFailed": "grant your identity Virtual Machine Contributor and Network Contributor "
    "on the resource group",
    "SubscriptionNotFound": "check the profile's subscription id, and that you signed in to its tenant "
    "(az account list)",
    "InvalidSubscriptionId": "check the profile's subscription id (az account list)",
    "ResourceGroupNotFound": "create the resource group, or fix resource_group in the profile",
    "InvalidAuthenticationToken": "sign in again (az login), or check the managed identity",
    "ExpiredAuthenticationToken": "sign in again (az login)",
}


@dataclass(frozen=True)
class ArmEndpoint:
    """Where ARM is and how long to wait for it.

    Attributes:
        base_url: the SDK's ``base_url`` (Azure public cloud by default; a sovereign cloud or a
            private ARM endpoint otherwise).
        connection_verify: a CA bundle path for that endpoint, or True for the system's.
        operation_timeout: seconds one long-running operation (create, start, deallocate,
            delete) may take before it is reported as timed out.
        polling_interval: seconds between polls when ARM sends no ``Retry-After``.
    """

    base_url: str = "https://management.azure.com"
    connection_verify: str | bool = True
    operation_timeout: float = 1800.0
    polling_interval: float = 10.0


def _sdk(module: str) -> Any:
    """Import an Azure SDK module, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AzureSdkMissingError(
            f"the Azure SDK ({module}) is not installed",
            hint="pip install 'jupyter-cc[azure]'",
        ) from None


def default_credential(settings: AzureSettings) -> TokenCredential:
    """``DefaultAzureCredential`` for the profile: its managed identity client id and tenant."""
    identity = _sdk("azure.identity")
    kwargs: dict[str, Any] = {}
    if settings.managed_identity_client_id:
        kwargs["managed_identity_client_id"] = settings.managed_identity_client_id
    if settings.tenant_id:
        kwargs.update(dict.fromkeys(_TENANT_KEYWORDS, settings.tenant_id))
    credential: TokenCredential = identity.DefaultAzureCredential(**kwargs)
    return credential


class ArmClient:
    """The ARM calls of one profile's subscription and resource group.

    Args:
        settings: the profile's azure table (subscription, resource group, identity).
        endpoint: where ARM is (tests: a local endpoint).
        credential: a token credential; default :func:`default_credential`.
    """

    def __init__(
        self,
        settings: AzureSettings,
        endpoint: ArmEndpoint | None = None,
        credential: TokenCredential | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint or ArmEndpoint()
        self._credential = credential
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        where = f"{self.settings.subscription}/{self.settings.resource_group}"
        return f"ArmClient({where} at {self.endpoint.base_url})"

    # -- the SDK clients, made on first use ------------------------------------------------
    def _client(self, name: str, module: str, cls: str) -> Any:
        if name not in self._clients:
            if self._credential is None:
                self._credential = default_credential(self.settings)
            factory = getattr(_sdk(module), cls)
            self._clients[name] = factory(
                self._credential,
                self.settings.subscription,
                base_url=self.endpoint.base_url,
                connection_verify=self.endpoint.connection_verify,
                polling_interval=self.endpoint.polling_interval,
            )
        return self._clients[name]

    @property
    def compute(self) -> ComputeManagementClient:
        client: ComputeManagementClient = self._client(
            "compute", "azure.mgmt.compute", "ComputeManagementClient"
        )
        return client

    @property
    def network(self) -> NetworkManagementClient:
        client: NetworkManagementClient = self._client(
            "network", "azure.mgmt.network", "NetworkManagementClient"
        )
        return client

    @property
    def resources(self) -> ResourceManagementClient:
        client: ResourceManagementClient = self._client(
            "resources", "azure.mgmt.resource.resources", "ResourceManagementClient"
        )
        return client

    def _operations(self, kind: str) -> Any:
        """The SDK operation group that manages resources of ``kind`` (a Step's kind)."""
        groups: dict[str, Callable[[], Any]] = {
            "virtualMachine": lambda: self.compute.virtual_machines,
            "virtualNetwork": lambda: self.network.virtual_networks,
            "networkInterface": lambda: self.network.network_interfaces,
            "networkSecurityGroup": lambda: self.network.network_security_groups,
            "publicIPAddress": lambda: self.network.public_ip_addresses,
        }
        return groups[kind]()

    # -- calls -----------------------------------------------------------------------------
    def group_exists(self) -> bool:
        """Whether the profile's resource group exists."""
        group = self.settings.resource_group
        with _translated("check", "resource group", group, self.settings):
            return bool(self.resources.resource_groups.check_existence(group))

    def put(self, step: Step) -> dict[str, Any]:
        """Create or update the resource of ``step`` and wait for it; returns it as ARM does.

        A VM body is checked once more here, so no caller can send a non-confidential VM.
        """
        if step.kind == "virtualMachine":
            check_vm_body(step.body or {})
        group = self.settings.resource_group
        with _translated("create", step.kind, step.name, self.settings):
            if step.kind == "resourceGroup":
                return dict(self.resources.resource_groups.create_or_update(group, step.body or {}))
            poller = self._operations(step.kind).begin_create_or_update(group, step.name, step.body)
            return dict(self._wait(poller, f"creating {step.kind} {step.name}") or {})

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The resource, or None if it does not exist."""
        resource_not_found = _sdk("azure.core.exceptions").ResourceNotFoundError
        with _translated("read", kind, name, self.settings):
            try:
                if kind == "virtualMachine":
                    return dict(
                        self.compute.virtual_machines.get(
                            self.settings.resource_group, name, expand="instanceView"
                        )
                    )
                return dict(self._operations(kind).get(self.settings.resource_group, name))
            except resource_not_found:
                return None

    def vm_action(self, name: str, action: str) -> None:
        """Run ``start``, ``power_off`` or ``deallocate`` on VM ``name`` and wait for it."""
        with _translated(action.replace("_", " "), "virtualMachine", name, self.settings):
            begin = getattr(self.compute.virtual_machines, f"begin_{action}")
            self._wait(begin(self.settings.resource_group, name), f"{action} of virtualMachine {name}")

    def delete(self, kind: str, name: str) -> bool:
        """Delete the resource and wait; False if it was not there."""
        resource_not_found = _sdk("azure.core.exceptions").ResourceNotFoundError
        with _translated("delete", kind, name, self.settings):
            try:
                poller = self._operations(kind).begin_delete(self.settings.resource_group, name)
            except resource_not_found:
                return False
            self._wait(poller, f"deleting {kind} {name}")
        return True

    def list_vms(self) -> list[dict[str, Any]]:
        """Every VM in the resource group, as ARM returns them (no instance view)."""
        group = self.settings.resource_group
        with _translated("list", "virtualMachines in resource group", group, self.settings):
            return [dict(vm) for vm in self.compute.virtual_machines.list(group)]

    def _wait(self, poller: LROPoller[T], what: str) -> T:
        deadline = time.monotonic() + self.endpoint.operation_timeout
        while not poller.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ArmTimeoutError(
                    f"{what} did not finish within {self.endpoint.operation_timeout:.0f} s",
                    hint="it may still finish: see 'jupyter-cc cvm show NAME' or the portal before retrying",
                )
            poller.wait(timeout=min(left, 5.0))
        return poller.result()


@contextmanager
def _translated(verb: str, kind: str, name: str, settings: AzureSettings) -> Iterator[None]:
    """Turn SDK exceptions into one CloudError sentence about ``kind`` ``name``."""
    exceptions = _sdk("azure.core.exceptions")
    where = (
        f"{kind} {name} in resource group {settings.resource_group} (subscription {settings.subscription})"
    )
    try:
        yield
    except CloudError:
        raise
    except exceptions.ClientAuthenticationError as exc:
        if getattr(exc, "response", None) is None:  # no token at all: no credential, or it was refused
            raise CredentialError(
                f"no Azure credential could get a token to {verb} {where}",
                hint="sign in with 'az login', or run where a managed identity is assigned "
                "(and set managed_identity_client_id / tenant_id in the profile if needed)",
            ) from None
        raise _arm_error(verb, where, exc) from None
    except exceptions.HttpResponseError as exc:
        raise _arm_error(verb, where, exc) from None
    except (exceptions.ServiceRequestError, exceptions.ServiceResponseError) as exc:
        raise ArmError(
            f"cannot reach Azure Resource Manager to {verb} {where} ({type(exc).__name__})",
            hint="check the network and proxy settings, then retry",
        ) from None


def _arm_error(verb: str, where: str, exc: Any) -> ArmError:
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "")
    message = str(getattr(error, "message", "") or getattr(exc, "reason", "") or "no message")
    status = int(getattr(exc, "status_code", 0) or 0)
    remedy = _REMEDIES.get(code)
    if remedy is None and "quota" in message.lower():
        remedy = _REMEDIES["QuotaExceeded"]
    text = f"Azure refused to {verb} {where}: {code or status} ({message.rstrip('.')})"
    return ArmError(text, code=code, status=status, hint=remedy)
