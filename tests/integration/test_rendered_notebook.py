"""A saved notebook shows the card: nbclient runs a remote ``%attest PROFILE`` against the
simulated CVM behind the real sshd, nbconvert renders it to HTML, and Debian's Chromium (headless,
no network) shows the card's TEE, measurement, verdict and SIMULATED banner."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.profiles import save_profile
from tests.support.env import ROOT, need_tool
from tests.support.sshd import Sshd, sim_profile

pytestmark = pytest.mark.timeout(300)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SCREENSHOT = ROOT / "ui-tests" / "screenshots" / "rendered-card.png"

# Appended to the rendered page: after load, write what a reader sees of each card into the DOM
# (visible or not, and its rendered text), so --dump-dom reports it.
PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll(".jupyter-cc-attestation").forEach(function (el) {
    var box = el.getBoundingClientRect();
    var style = window.getComputedStyle(el);
    out.push({visible: el.offsetParent !== null && box.width > 0 && box.height > 0
                       && style.visibility !== "hidden",
              text: el.innerText});
  });
  var probe = document.createElement("pre");
  probe.id = "cc-probe";
  probe.textContent = JSON.stringify(out);
  document.body.appendChild(probe);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        need_tool("Debian's Chromium (/usr/bin/chromium; apt-get install chromium)")
    assert found is not None
    return found


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def execute(notebook: Any, cwd: Path) -> Any:
    """nbclient with its defaults: the widget state is saved in the notebook, as nbclient does."""
    from nbclient import NotebookClient

    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return notebook


def test_executed_notebook_renders_the_card_in_chromium(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    browser = chromium()
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "jupyter_cc.toml"))
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    save_profile(sim_profile(sshd, "cvm-sim", policy=simulated_policy_path()))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext jupyter_cc"),
        nbformat.v4.new_code_cell("card = %attest cvm-sim\ncard"),
    ]
    execute(nb, tmp_path)
    nbformat.write(nb, tmp_path / "executed.ipynb")  # type: ignore[no-untyped-call]

    outputs = nb.cells[1].outputs
    bundles = [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(bundles) == 1, outputs
    assert {"text/html", "text/plain"} <= set(bundles[0]["data"])
    assert SIMULATED_BANNER in bundles[0]["data"]["text/plain"]
    model_id = bundles[0]["data"][WIDGET_VIEW]["model_id"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert model_id in state  # what makes nbconvert choose the widget view

    exporter = HTMLExporter()  # type: ignore[no-untyped-call]
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "executed"}})
    (tmp_path / "executed.html").write_text(body)
    page = tmp_path / "probed.html"
    page.write_text(body.replace("</body>", PROBE + "</body>", 1))

    dom = run_chromium(
        browser, tmp_path / "chromium", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="cc-probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    cards = json.loads(html.unescape(found.group(1)))
    visible = [c["text"] for c in cards if c["visible"]]
    assert len(visible) == 1, cards  # shown once, by the static copy (no widget renderer offline)
    text = visible[0]
    assert "Attested: policy 'simulated-demo' passed" in text
    assert SIMULATED_BANNER in text
    assert re.search(r"TEE\s+sim-snp", text), text
    claims = bundles[0]["data"]["text/plain"]
    measurement = re.search(r"Measurement: ([0-9a-f]{96})", claims)
    assert measurement, claims
    shown = re.search(r"Measurement\s+(\S+)", text)
    assert shown, text
    head, _, tail = shown.group(1).partition("…")
    assert measurement.group(1).startswith(head) and measurement.group(1).endswith(tail)
    assert "Policy\tsimulated-demo: passed" in text or re.search(r"Policy\s+simulated-demo: passed", text)

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = run_chromium(
        browser,
        tmp_path / "chromium-shot",
        "--virtual-time-budget=5000",
        "--hide-scrollbars",
        "--window-size=1100,900",
        f"--screenshot={SCREENSHOT}",
        (tmp_path / "executed.html").as_uri(),
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert SCREENSHOT.stat().st_size > 10_000
