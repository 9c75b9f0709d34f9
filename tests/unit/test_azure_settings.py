"""The [profiles.NAME.azure] table: what a profile may ask Azure for, refused before any request."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jupyter_cc.azure.settings import DEFAULT_IMAGE, AzureSettings, size_tee
from jupyter_cc.errors import InputError
from jupyter_cc.profiles import Profile, get_profile, load_profiles, save_profile

SUB = "11111111-2222-3333-4444-555555555555"
TABLE = {"subscription": SUB, "resource_group": "rg1", "location": "westeurope", "size": "Standard_DC4as_v5"}


def test_a_minimal_table_gets_confidential_defaults() -> None:
    s = AzureSettings.from_table(TABLE)
    assert (s.security_type, s.security_encryption_type) == ("ConfidentialVM", "DiskWithVMGuestState")
    assert s.secure_boot and s.vtpm and not s.public_ip
    assert s.image == DEFAULT_IMAGE and s.tee == "snp"
    assert s.to_table() == TABLE  # only what differs from the defaults is written back


@pytest.mark.parametrize(
    ("size", "tee"),
    [
        ("Standard_DC4as_v5", "snp"),
        ("Standard_EC8ads_v5", "snp"),
        ("Standard_DC2as_v6", "snp"),
        ("Standard_DC4es_v5", "tdx"),
        ("Standard_DC8eds_v6", "tdx"),
        ("Standard_NCC40ads_H100_v5", "snp+h100"),
        ("Standard_D4s_v5", None),
        ("Standard_DC4s_v3", None),  # SGX enclaves, not a confidential VM
        ("Standard_DC4as_cc_v5", None),
    ],
)
def test_only_confidential_vm_sizes_have_a_tee(size: str, tee: str | None) -> None:
    assert size_tee(size) == tee


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"size": "Standard_D4s_v5"}, "not a confidential VM size"),
        ({"size": "Standard_DC4as_cc_v5"}, "retires 2026-08-01"),
        ({"security_type": "TrustedLaunch"}, "not ConfidentialVM"),
        ({"security_encryption_type": "NonPersistedTPM"}, "is not one of DiskWithVMGuestState"),
        ({"vtpm": False}, "vtpm must be true"),
        ({"secure_boot": False}, "secure_boot and vtpm must be true"),
        ({"image": "Canonical:ubuntu-24_04-lts:server:latest"}, "neither a confidential VM image URN"),
        ({"subscription": "not-a-uuid"}, "not a subscription id"),
        ({"location": "West Europe"}, "not an Azure region name"),
        ({"public_ip": True}, "needs ssh_allowed_from"),
        ({"public_ip": True, "ssh_allowed_from": "0.0.0.0/0"}, "not a large part of the internet"),
        ({"public_ip": True, "ssh_allowed_from": "0.0.0.0/1"}, "not a large part of the internet"),
        (
            {"disk_encryption_set": "/x", "security_encryption_type": "VMGuestStateOnly"},
            "needs security_encryption_type",
        ),
    ],
)
def test_unsafe_or_wrong_settings_are_refused_with_the_reason(change: dict[str, object], words: str) -> None:
    with pytest.raises(InputError) as caught:
        AzureSettings.from_table({**TABLE, **change})
    assert words in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InputError) as caught:
        AzureSettings.from_table({**TABLE, "size": "Standard_D4s_v5", "vtpm": False, "location": "X"})
    text = str(caught.value)
    assert "not a confidential VM size" in text and "vtpm" in text and "region" in text


def test_unknown_missing_and_mistyped_keys_are_refused() -> None:
    with pytest.raises(InputError, match="unknown key"):
        AzureSettings.from_table({**TABLE, "sise": "x"})
    with pytest.raises(InputError, match="lacks size"):
        AzureSettings.from_table({k: v for k, v in TABLE.items() if k != "size"})
    with pytest.raises(InputError, match="idle_minutes is '60', expected an integer"):
        AzureSettings.from_table({**TABLE, "idle_minutes": "60"})
    with pytest.raises(InputError, match="public_ip is 'yes', expected true or false"):
        AzureSettings.from_table({**TABLE, "public_ip": "yes"})


def test_a_profile_with_an_azure_table_round_trips_through_the_config(tmp_path: Path) -> None:
    config = tmp_path / "cc.toml"
    config.write_text('# my settings\n[policies]\nx = 1\n\n[profiles.other]\nhost = "h"\n')
    azure = AzureSettings.from_table(
        {**TABLE, "tags": {"team": "stats"}, "public_ip": True, "ssh_allowed_from": "203.0.113.7/32"}
    )
    profile = Profile(name="lab", ssh_user="azureuser", azure=azure)  # no host: looked up in Azure
    save_profile(profile, path=config)
    text = config.read_text()
    assert "[profiles.lab.azure]" in text and "# my settings" in text
    assert get_profile("lab", config) == profile
    assert load_profiles(config)["other"].host == "h"
    assert profile.to_json()["azure"]["tags"] == {"team": "stats"}


def test_a_bad_azure_table_names_the_profile_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "cc.toml"
    config.write_text(f'[profiles.lab]\nssh_user = "u"\n[profiles.lab.azure]\nsubscription = "{SUB}"\n')
    with pytest.raises(InputError) as caught:
        load_profiles(config)
    assert str(config) in str(caught.value) and "profile lab: azure lacks" in str(caught.value)


def test_settings_are_immutable() -> None:
    s = AzureSettings.from_table(TABLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.size = "Standard_D4s_v5"  # type: ignore[misc]
