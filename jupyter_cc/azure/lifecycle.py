"""Create, start, stop, deallocate, delete, list and show one profile's confidential VM.

:class:`Cvm` is what ``jupyter-cc cvm ...`` (and, later, ``%cc connect`` and the Hub spawner)
call. It plans with :mod:`jupyter_cc.azure.requests` (checked before anything is sent), talks to
ARM through :class:`~jupyter_cc.azure.client.ArmClient`, attests a CVM it created or started
before anyone uses it (:func:`~jupyter_cc.azure.hostkey.attest_and_pin`), records create, start,
deallocate, stop and delete in the audit log, and keeps when it started the CVM (``<data
dir>/azure/sessions.json``) so ``list`` can show hours running and culling can apply
``max_hours``.

A create that fails half way says what it left behind and that ``jupyter-cc cvm delete NAME``
removes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_cc import audit
from jupyter_cc.azure.client import ArmClient, ArmEndpoint
from jupyter_cc.azure.cloudinit import GUEST_PYTHON, custom_data, guest_requirement
from jupyter_cc.azure.culling import CullDecision, decide
from jupyter_cc.azure.errors import ArmError
from jupyter_cc.azure.hostkey import attest_and_pin, known_hosts_name, known_hosts_path, unpin
from jupyter_cc.azure.requests import (
    CREATED_TAG,
    PROFILE_TAG,
    Plan,
    Step,
    action_plan,
    check_vm_body,
    create_plan,
    names_for,
    network_resources,
)
from jupyter_cc.azure.settings import AzureSettings, check_admin_user
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import read_input, write_atomic
from jupyter_cc.paths import data_dir

if TYPE_CHECKING:
    from jupyter_cc.policy import Policy
    from jupyter_cc.profiles import Profile
    from jupyter_cc.remote.attestation import Attestation

__all__ = ["Cvm", "CvmInfo", "Progress"]

Progress = Callable[[str], None]
"""Told one short line per step (``creating virtualNetwork lab-vnet``); the CLI draws a bar."""

_ACTIONS = {"start": "start", "stop": "power_off", "deallocate": "deallocate"}
_ARM_ACTIONS = {"start": "start", "stop": "powerOff", "deallocate": "deallocate"}


@dataclass(frozen=True)
class CvmInfo:
    """What ``cvm show`` and ``cvm list`` print about one VM."""

    name: str
    resource_id: str
    size: str
    location: str
    power_state: str
    provisioning_state: str
    address: str | None = None
    hours_running: float | None = None
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON object of local state; empty when missing or unreadable (state, not config)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _power_state(vm: dict[str, Any]) -> str:
    statuses = ((vm.get("properties") or {}).get("instanceView") or {}).get("statuses") or []
    for status in statuses:
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return "unknown"


class Cvm:
    """One profile's CVM in Azure.

    Args:
        profile: a profile with an ``azure`` table.
        arm: the ARM client (default: one for the profile's subscription at ``endpoint``).
        endpoint: where ARM is, when ``arm`` is not given.
        progress: told each step, for a progress bar or a notebook message.
        audit_log: the audit log (default :func:`jupyter_cc.audit.audit_path`).
        clock: seconds since the epoch (tests pass a fake).
    """

    def __init__(
        self,
        profile: Profile,
        arm: ArmClient | None = None,
        *,
        endpoint: ArmEndpoint | None = None,
        progress: Progress | None = None,
        audit_log: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if profile.azure is None:
            raise InputError(
                f"profile {profile.name} has no azure table",
                hint=f"add one with 'jupyter-cc profile add {profile.name} --azure-subscription S ...' "
                "(see docs/azure.md)",
            )
        self.profile = profile
        self.settings: AzureSettings = profile.azure
        self.names = names_for(profile.name, self.settings)
        self.arm = arm or ArmClient(self.settings, endpoint)
        self._progress = progress or (lambda _line: None)
        self._audit_log = audit_log
        self._clock = clock

    # -- plans (no network, no credential) ------------------------------------------------------
    def plan_create(self) -> Plan:
        """The checked create requests: what ``create`` sends and ``create --dry-run`` prints.

        Raises:
            InputError: no ssh_user or public key; UnsafeRequestError: not a confidential VM.
        """
        admin = self.settings.admin_user or self.profile.ssh_user
        check_admin_user(admin, f"profile {self.profile.name}")
        assert admin is not None
        if not self.settings.ssh_public_key:
            raise InputError(
                f"profile {self.profile.name}: the azure table names no ssh_public_key",
                hint="pass --ssh-public-key FILE to 'jupyter-cc profile add'",
            )
        key = (
            read_input(Path(self.settings.ssh_public_key).expanduser(), "SSH public key", 16384)
            .decode()
            .strip()
        )
        if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "PRIVATE KEY" in key:
            raise InputError(f"{self.settings.ssh_public_key} is not an OpenSSH public key (a .pub file)")
        plan = create_plan(
            self.profile.name,
            self.settings,
            admin_user=admin,
            ssh_public_key=key,
            custom_data=custom_data(guest_requirement(self.settings.guest_package)),
        )
        check_vm_body(plan.vm.body or {})
        return plan

    def plan_action(self, action: str) -> list[Step]:
        """The requests of ``start``, ``stop``, ``deallocate`` or ``delete``."""
        return action_plan(self.names, _ARM_ACTIONS.get(action, action))

    # -- lifecycle ------------------------------------------------------------------------------
    def create(self, *, policy: Policy | None = None, attest_timeout: float = 900.0) -> CvmInfo:
        """Create the CVM (and its network), then attest it and pin its host key.

        ``policy`` None skips attestation (the CLI's ``--no-attest``); the CVM is then not yet
        trusted and its host key not pinned.

        Raises:
            CloudError: ARM refused a step (the hint says what was left and how to remove it).
            NotAttestedError: the CVM runs but did not attest.
        """
        plan = self.plan_create()
        if self.arm.get("virtualMachine", self.names.vm) is not None:
            raise InputError(
                f"the VM {self.names.vm} already exists in resource group {self.names.group}",
                hint=f"start it with 'jupyter-cc cvm start {self.profile.name}', or delete it first",
            )
        created: list[str] = []
        for step in plan.steps:
            if step.kind == "resourceGroup" and self.arm.group_exists():
                continue
            self._progress(f"creating {step.kind} {step.name}")
            try:
                self.arm.put(step)
            except CCError as exc:
                raise self._left_behind(exc, created) from None
            created.append(f"{step.kind} {step.name}")
        self._started()
        info = self.show()
        self._record("cvm-create", info)
        if info.address is not None:
            unpin(known_hosts_path(self.profile), known_hosts_name(info.address, self._port))
        if policy is not None:
            self.attest(info, policy, timeout=attest_timeout)
        return info

    def _left_behind(self, exc: CCError, created: list[str]) -> CCError:
        """``exc`` with a hint saying what the failed create left and how to remove it."""
        if created:
            left = f"left behind: {', '.join(created)}; "
            left += f"remove them with 'jupyter-cc cvm delete {self.profile.name}'"
        else:
            left = "nothing was created"
        exc.hint = f"{exc.hint.rstrip('.')}; {left}" if exc.hint else left
        return exc

    @property
    def _port(self) -> int:
        return self.profile.port if self.profile.port is not None else 22

    def attest(self, info: CvmInfo, policy: Policy, *, timeout: float = 900.0) -> Attestation:
        """Attest the running CVM at ``info.address`` and pin its host key (see :mod:`.hostkey`)."""
        if info.address is None:
            raise ArmError(
                f"the VM {info.name} has no IP address to attest it at",
                hint="set host in the profile to the address you reach it by",
            )
        self._progress(f"attesting {info.name} at {info.address}")
        return attest_and_pin(
            self.connect_profile(info), info.address, policy, timeout=timeout, on_wait=self._progress
        )

    def connect_profile(self, info: CvmInfo) -> Profile:
        """The profile with the CVM's address, pinned known_hosts and guest Python filled in."""
        return replace(
            self.profile,
            host=self.profile.host or info.address,
            known_hosts=str(known_hosts_path(self.profile)),
            python=self.profile.python or GUEST_PYTHON,
        )

    def remember_address(self, info: CvmInfo, config: str | Path | None = None) -> bool:
        """Write the CVM's address into the saved profile as its ``host``, so ``%cc connect``,
        ``%attest`` and kernelspecs made from the profile reach it; returns whether it did.

        Only a host that is unset, or that this method wrote before (the address can change
        when the CVM is deallocated), is replaced: a host the user set (a DNS name, a VPN
        address) is kept. The profile is read afresh from the config so other edits stay.
        """
        from jupyter_cc.profiles import get_profile, save_profile

        if info.address is None:
            return False
        path = self._state_dir() / "addresses.json"
        remembered = _read_json(path).get(self.profile.name)
        current = get_profile(self.profile.name, config)
        if current.host == info.address or current.host not in (None, remembered):
            return False
        save_profile(replace(current, host=info.address), path=config)
        addresses = _read_json(path)
        addresses[self.profile.name] = info.address
        write_atomic(path, json.dumps(addresses, indent=2, sort_keys=True).encode())
        return True

    def start(self, *, policy: Policy | None = None, attest_timeout: float = 900.0) -> CvmInfo:
        """Start a stopped or deallocated CVM and (with ``policy``) attest it again."""
        self._action("start")
        self._started()
        info = self.show()
        self._record("cvm-start", info)
        if policy is not None:
            self.attest(info, policy, timeout=attest_timeout)
        return info

    def stop(self) -> CvmInfo:
        """Power the CVM off: it keeps its hardware (and is billed for it); prefer deallocate."""
        return self._stop("stop", "cvm-stop")

    def deallocate(self, *, reason: str | None = None) -> CvmInfo:
        """Deallocate the CVM: no compute charges until it is started again."""
        return self._stop("deallocate", "cvm-deallocate", reason=reason)

    def _stop(self, action: str, event: str, *, reason: str | None = None) -> CvmInfo:
        self._action(action)
        hours = self._hours()
        self._forget()
        info = replace(self.show(), hours_running=hours)
        self._record(event, info, **({"reason": reason} if reason else {}))
        return info

    def _action(self, action: str) -> None:
        self._require_vm()
        self._progress(f"{action} virtualMachine {self.names.vm}")
        self.arm.vm_action(self.names.vm, _ACTIONS[action])

    def _require_vm(self) -> dict[str, Any]:
        vm = self.arm.get("virtualMachine", self.names.vm)
        if vm is None:
            raise ArmError(
                f"there is no VM {self.names.vm} in resource group {self.names.group}",
                code="ResourceNotFound",
                status=404,
                hint=f"create it with 'jupyter-cc cvm create {self.profile.name}'",
            )
        return vm

    def delete(self) -> list[str]:
        """Delete the CVM, its disk and NIC, and the network resources jupyter-cc created for it.

        Returns what was deleted. Resources not tagged as created by jupyter-cc for this
        profile (an existing subnet's VNet, say) are left alone.
        """
        deleted = []
        vm = self.arm.get("virtualMachine", self.names.vm)
        if vm is not None:
            info = self._info(vm)
            self._progress(f"deleting virtualMachine {self.names.vm}")
            self.arm.delete("virtualMachine", self.names.vm)
            deleted.append(f"virtualMachine {self.names.vm}")
            self._record("cvm-delete", info)
            if info.address is not None:
                unpin(known_hosts_path(self.profile), known_hosts_name(info.address, self._port))
        for kind, name in network_resources(self.names):
            resource = self.arm.get(kind, name)
            tags = (resource or {}).get("tags") or {}
            if (
                resource is None
                or tags.get(CREATED_TAG) != "true"
                or tags.get(PROFILE_TAG) != self.profile.name
            ):
                continue
            self._progress(f"deleting {kind} {name}")
            self.arm.delete(kind, name)
            deleted.append(f"{kind} {name}")
        self._forget()
        return deleted

    def show(self) -> CvmInfo:
        """The VM's size, power state, address and hours running in this session."""
        return self._info(self._require_vm())

    def list(self) -> list[CvmInfo]:
        """Every VM in the profile's resource group that jupyter-cc created (tagged with a profile)."""
        out = []
        for vm in self.arm.list_vms():
            tags = vm.get("tags") or {}
            if PROFILE_TAG not in tags:
                continue
            full = self.arm.get("virtualMachine", str(vm.get("name"))) or vm
            out.append(replace(self._info(full, address=False), profile=tags[PROFILE_TAG]))
        return out

    def cull(
        self, last_activity: float | None, *, warn: Progress | None = None, judge_idle: bool = True
    ) -> CullDecision:
        """Apply the profile's ``idle_minutes`` and ``max_hours`` to the running CVM.

        Args:
            last_activity: when a kernel last ran code (the guest agent's report), or None.
            warn: told the warning sentence when ``max_hours`` is near.
            judge_idle: False when nobody knows when a kernel last ran (then only ``max_hours``
                applies, so a busy CVM is never deallocated as idle).
        """
        info = self.show()
        if info.power_state != "running":
            return CullDecision("keep", f"it is {info.power_state}, not running")
        decision = decide(
            now=self._clock(),
            started_at=self._session().get(self.names.vm_id),
            last_activity=last_activity,
            idle_minutes=self.settings.idle_minutes if judge_idle else 0,
            max_hours=self.settings.max_hours,
        )
        if decision.action == "warn" and warn is not None:
            warn(f"CVM {self.names.vm}: {decision.reason}")
        if decision.action == "deallocate":
            self.deallocate(reason=decision.reason)
        return decision

    # -- helpers --------------------------------------------------------------------------------
    def _info(self, vm: dict[str, Any], *, address: bool = True) -> CvmInfo:
        props = vm.get("properties") or {}
        name = str(vm.get("name") or self.names.vm)
        resource_id = str(vm.get("id") or self.names.vm_id)
        power = _power_state(vm)
        started = self._session().get(resource_id)
        hours = (self._clock() - started) / 3600 if started is not None and power == "running" else None
        return CvmInfo(
            name=name,
            resource_id=resource_id,
            size=str((props.get("hardwareProfile") or {}).get("vmSize", "")),
            location=str(vm.get("location", "")),
            power_state=power,
            provisioning_state=str(props.get("provisioningState", "")),
            address=self._address() if address else None,
            hours_running=round(hours, 2) if hours is not None else None,
        )

    def _address(self) -> str | None:
        """The public IP if the profile asked for one, else the NIC's private IP."""
        if self.settings.public_ip:
            ip = self.arm.get("publicIPAddress", self.names.public_ip) or {}
            value = (ip.get("properties") or {}).get("ipAddress")
            if value:
                return str(value)
        nic = self.arm.get("networkInterface", self.names.nic) or {}
        for config in (nic.get("properties") or {}).get("ipConfigurations") or []:
            value = (config.get("properties") or {}).get("privateIPAddress")
            if value:
                return str(value)
        return None

    def _record(self, event: str, info: CvmInfo, **extra: Any) -> None:
        audit.record(
            event,
            path=self._audit_log,
            profile=self.profile.name,
            vm_id=info.resource_id,
            size=info.size or self.settings.size,
            location=info.location or self.settings.location,
            power_state=info.power_state,
            **({"hours_running": info.hours_running} if info.hours_running is not None else {}),
            **extra,
        )

    @staticmethod
    def _state_dir() -> Path:
        folder = data_dir() / "azure"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _sessions_path(self) -> Path:
        return self._state_dir() / "sessions.json"

    def _session(self) -> dict[str, float]:
        data = _read_json(self._sessions_path())
        return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}

    def _save_sessions(self, sessions: dict[str, float]) -> None:
        path = self._sessions_path()
        write_atomic(path, json.dumps(sessions, indent=2, sort_keys=True).encode())

    def _started(self) -> None:
        sessions = self._session()
        sessions[self.names.vm_id] = self._clock()
        self._save_sessions(sessions)

    def _forget(self) -> None:
        sessions = self._session()
        if sessions.pop(self.names.vm_id, None) is not None:
            self._save_sessions(sessions)

    def _hours(self) -> float | None:
        started = self._session().get(self.names.vm_id)
        return round((self._clock() - started) / 3600, 2) if started is not None else None
