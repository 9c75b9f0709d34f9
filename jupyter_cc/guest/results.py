"""What an evidence source gives back: evidence (:class:`Collected`) or a reason it cannot.

Every source module (:mod:`~jupyter_cc.guest.tsm`, :mod:`~jupyter_cc.guest.sevguest`,
:mod:`~jupyter_cc.guest.vtpm`, :mod:`~jupyter_cc.guest.nvml`) returns a :class:`Collected` or
raises :class:`SourceUnavailableError`; :mod:`jupyter_cc.guest.collectors` turns those exceptions into
:class:`Unavailable` entries, so the agent can say which source it used and why the others
were not (issue 3: "it says clearly which source it used and why others were not available").
"""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_cc.errors import EvidenceError

__all__ = ["Collected", "SourceUnavailableError", "Unavailable"]


@dataclass(frozen=True)
class Collected:
    """Evidence from one source, in the shape of the bundle's ``evidence`` object.

    Attributes:
        kind: the evidence kind (``snp``, ``tdx``, ``az-snp-vtpm``, ``az-tdx-vtpm``, ``sim-snp``).
        source: where it came from (``configfs-tsm``, ``sev-guest``, ``azure-vtpm``, ``simulated``).
        evidence: ``report`` (base64) and, as the kind needs, ``vcek`` and ``chain`` (PEM),
            ``td_quote``, ``tpm_quote`` and ``tpm_sig`` (base64).
        notes: sentences worth showing next to the verdict (for instance "no certificates").
    """

    kind: str
    source: str
    evidence: dict[str, str]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unavailable:
    """A source that cannot be used here, and one sentence saying why."""

    source: str
    reason: str


class SourceUnavailableError(EvidenceError):
    """A source is absent, not permitted, or failed; ``source`` names it, the message says why."""

    check = "evidence source"

    def __init__(self, source: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint, source=source)

    def unavailable(self) -> Unavailable:
        """This failure as an :class:`Unavailable` entry (the reason with its hint, one sentence)."""
        text = self.message.rstrip(".")
        if self.hint:
            text = f"{text}; {self.hint.rstrip('.')}"
        return Unavailable(source=self.source or "?", reason=text)
