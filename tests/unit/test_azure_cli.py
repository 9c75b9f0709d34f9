"""``jupyter-cc cvm``: progress on a terminal and in a log, and a clear sentence without the extra."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from jupyter_cc.azure.client import ArmClient
from jupyter_cc.azure.errors import AzureSdkMissingError
from jupyter_cc.azure.settings import AzureSettings
from jupyter_cc.cli import cvm as cvm_cli
from jupyter_cc.cli import main
from jupyter_cc.profiles import Profile, save_profile

SUB = "11111111-2222-3333-4444-555555555555"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_progress_bar_and_a_log_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cvm_cli._progress_bar("create", True) as tick:
        assert tick is not None
        tick("creating virtualNetwork lab-vnet")
        tick("creating virtualMachine lab")
    assert "creating virtualMachine lab: 2 steps" in terminal.getvalue()

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with cvm_cli._progress_bar("create", True) as tick:
        assert tick is not None
        tick("creating virtualMachine lab")
    assert log.getvalue() == "create: creating virtualMachine lab\n"


def test_without_the_azure_extra_the_sentence_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource.resources"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    settings = AzureSettings(SUB, "rg1", "westeurope", "Standard_DC4as_v5")
    with pytest.raises(AzureSdkMissingError, match=r"pip install 'jupyter-cc\[azure\]'"):
        ArmClient(settings, credential=object()).compute  # type: ignore[arg-type]

    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "cc.toml"))
    save_profile(Profile(name="lab", ssh_user="azureuser", azure=settings))
    monkeypatch.setattr("jupyter_cc.azure.client.default_credential", lambda _settings: object())
    assert main(["cvm", "show", "lab"]) == 2
    err = capsys.readouterr().err
    assert "the Azure SDK (azure.mgmt.compute) is not installed; pip install 'jupyter-cc[azure]'" in err
    assert len(err.strip().splitlines()) == 1
