"""The attestation card: what ``%attest`` shows, as an ipywidget with an HTML fallback.

One view of an attestation *state*, the dict that :meth:`Attestation.to_json
<jupyter_cc.remote.attestation.Attestation.to_json>` returns (and the provisioner keeps), or its
failure form ``{"confidential": False, "passed": False, "error": sentence, "reasons": [...],
"claims": {...}}``. The card shows the TEE kind and product, the measurement (shortened, the
full value in a tooltip), the TCB, debug, the policy and its verdict, the GPU if any and the
time; green when the policy passed, red when it did not (every failed rule listed), amber for a
simulated TEE, which is always labelled with the registry's
:data:`~jupyter_cc.attest.kinds.SIMULATED_BANNER` (design section 9).

:class:`AttestationCard` is a :class:`ipywidgets.HTML` whose ``_repr_mimebundle_`` carries the
widget view *and* ``text/html`` and ``text/plain``, so the same output renders in JupyterLab,
in nbconvert/nbclient output and in frontends without widgets. Every value is HTML-escaped:
claims come from evidence and are untrusted text until appraised (and even then).

A saved notebook keeps the card readable where no widget runs. nbconvert (so nbviewer too)
prefers the widget view whenever the notebook holds the widget's state (nbclient saves it by
default), and that view needs JavaScript from a CDN: offline, or on GitHub, it shows nothing.
So displaying a card emits a second output, a static copy (``text/html`` only, marked
``{"jupyter_cc": {"card": "copy"}}`` in its metadata), and both the widget's HTML and the
bundle's ``text/html`` carry a ``<style>`` rule that hides that copy: wherever either renders,
the card is shown once; where neither does, the copy shows the same facts and the banner.

>>> card = AttestationCard({"confidential": False, "passed": False, "error": "no TEE."})
>>> card.passed
False
>>> "no TEE." in card.html
True
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.policy.gpu import gpu_verdicts

__all__ = ["COPY_CLASS", "AttestationCard", "card_html", "card_text"]

#: The class of a card's static copy (see the module docstring).
COPY_CLASS = "jupyter-cc-card-copy"

# (border, background, headline colour) per status: readable in light and dark themes because the
# card sets its own background and text colour.
_COLOURS = {
    "passed": ("#1a7f37", "#dafbe1", "#116329"),
    "simulated": ("#9a6700", "#fff8c5", "#7d4e00"),
    "failed": ("#cf222e", "#ffebe9", "#a40e26"),
}
_MEASUREMENT_KEYS = ("measurement", "mrtd", "x-ms-sevsnpvm-launchmeasurement", "launch_measurement")
_SHORT_HEAD, _SHORT_TAIL = 12, 8


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return []


def _shorten(text: str) -> str:
    if len(text) <= _SHORT_HEAD + _SHORT_TAIL + 1:
        return text
    return f"{text[:_SHORT_HEAD]}…{text[-_SHORT_TAIL:]}"


class _View:
    """The facts the card shows, read defensively from a state dict of either form."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state
        self.claims = _mapping(state.get("claims"))
        self.verdict = _mapping(state.get("verdict"))
        passed = state.get("passed")
        if not isinstance(passed, bool):
            passed = bool(self.verdict.get("passed")) and bool(state.get("confidential"))
        self.passed: bool = passed and not state.get("error")
        self.simulated = bool(state.get("simulated") or self.claims.get("simulated"))
        self.status = "failed" if not self.passed else "simulated" if self.simulated else "passed"
        self.reasons = _strings(state.get("reasons")) or _strings(self.verdict.get("reasons"))
        error = state.get("error")
        self.error = str(error) if error else None
        self.notes = [n for n in _strings(state.get("notes")) if n != SIMULATED_BANNER]

    @property
    def headline(self) -> str:
        policy = self.verdict.get("policy")
        where = f" — {self.state['target']}" if self.state.get("target") else ""
        if self.passed:
            return f"✔ Attested: policy '{policy}' passed{where}"
        if policy and self.reasons:
            return f"✘ Not attested: policy '{policy}' rejected the TEE{where}"
        return f"✘ Not attested{where}"

    def tee(self) -> str | None:
        kind = self.claims.get("tee") or self.state.get("evidence_kind")
        if not kind:
            return None
        product = self.claims.get("product")
        return f"{kind} ({product})" if product else str(kind)

    def measurement(self) -> str | None:
        for key in _MEASUREMENT_KEYS:
            value = self.claims.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    def tcb(self) -> str | None:
        parts: list[str] = []
        reported = _mapping(self.claims.get("reported_tcb"))
        if reported:
            parts.append(" · ".join(f"{k} {v}" for k, v in reported.items()))
        for key in ("tcb_status", "tee_tcb_svn"):
            if self.claims.get(key) is not None:
                parts.append(f"{key} {self.claims[key]}")
        return ", ".join(parts) or None

    def debug(self) -> str | None:
        value = self.claims.get("debug")
        if value is None:
            return None
        return "yes (a debugger can read this TEE's memory)" if value else "no"

    def policy(self) -> str | None:
        name = self.verdict.get("policy")
        if not name:
            return None
        return f"{name}: {'passed' if self.passed else 'rejected'}"

    def gpu(self) -> str | None:
        gpu = _mapping(self.state.get("gpu")) or _mapping(self.claims.get("gpu"))
        if not gpu:
            return "none" if self.claims else None
        text = str(gpu.get("tee", "GPU"))
        if gpu.get("measurements") is not None:
            text += f", {gpu['measurements']} measurements verified"
        if gpu.get("debug"):
            text += ", debug enabled"
        return text

    def gpus(self) -> list[tuple[str, str, bool]]:
        """One row per GPU with its own verdict (``GPU 1``: ``hopper, driver ..., RIM verified: passed``)."""
        reasons = [str(r) for r in self.reasons]
        rows = []
        for gpu in gpu_verdicts(self.claims, reasons):
            facts = [str(gpu[k]) for k in ("arch",) if gpu.get(k)]
            facts += [
                f"{label} {gpu[k]}"
                for k, label in (("driver_version", "driver"), ("vbios_version", "VBIOS"))
                if gpu.get(k)
            ]
            facts += [
                f"RIM {gpu.get('rim') or 'unchecked'}",
                f"revocation {gpu.get('revocation') or 'unchecked'}",
            ]
            failed = ", ".join(r.split(":", 1)[0].split(".", 1)[1] for r in gpu["reasons"])
            verdict = "passed" if gpu["passed"] else f"failed ({failed})"
            rows.append((f"GPU {gpu['index']}", f"{', '.join(facts)}: {verdict}", False))
        return rows

    def _gpu_rows(self) -> list[tuple[str, str | None, bool]]:
        """A row per judged GPU, else the single GPU row of claims without a GPU list."""
        rows: list[tuple[str, str | None, bool]] = list(self.gpus())
        return rows or [("GPU", self.gpu(), False)]

    def evidence(self) -> str | None:
        source = self.state.get("source")
        digest = self.state.get("evidence_sha256")
        parts = [f"from {source}" if source else "", f"SHA-256 {digest}" if digest else ""]
        return ", ".join(p for p in parts if p) or None

    def rows(self) -> Iterable[tuple[str, str, bool]]:
        """(label, value, shorten) for each row that has a value."""
        rows: list[tuple[str, str | None, bool]] = [
            ("TEE", self.tee(), False),
            ("Measurement", self.measurement(), True),
            ("TCB", self.tcb(), False),
            ("Debug", self.debug(), False),
            ("Policy", self.policy(), False),
            *(self._gpu_rows()),
            ("Time", self.state.get("attested_at"), False),
            ("Evidence", self.evidence(), False),
            ("Saved to", self.state.get("saved_to"), False),
        ]
        return [(label, str(value), short) for label, value, short in rows if value]


def card_html(state: Mapping[str, Any]) -> str:
    """The card as self-contained HTML (inline styles, every value escaped)."""
    view = _View(state)
    border, background, ink = _COLOURS[view.status]
    out = [
        f'<div class="jupyter-cc-attestation jupyter-cc-{view.status}" '
        f'style="border:2px solid {border};border-radius:6px;background:{background};color:#1f2328;'
        'padding:8px 12px;margin:4px 0;max-width:60em;font-family:system-ui,sans-serif;font-size:13px">',
        f'<div style="font-weight:600;font-size:14px;color:{ink}">{_esc(view.headline)}</div>',
    ]
    if view.simulated:
        out.append(
            '<div class="jupyter-cc-simulated" style="display:inline-block;margin:4px 0;padding:1px 8px;'
            f'border-radius:4px;background:#9a6700;color:#fff;font-weight:600">{_esc(SIMULATED_BANNER)}</div>'
        )
    if view.error and not view.reasons:
        out.append(f'<div class="jupyter-cc-error" style="margin:4px 0">{_esc(view.error)}</div>')
    if view.reasons:
        items = "".join(f"<li><code>{_esc(reason)}</code></li>" for reason in view.reasons)
        out.append(
            f'<div style="margin-top:4px">Failed rules:</div><ul class="jupyter-cc-reasons">{items}</ul>'
        )
    rows = []
    for label, value, short in view.rows():
        cell = (
            f'<code title="{_esc(value)}">{_esc(_shorten(value))}</code>'
            if short
            else f"<span>{_esc(value)}</span>"
        )
        rows.append(
            f'<tr><th style="text-align:left;padding:1px 12px 1px 0;font-weight:600">{_esc(label)}</th>'
            f'<td style="text-align:left">{cell}</td></tr>'
        )
    if rows:
        out.append(f'<table style="border-collapse:collapse;margin-top:4px">{"".join(rows)}</table>')
    if view.notes:
        notes = "".join(f"<li>{_esc(note)}</li>" for note in view.notes)
        out.append(f'<ul style="color:#59636e;font-size:12px;margin:4px 0 0 0">{notes}</ul>')
    out.append("</div>")
    return "".join(out)


def card_text(state: Mapping[str, Any]) -> str:
    """The card as plain text, full values included (for terminals and text-only outputs)."""
    view = _View(state)
    lines = [view.headline]
    if view.simulated:
        lines.append(SIMULATED_BANNER)
    if view.error and not view.reasons:
        lines.append(view.error)
    lines += [f"  failed: {reason}" for reason in view.reasons]
    lines += [f"  {label}: {value}" for label, value, _ in view.rows()]
    lines += [f"  note: {note}" for note in view.notes]
    return "\n".join(lines)


def _hide_copy(card_id: str) -> str:
    """A ``<style>`` rule hiding the static copy of card ``card_id`` (shown where it renders)."""
    return f'<style>.{COPY_CLASS}[data-cc-card="{_esc(card_id)}"]{{display:none}}</style>'


def _copy_html(card_id: str, body: str) -> str:
    return f'<div class="{COPY_CLASS}" data-cc-card="{_esc(card_id)}">{body}</div>'


class AttestationCard(widgets.HTML):  # type: ignore[misc]
    """An attestation state shown as a card; also renders where widgets do not.

    Args:
        state: an ``Attestation.to_json()`` dict or the failure form (see the module docstring).

    Attributes:
        state: the state shown (a copy; :meth:`update` replaces it and re-renders).
    """

    def __init__(self, state: Mapping[str, Any], **kwargs: Any) -> None:
        self.state: dict[str, Any] = dict(state)
        self._copy: Any = None  # the static copy's DisplayHandle, once displayed
        super().__init__(**kwargs)
        self.value = self._live_html()

    def __repr__(self) -> str:
        view = _View(self.state)
        return f"AttestationCard(passed={view.passed}, simulated={view.simulated})"

    @property
    def card_id(self) -> str:
        """The id tying the static copy to this card (the widget's model id)."""
        return str(self.model_id or id(self))

    @property
    def passed(self) -> bool:
        """True only when the evidence verified and the policy accepted it."""
        return _View(self.state).passed

    @property
    def simulated(self) -> bool:
        return _View(self.state).simulated

    @property
    def html(self) -> str:
        return card_html(self.state)

    @property
    def text(self) -> str:
        return card_text(self.state)

    def _live_html(self) -> str:
        """The card plus the rule hiding its static copy: what renders where the card renders."""
        return _hide_copy(self.card_id) + self.html

    def update(self, state: Mapping[str, Any]) -> None:
        """Show a newer state (a re-attestation) in the same card, wherever it is displayed."""
        self.state = dict(state)
        self.value = self._live_html()
        if self._copy is not None:
            self._copy.update(*self._copy_bundle(), raw=True)

    def _copy_bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"text/html": _copy_html(self.card_id, self.html)}, {"jupyter_cc": {"card": "copy"}}

    def _repr_html_(self) -> str:
        return self.html

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus ``text/html`` and ``text/plain`` fallbacks in one bundle."""
        data: dict[str, Any] = dict(super()._repr_mimebundle_(**kwargs) or {})
        data["text/html"] = self._live_html()
        data["text/plain"] = self.text
        return data

    def _ipython_display_(self) -> None:
        """The card's bundle, then its static copy (``text/html`` only, hidden where the card shows)."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]
        data, metadata = self._copy_bundle()
        self._copy = display(data, raw=True, metadata=metadata, display_id=True)  # type: ignore[no-untyped-call]
