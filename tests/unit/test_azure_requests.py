"""The ARM request bodies: Azure's confidential VM schema, checked before anything is sent."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc import __version__
from jupyter_cc.azure import client as azure_client
from jupyter_cc.azure.cloudinit import guest_requirement, user_data
from jupyter_cc.azure.errors import UnsafeRequestError
from jupyter_cc.azure.lifecycle import Cvm
from jupyter_cc.azure.requests import check_vm_body, create_plan
from jupyter_cc.azure.settings import AzureSettings
from jupyter_cc.cli import main
from jupyter_cc.errors import InputError
from jupyter_cc.profiles import Profile, save_profile

SUB = "11111111-2222-3333-4444-555555555555"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDc3xE3bRAzUcyIcIpHRiZr5nIEsSJB1Ib2t3I3LPdDf me@laptop"


def _settings(**change: Any) -> AzureSettings:
    return AzureSettings(SUB, "rg1", "westeurope", "Standard_DC4as_v5", **change)


def _plan(**change: Any) -> Any:
    return create_plan(
        "lab", _settings(**change), admin_user="azureuser", ssh_public_key=KEY, custom_data="e30="
    )


def test_the_vm_body_follows_azures_confidential_vm_schema() -> None:
    props = _plan().vm.body["properties"]
    assert props["securityProfile"] == {
        "securityType": "ConfidentialVM",
        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
    }
    os_disk = props["storageProfile"]["osDisk"]
    assert os_disk["managedDisk"]["securityProfile"] == {"securityEncryptionType": "DiskWithVMGuestState"}
    assert os_disk["createOption"] == "FromImage" and os_disk["deleteOption"] == "Delete"
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "cvm",
        "version": "latest",
    }
    linux = props["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": KEY}]
    assert "adminPassword" not in props["osProfile"]
    assert props["hardwareProfile"] == {"vmSize": "Standard_DC4as_v5"}


def test_a_customer_key_goes_with_full_disk_encryption() -> None:
    des = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/diskEncryptionSets/cmk"
    disk = _plan(disk_encryption_set=des).vm.body["properties"]["storageProfile"]["osDisk"]["managedDisk"]
    assert disk["securityProfile"] == {
        "securityEncryptionType": "DiskWithVMGuestState",
        "diskEncryptionSet": {"id": des},
    }


def test_no_public_ip_and_no_nsg_unless_asked() -> None:
    plan = _plan()
    assert [s.kind for s in plan.steps] == [
        "resourceGroup",
        "virtualNetwork",
        "networkInterface",
        "virtualMachine",
    ]
    nic = plan.steps[2].body["properties"]
    assert (
        "publicIPAddress" not in nic["ipConfigurations"][0]["properties"]
        and "networkSecurityGroup" not in nic
    )


def test_a_public_ip_comes_with_an_nsg_that_lets_only_the_caller_reach_ssh() -> None:
    plan = _plan(public_ip=True, ssh_allowed_from="203.0.113.7/32")
    kinds = [s.kind for s in plan.steps]
    assert kinds == [
        "resourceGroup",
        "networkSecurityGroup",
        "virtualNetwork",
        "publicIPAddress",
        "networkInterface",
        "virtualMachine",
    ]
    (rule,) = plan.steps[1].body["properties"]["securityRules"]
    assert rule["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    assert rule["properties"]["destinationPortRange"] == "22" and rule["properties"]["access"] == "Allow"
    nic = plan.steps[4].body["properties"]
    assert nic["networkSecurityGroup"]["id"].endswith("/networkSecurityGroups/lab-nsg")
    assert nic["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"].endswith(
        "/publicIPAddresses/lab-ip"
    )


def test_an_existing_subnet_means_no_new_vnet() -> None:
    vnet = f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub"
    subnet = f"{vnet}/subnets/cvms"
    plan = _plan(subnet_id=subnet)
    assert "virtualNetwork" not in [s.kind for s in plan.steps]
    assert plan.steps[1].body["properties"]["ipConfigurations"][0]["properties"]["subnet"] == {"id": subnet}


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("securityProfile", "securityType"), "Standard", "securityType is not ConfidentialVM"),
        (("securityProfile", "securityType"), "TrustedLaunch", "securityType is not ConfidentialVM"),
        (("securityProfile", "uefiSettings", "vTpmEnabled"), False, "vTPM"),
        (
            ("storageProfile", "osDisk", "managedDisk", "securityProfile"),
            {},
            "securityEncryptionType is None",
        ),
        (("hardwareProfile", "vmSize"), "Standard_D4s_v5", "not a confidential VM size"),
        (("storageProfile", "imageReference", "sku"), "server", "not a confidential VM image"),
        (("osProfile", "linuxConfiguration", "disablePasswordAuthentication"), False, "password"),
        (("osProfile", "adminPassword"), "hunter2", "admin password"),
    ],
)
def test_a_body_that_is_not_a_confidential_encrypted_vm_is_refused(
    path: tuple[str, ...], value: Any, words: str
) -> None:
    body = copy.deepcopy(_plan().vm.body)
    node = body["properties"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(UnsafeRequestError) as caught:
        check_vm_body(body)
    assert words in str(caught.value) and "nothing was sent to Azure" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_every_problem_of_a_body_is_listed() -> None:
    body = copy.deepcopy(_plan().vm.body)
    del body["properties"]["securityProfile"]
    body["properties"]["hardwareProfile"]["vmSize"] = "Standard_B2s"
    with pytest.raises(UnsafeRequestError) as caught:
        check_vm_body(body)
    assert str(caught.value).count(";") >= 3  # security type, uefi, size, and the hint


def test_cloud_init_installs_this_version_and_the_guest_agent_service() -> None:
    text = user_data(guest_requirement())
    assert text.startswith("#cloud-config\n")
    assert json.dumps(f"jupyter-cc=={__version__}") in text
    assert '["/opt/jupyter-cc/bin/jupyter-cc", "guest", "install-service"]' in text
    assert guest_requirement("https://example.org/jupyter_cc-0.1.0-py3-none-any.whl").endswith(".whl")


def _azure_profile(tmp_path: Path, **change: Any) -> Profile:
    key = tmp_path / "id.pub"
    key.write_text(KEY + "\n")
    return Profile(name="lab", ssh_user="azureuser", azure=_settings(ssh_public_key=str(key), **change))


def test_plan_create_reads_the_public_key_and_embeds_the_cloud_init(tmp_path: Path) -> None:
    plan = Cvm(_azure_profile(tmp_path)).plan_create()
    os_profile = plan.vm.body["properties"]["osProfile"]
    assert os_profile["adminUsername"] == "azureuser"
    assert "install-service" in base64.b64decode(os_profile["customData"]).decode()


def test_a_private_key_given_as_the_public_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    profile = Profile(name="lab", ssh_user="azureuser", azure=_settings(ssh_public_key=str(key)))
    with pytest.raises(InputError) as caught:
        Cvm(profile).plan_create()
    assert "not an OpenSSH public key" in str(caught.value) and "b3BlbnNz" not in str(caught.value)


def test_a_reserved_admin_user_is_refused(tmp_path: Path) -> None:
    profile = dataclasses.replace(_azure_profile(tmp_path), ssh_user="root")
    with pytest.raises(InputError, match="cannot be an Azure admin user"):
        Cvm(profile).plan_create()


def _no_sdk(module: str) -> Any:
    raise AssertionError(f"--dry-run imported {module}")


@pytest.mark.parametrize("action", ["create", "start", "stop", "deallocate", "delete", "show", "list"])
def test_dry_run_prints_the_requests_without_the_sdk_a_credential_or_the_network(
    action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    monkeypatch.setattr(azure_client, "_sdk", _no_sdk)
    save_profile(_azure_profile(tmp_path))
    assert main(["cvm", action, "lab", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "lab" and out["requests"]
    vm = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/lab"
    if action == "create":
        assert out["requests"][-1]["path"] == vm and out["requests"][-1]["method"] == "PUT"
        check_vm_body(out["requests"][-1]["body"])
    elif action in ("start", "deallocate"):
        assert out["requests"] == [
            {"kind": "virtualMachine", "name": "lab", "method": "POST", "path": f"{vm}/{action}"}
        ]
    elif action == "stop":
        assert out["requests"][0]["path"] == f"{vm}/powerOff"
    elif action == "delete":
        assert out["requests"][0] == {"kind": "virtualMachine", "name": "lab", "method": "DELETE", "path": vm}


def test_cvm_on_a_profile_without_azure_says_how_to_add_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    save_profile(Profile(name="plain", host="cvm.example.org"))
    assert main(["cvm", "create", "plain", "--dry-run"]) == 2
    assert "has no azure table" in capsys.readouterr().err


def test_the_arm_client_checks_a_vm_body_again_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_cc.azure.client import ArmClient
    from jupyter_cc.azure.requests import Step

    monkeypatch.setattr(azure_client, "_sdk", _no_sdk)  # refused before any client or credential
    body = copy.deepcopy(_plan().vm.body)
    body["properties"]["securityProfile"]["securityType"] = "Standard"
    with pytest.raises(UnsafeRequestError):
        ArmClient(_settings()).put(Step("virtualMachine", "lab", "PUT", "/vm", body))
