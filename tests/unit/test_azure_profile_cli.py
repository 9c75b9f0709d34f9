"""``jupyter-cc profile add NAME --azure-*``: a profile whose CVM jupyter-cc creates in Azure."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_cc.cli import main
from jupyter_cc.paths import data_dir
from jupyter_cc.profiles import get_profile

SUB = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cc.toml"
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(path))
    return path


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDc3xE3bRAzUcyIcIpHRiZr5nIEsSJB1Ib2t3I3LPdDf me\n")
    return key


def _add(pub: Path, *extra: str) -> list[str]:
    return [
        "profile", "add", "lab",
        "--azure-subscription", SUB, "--azure-resource-group", "rg1",
        "--azure-location", "westeurope", "--azure-size", "Standard_DC4es_v5",
        "--ssh-user", "azureuser", "--ssh-public-key", str(pub), *extra,
    ]  # fmt: skip


def test_profile_add_writes_the_azure_table(
    config: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            _add(
                pub,
                "--azure-tag",
                "team=stats",
                "--azure-idle-minutes",
                "30",
                "--azure-encryption",
                "VMGuestStateOnly",
            )
        )
        == 0
    )
    assert "Azure CVM lab" in capsys.readouterr().out
    profile = get_profile("lab", config)
    assert profile.azure is not None and profile.host is None
    assert profile.azure.size == "Standard_DC4es_v5" and profile.azure.tee == "tdx"
    assert profile.azure.idle_minutes == 30 and dict(profile.azure.tags) == {"team": "stats"}
    assert profile.azure.security_encryption_type == "VMGuestStateOnly"
    assert profile.azure.ssh_public_key == str(pub)
    # Its own known_hosts: the host key is pinned there after attestation, never taken on first use.
    assert profile.known_hosts == str(data_dir() / "azure" / "lab.known_hosts")
    assert profile.python == "/opt/jupyter-cc/bin/python"
    assert "[profiles.lab.azure]" in config.read_text()
    assert main(["profile", "list"]) == 0
    assert "azure:rg1/lab" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--azure-size", "Standard_D4s_v5"], "not a confidential VM size"),
        (["--azure-public-ip"], "needs ssh_allowed_from"),
        (["--azure-tag", "novalue"], "KEY=VALUE"),
        (["--ssh-user", "root"], "cannot be an Azure admin user"),
        (["--transport", "local"], "reached over SSH"),
    ],
)
def test_profile_add_refuses_what_azure_or_safety_would_refuse(
    config: Path, pub: Path, extra: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_add(pub, *extra)) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not config.exists()


def test_partial_azure_options_say_what_is_missing(
    config: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "add", "lab", "--azure-size", "Standard_DC4as_v5", "--ssh-user", "u"]) == 2
    assert "lacks subscription, resource_group, location" in capsys.readouterr().err


def test_a_missing_public_key_file_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_add(tmp_path / "nope.pub")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_cvm_command_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cvm", "--help"])
    out = capsys.readouterr().out
    for action in ("create", "start", "stop", "deallocate", "delete", "list", "show"):
        assert action in out
