"""Every notebook in examples/ runs headless (nbclient) against the simulated TEE behind a real
sshd, with the embedded key broker: what ``make demo`` does, over SSH instead of locally."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jupyter_cc import audit
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.profiles import save_profile
from tests.support.sshd import Sshd, sim_profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import run_demo  # noqa: E402

pytestmark = pytest.mark.timeout(300)
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_runs_against_the_simulated_cvm(
    sshd: Sshd, notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "jupyter_cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    policy = simulated_policy_path()
    save_profile(sim_profile(sshd, "cvm-ssh", policy=policy))
    sealed = run_demo.prepare(tmp_path, policy)
    with run_demo.broker(tmp_path) as kbs:
        env = {
            "JUPYTER_CC_CONFIG": str(tmp_path / "jupyter_cc.toml"),
            "JUPYTER_CC_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            "JUPYTER_CC_DEMO_KBS": kbs,
            "JUPYTER_CC_DEMO_KBS_PIN": run_demo.broker_pin(tmp_path),
            "JUPYTER_CC_DEMO_DATA": str(sealed),
            "JUPYTER_CC_DEMO_PROFILE": "cvm-ssh",
        }
        nb = run_demo.execute(notebook, tmp_path / "executed.ipynb", env, tmp_path)
    text = run_demo.outputs_text(nb)
    assert "rows analysed: 240" in text
    assert "sealed bytes, unreadable here" in text  # a sealed value may leave
    assert "neither sealed nor declassified" in text  # the raw table may not
    assert "session cvm-ssh: kernel running" in text
    local = [e["event"] for e in audit.read(tmp_path / "audit.jsonl")]
    assert {"attest", "push", "pull"} <= set(local)
    guest = [e["event"] for e in audit.read(sshd.dir / "guest-audit.jsonl")]
    assert {"release", "unseal", "declassify"} <= set(guest)
    assert audit.verify(tmp_path / "audit.jsonl").ok
    assert audit.verify(sshd.dir / "guest-audit.jsonl").ok
    # The card is in the executed notebook, with its HTML fallback for frontends without widgets.
    html = [
        o["data"]["text/html"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert sum("SIMULATED" in h for h in html) >= 2  # %attest from outside, and from inside the TEE
