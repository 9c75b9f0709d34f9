"""%cc connect/status/push/pull/disconnect, %%confidential and %declassify, from an ordinary
IPython shell to an attested kernel behind a real sshd (simulated TEE)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_cc import audit
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.notebook.session import RemoteError
from jupyter_cc.notebook.session_magics import SessionMagics
from jupyter_cc.profiles import save_profile
from jupyter_cc.seal.envelope import MAGIC
from tests.support.sshd import Sshd, sim_profile

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def shell(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "jupyter_cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    save_profile(sim_profile(sshd, "cvm", policy=simulated_policy_path()))
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("jupyter_cc")
    yield ip
    magics = ip.magics_manager.registry["SessionMagics"]
    assert isinstance(magics, SessionMagics)
    if magics.session is not None:
        magics.session.close()
        magics.session = None


def test_confidential_cells_push_pull_and_declassify(
    shell: InteractiveShell, sshd: Sshd, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    shell.run_line_magic("cc", "connect cvm")
    out = capsys.readouterr().out
    assert (
        "connected to cvm: sim-snp (SIMULATED — not a hardware TEE) verified, policy simulated-demo passed"
        in out
    )

    shell.run_cell_magic(
        "confidential",
        "",
        "import os\nsecret = 6 * 7\nprint('inside', os.environ['JUPYTER_CC_CONFIDENTIAL'])",
    )
    assert "inside 1" in capsys.readouterr().out

    with pytest.raises(RemoteError) as info:
        shell.run_cell_magic("confidential", "", "1 / 0")
    assert info.value.ename == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in info.value._render_traceback_())

    shell.user_ns["rows"] = [{"age": 34, "hba1c": 5.4}, {"age": 68, "hba1c": 6.1}]
    shell.run_line_magic("cc", "push rows --as cohort")
    shell.run_cell_magic("confidential", "", "print(len(cohort), sum(r['age'] for r in cohort))")
    assert "2 102" in capsys.readouterr().out

    with pytest.raises(UsageError, match="'secret' is neither sealed nor declassified"):
        shell.run_line_magic("cc", "pull secret")
    assert "secret" not in shell.user_ns

    shell.run_cell_magic(
        "confidential", "", "mean_age = 51.0\n%declassify mean_age --reason 'aggregate of 2 patients'"
    )
    shell.run_line_magic("cc", "pull mean_age")
    assert shell.user_ns["mean_age"] == 51.0
    assert "declassified: aggregate of 2 patients" in capsys.readouterr().out

    # Declassification is a snapshot: changing the value afterwards does not leak the new one.
    shell.run_cell_magic("confidential", "", "mean_age = 99.0")
    shell.run_line_magic("cc", "pull mean_age --as again")
    assert shell.user_ns["again"] == 51.0

    shell.run_cell_magic(
        "confidential",
        "",
        "import os\nfrom jupyter_cc.seal import seal_value\n"
        "sealed = bytes(seal_value({'secret': secret}, os.urandom(32)))",
    )
    shell.run_line_magic("cc", "pull sealed")
    assert bytes(shell.user_ns["sealed"][: len(MAGIC)]) == MAGIC

    shell.run_line_magic("cc", "status")
    assert "session cvm: kernel running; sim-snp verified" in capsys.readouterr().out
    shell.run_line_magic("cc", "disconnect")
    with pytest.raises(UsageError, match="no confidential session"):
        shell.run_cell_magic("confidential", "", "1")

    events = [e["event"] for e in audit.read(tmp_path / "audit.jsonl")]
    assert {"push", "pull"} <= set(events)  # the ordinary kernel's side
    assert audit.verify(tmp_path / "audit.jsonl").ok
    guest_log = sshd.dir / "guest-audit.jsonl"
    guest_events = [e for e in audit.read(guest_log) if e["event"] == "declassify"]
    assert guest_events[-1]["reason"] == "aggregate of 2 patients"  # the confidential kernel's side
    assert audit.verify(guest_log).ok


def test_interrupting_the_local_cell_interrupts_the_remote_one(shell: InteractiveShell) -> None:
    shell.run_line_magic("cc", "connect cvm")
    # A real SIGINT, as Jupyter's interrupt of the ordinary kernel sends.
    timer = threading.Timer(1.5, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("confidential", "", "import time\ntime.sleep(60)")
    assert time.monotonic() - started < 30
    shell.run_cell_magic("confidential", "", "still_alive = True")  # the remote kernel survived


def test_refusals_are_one_sentence(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="nowhere"):
        shell.run_line_magic("cc", "connect nowhere")
    with pytest.raises(UsageError, match="no confidential session"):
        shell.run_line_magic("cc", "push x")
    with pytest.raises(UsageError, match="unknown command"):
        shell.run_line_magic("cc", "teleport")
    with pytest.raises(UsageError, match="there is no variable"):
        shell.run_line_magic("declassify", "nothing --reason r")
    shell.user_ns["v"] = 1
    with pytest.raises(UsageError, match="say why with --reason"):
        shell.run_line_magic("declassify", "v")
