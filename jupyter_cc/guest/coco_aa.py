"""Evidence from a CoCo pod's Attestation Agent, through guest-components' REST API server.

In a Confidential Containers pod (``kata-qemu-snp``/``-tdx``) the TEE's report device belongs to
the pod VM's guest components, not to the container. The container reaches the Attestation Agent
through ``api-server-rest`` on ``http://127.0.0.1:8006`` (it answers loopback peers only)::

    GET /info                                          -> {"tee": "snp", "version": ...}
    GET /aa/evidence?runtime_data=<b64url>&encoding=base64
                                                       -> the attester's evidence (JSON)

``runtime_data`` is the 64-byte REPORT_DATA of the binding input (design section 6), sent as
URL-safe base64 without padding (``encoding=base64``) so the attester puts exactly those bytes
into the report. The answer is read by the key broker's parser of upstream attester formats
(:func:`jupyter_cc.kbs.upstream.primary_evidence`: SNP ``attestation_report`` + ``cert_chain``,
TDX ``quote``), so there is one reading of that format in the project, and the report's
REPORT_DATA is checked before anything is returned (:mod:`jupyter_cc.guest.reportcheck`).

``sample`` evidence (CoCo's ``kata-qemu-coco-dev``: no TEE) is accepted only when the caller
asked for the simulated TEE, and only when it carries jupyter-cc's simulated report (what the
test fakes send); a policy still refuses it unless it allows simulated evidence.

Nothing secret crosses this API: the request holds a digest, the answer public evidence.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.errors import FormatError
from jupyter_cc.guest.certtable import snp_evidence
from jupyter_cc.guest.reportcheck import check_snp_report, check_td_quote
from jupyter_cc.guest.results import Collected, SourceUnavailableError
from jupyter_cc.kbs.tls import is_loopback_host

__all__ = ["DEFAULT_AA_URL", "SOURCE", "aa_tee", "collect_coco_aa", "collected_from_aa"]

SOURCE = "coco-aa"
DEFAULT_AA_URL = "http://127.0.0.1:8006"
_MAX_ANSWER = 1024 * 1024
# Upstream TEE names, from the registry: the pod VM's own report (not a vTPM's), and simulated.
_HARDWARE_TEES = frozenset(
    k.trustee_tee for k in KINDS if k.trustee_tee and k.tee_choice and not (k.simulated or k.azure_vtpm)
)
_SIMULATED_TEES = frozenset(k.trustee_tee for k in KINDS if k.trustee_tee and k.simulated)
Fetch = Callable[[str, float], bytes]


def _checked_base(url: str) -> str:
    """The API's base URL; only plain HTTP to a loopback address (the pod's own API server)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not is_loopback_host(parts.hostname):
        raise SourceUnavailableError(
            SOURCE,
            f"the attestation agent URL {url!r} is not http:// on a loopback address",
            hint="the AA's REST API serves the pod itself on http://127.0.0.1:8006",
        )
    return url.rstrip("/")


def _fetch(url: str, timeout: float) -> bytes:
    """GET ``url`` with no proxy (a proxy would take loopback traffic out of the pod)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            data: bytes = response.read(_MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raise SourceUnavailableError(SOURCE, f"the attestation agent answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceUnavailableError(SOURCE, f"the attestation agent cannot be reached ({reason})") from None
    if len(data) > _MAX_ANSWER:
        raise SourceUnavailableError(SOURCE, f"the attestation agent answered more than {_MAX_ANSWER} bytes")
    return data


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise SourceUnavailableError(SOURCE, f"the attestation agent's {what} is not JSON") from None


def aa_tee(url: str = DEFAULT_AA_URL, *, timeout: float = 10.0, fetch: Fetch = _fetch) -> str:
    """The TEE the Attestation Agent attests (``snp``, ``tdx``, ``sample``...), from ``GET /info``."""
    info = _json(fetch(_checked_base(url) + "/info", timeout), "/info answer")
    tee = info.get("tee") if isinstance(info, dict) else None
    if not isinstance(tee, str) or not tee:
        raise SourceUnavailableError(SOURCE, "the attestation agent's /info names no TEE")
    return tee


def collected_from_aa(tee: str, answer: Any, report_data: bytes, *, allow_sample: bool = False) -> Collected:
    """The bundle's evidence for the AA's ``answer`` of ``tee``, its REPORT_DATA checked.

    Raises:
        SourceUnavailableError: a TEE this source does not take (``sample`` unless allowed).
        EvidenceError: malformed evidence, or a report bound to other REPORT_DATA.
    """
    from jupyter_cc.kbs.upstream import primary_evidence

    if tee not in _HARDWARE_TEES and not (allow_sample and tee in _SIMULATED_TEES):
        raise SourceUnavailableError(
            SOURCE,
            f"the attestation agent attests {tee[:20]!r}, not one of {', '.join(sorted(_HARDWARE_TEES))}",
            hint="kata-qemu-coco-dev has no TEE; use kata-qemu-snp or kata-qemu-tdx",
        )
    try:
        primary = primary_evidence(tee, answer, b"")
    except FormatError as exc:
        raise FormatError(f"the attestation agent's evidence: {exc.message}", source=SOURCE) from None
    ev = primary.evidence
    if ev is None:
        raise SourceUnavailableError(
            SOURCE, "the attestation agent's sample evidence is not signed by anything"
        )
    entry = registered_kind(ev.kind)
    if entry is not None and entry.family == "tdx":
        quote = check_td_quote(ev.binary(), report_data, SOURCE)
        return Collected(kind=ev.kind, source=SOURCE, evidence={"report": base64.b64encode(quote).decode()})
    report = check_snp_report(ev.binary(), report_data, SOURCE)
    evidence, notes = snp_evidence(report, b"", table_name="the AA's certificates", source=SOURCE)
    if ev.vek is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        evidence["vcek"] = ev.vek.public_bytes(Encoding.PEM).decode()
        evidence["chain"] = "".join(c.public_bytes(Encoding.PEM).decode() for c in ev.chain)
        notes = ()
    return Collected(kind=ev.kind, source=SOURCE, evidence=evidence, notes=notes)


def collect_coco_aa(
    report_data: bytes,
    *,
    url: str = DEFAULT_AA_URL,
    allow_sample: bool = False,
    timeout: float = 60.0,
    fetch: Fetch = _fetch,
) -> Collected:
    """Fresh evidence for ``report_data`` (64 bytes) from the pod's Attestation Agent.

    Raises:
        SourceUnavailableError: no AA API answers, or it attests no TEE this source takes.
        EvidenceError: the evidence is malformed or not bound to ``report_data``.
    """
    base = _checked_base(url)
    tee = aa_tee(base, timeout=min(timeout, 10.0), fetch=fetch)
    query = urllib.parse.urlencode(
        {"runtime_data": base64.urlsafe_b64encode(report_data).rstrip(b"=").decode(), "encoding": "base64"}
    )
    answer = _json(fetch(f"{base}/aa/evidence?{query}", timeout), "evidence")
    return collected_from_aa(tee, answer, report_data, allow_sample=allow_sample)
