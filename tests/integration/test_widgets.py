"""The attestation card: colours, the simulated banner, every failed rule, escaping, fallbacks."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.notebook.card import AttestationCard, card_html, card_text

MEASUREMENT = "ab" * 48
GREEN, AMBER, RED = "#1a7f37", "#9a6700", "#cf222e"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def state(**overrides: Any) -> dict[str, Any]:
    """An ``Attestation.to_json()``-shaped state for a real SNP TEE that passed."""
    claims = {
        "tee": "snp",
        "simulated": False,
        "debug": False,
        "report_data": "00" * 64,
        "measurement": MEASUREMENT,
        "product": "Genoa",
        "reported_tcb": {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 72},
    }
    out: dict[str, Any] = {
        "confidential": True,
        "simulated": False,
        "evidence_kind": "snp",
        "verdict": {"passed": True, "policy": "prod-snp", "reasons": []},
        "claims": claims,
        "attested_at": "2026-11-27T10:00:00Z",
        "evidence_sha256": "cd" * 32,
        "source": "configfs-tsm",
        "gpu": None,
    }
    out.update(overrides)
    return out


def simulated_state() -> dict[str, Any]:
    s = state(simulated=True, evidence_kind="sim-snp")
    s["claims"] = {**s["claims"], "tee": "sim-snp", "simulated": True, "product": "Milan"}
    s["verdict"] = {"passed": True, "policy": "simulated-demo", "reasons": []}
    return s


REASONS = [
    "allow_simulated: expected a hardware TEE (the policy does not set allow_simulated = true), "
    "observed SIMULATED evidence",
    "tee: expected one of ['snp'], observed sim-snp",
    "snp.min_tcb.snp: expected >= 22, observed 8",
]


def rejected_state() -> dict[str, Any]:
    s = simulated_state()
    s.update(
        confidential=False,
        passed=False,
        error="policy 'prod' refused the sim-snp TEE: ...",
        reasons=list(REASONS),
        verdict={"passed": False, "policy": "prod", "reasons": list(REASONS)},
    )
    return s


def test_passed_real_tee_is_green_with_every_fact() -> None:
    card = AttestationCard(state())
    assert card.passed and not card.simulated
    page = card.html
    assert f"border:2px solid {GREEN}" in page and "jupyter-cc-passed" in page
    assert SIMULATED_BANNER not in page
    for fact in ("snp (Genoa)", "bootloader 9 · tee 0 · snp 21 · microcode 72", "prod-snp: passed"):
        assert html.escape(fact) in page
    assert "2026-11-27T10:00:00Z" in page and "configfs-tsm" in page
    # The measurement is shortened on the card, whole in the tooltip and in the text form.
    assert f'title="{MEASUREMENT}"' in page
    assert f">{MEASUREMENT}<" not in page
    assert "abababababab…abababab" in page
    assert MEASUREMENT in card.text
    assert "Debug: no" in card.text and "GPU: none" in card.text


def test_simulated_pass_is_amber_with_the_banner() -> None:
    card = AttestationCard(simulated_state())
    assert card.passed and card.simulated
    assert f"border:2px solid {AMBER}" in card.html and "jupyter-cc-simulated" in card.html
    assert SIMULATED_BANNER in card.html
    assert card.text.splitlines()[1] == SIMULATED_BANNER


def test_rejection_is_red_and_lists_every_failed_rule() -> None:
    card = AttestationCard(rejected_state())
    assert not card.passed
    page = card.html
    assert f"border:2px solid {RED}" in page and "jupyter-cc-failed" in page
    assert SIMULATED_BANNER in page  # still labelled, whatever the verdict
    assert page.count("<li><code>") == len(REASONS)
    for reason in REASONS:
        assert html.escape(reason) in page
        assert f"failed: {reason}" in card.text
    assert "prod: rejected" in card.text


def test_invalid_evidence_is_red_with_its_sentence() -> None:
    sentence = "signature check failed: SNP report signature does not verify with the VCEK."
    card = AttestationCard({"confidential": False, "passed": False, "error": sentence, "reasons": []})
    assert not card.passed
    assert f"border:2px solid {RED}" in card.html and sentence in card.html
    assert sentence in card.text
    # The provisioner's own failure form (no "passed" member) reads the same way.
    assert not AttestationCard({"confidential": False, "error": sentence}).passed


def test_a_gpu_is_shown() -> None:
    gpu = {"tee": "nvidia", "measurements": 64, "debug": False}
    assert "nvidia, 64 measurements verified" in AttestationCard(state(gpu=gpu)).text


def test_hostile_values_are_escaped_everywhere() -> None:
    script = "<script>alert(1)</script>"
    quote = 'x" onmouseover="alert(2)'
    s = rejected_state()
    s["claims"] = {**s["claims"], "product": script, "measurement": quote * 4, "tcb_status": "<img src=x>"}
    s["reasons"] = [f"snp.product: expected one of ['Genoa'], observed {script}"]
    s["error"] = "<b>bold</b>"
    s["target"] = "<iframe>"
    s["source"] = "</table><script>"
    s["notes"] = ["<svg onload=alert(3)>"]
    page = card_html(s)
    for raw in ("<script", "<img", "<iframe", "<svg", "<b>", 'x" onmouseover'):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&quot; onmouseover=&quot;alert(2)" in page
    # The plain-text form is not HTML: values stay as they are there.
    assert script in card_text(s)


def test_mimebundle_has_the_widget_view_and_the_fallbacks() -> None:
    card = AttestationCard(simulated_state())
    bundle = card._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and bundle[WIDGET_VIEW]["model_id"] == card.model_id
    # The widget and the bundle's HTML both hide the static copy where they render.
    assert bundle["text/html"] == card.value
    assert card.value.endswith(card.html)
    assert f'.jupyter-cc-card-copy[data-cc-card="{card.card_id}"]{{display:none}}' in card.value
    assert bundle["text/plain"] == card.text
    assert card._repr_html_() == card.html
    assert repr(card) == "AttestationCard(passed=True, simulated=True)"


def test_update_rerenders_the_same_widget() -> None:
    card = AttestationCard(state())
    card.update(rejected_state())
    assert not card.passed and f"border:2px solid {RED}" in card.value


@pytest.mark.timeout(120)
def test_card_renders_in_nbconvert_output_without_widget_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_tee: Any
) -> None:
    """nbclient runs %attest in a real kernel; nbconvert falls back to the card's text/html."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from jupyter_cc.kernelspec import simulated_policy_path

    monkeypatch.setenv("JUPYTER_CC_CONFIDENTIAL", "1")
    monkeypatch.setenv("JUPYTER_CC_TEE", "sim")
    monkeypatch.setenv("JUPYTER_CC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from jupyter_cc.notebook.attest_magic import register\nregister(get_ipython())"
        ),
        nbformat.v4.new_code_cell(f"%attest --policy {simulated_policy_path()}"),
    ]
    NotebookClient(
        nb, timeout=60, store_widget_state=False, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    output, copy = nb.cells[1].outputs
    assert {"text/html", "text/plain", WIDGET_VIEW} <= set(output["data"])
    assert copy["metadata"] == {"jupyter_cc": {"card": "copy"}}  # hidden by the bundle's HTML
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert "jupyter-cc-attestation jupyter-cc-simulated" in body
    assert SIMULATED_BANNER in body


def test_display_emits_the_bundle_and_a_static_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Displayed, a card is its bundle plus a text/html-only copy for renderers without widgets."""
    import IPython.display

    from jupyter_cc.notebook.session import replay_output

    shown: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def record(data: dict[str, Any], raw: bool = False, metadata: Any = None, **kw: Any) -> None:
        shown.append((data, metadata or {}))

    monkeypatch.setattr(IPython.display, "display", record)
    card = AttestationCard(simulated_state())
    card._ipython_display_()
    (bundle, _), (copy, meta) = shown
    assert {WIDGET_VIEW, "text/html", "text/plain"} <= set(bundle)
    assert set(copy) == {"text/html"} and meta == {"jupyter_cc": {"card": "copy"}}
    assert f'class="jupyter-cc-card-copy" data-cc-card="{card.card_id}"' in copy["text/html"]
    assert card.html in copy["text/html"] and SIMULATED_BANNER in copy["text/html"]

    # Relayed from a confidential kernel: no copy, and no widget view whose model is over there.
    relayed: list[dict[str, Any]] = []
    monkeypatch.setattr(
        IPython.display, "publish_display_data", lambda data, metadata=None: relayed.append(data)
    )
    for data, metadata in shown:
        replay_output(
            {"header": {"msg_type": "display_data"}, "content": {"data": data, "metadata": metadata}}
        )
    assert relayed == [{k: v for k, v in bundle.items() if k != WIDGET_VIEW}]
