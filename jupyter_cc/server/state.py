"""A kernel's confidentiality as the REST API's JSON (pure: no server, no I/O).

``GET /jupyter-cc/api/kernels/<id>`` and ``POST .../attest`` answer one object with every key
below always present, so the JupyterLab front end never has to guess which are missing::

    {"kernel_id": "...",
     "confidential": true,            # a kernel in a TEE whose evidence passed the policy
     "simulated": false,              # the embedded simulated TEE, never a hardware one
     "evidence_kind": "snp",          # the evidence kind (design section 4), else null
     "verdict": {"passed": true, "policy": "prod", "reasons": []},
     "claims": {"tee": "snp", "measurement": "...", ...},
     "attested_at": "2026-01-01T12:00:00Z",
     "evidence_sha256": "...",        # digest of the evidence bundle judged last
     "source": "...",                 # where the guest read its evidence
     "gpu": null,                     # the attested GPU, if any (the first of several)
     "gpus": [{"index": 0, "arch": "hopper", "driver_version": "...", "rim": "verified",
               "revocation": "checked", "passed": true, "reasons": []}],   # every GPU, judged
     "agent": {"resident": true,      # the guest agent: the resident service, or per connection
               "pool": {"size": 1, "ready": 1, "idle_rss_bytes": 52000000}, "reconnects": 0,
               "reconnecting": false,         # the connection dropped: reconnecting, re-attesting
               "curve": false},               # CurveZMQ on its ports, server key bound in evidence
     "error": null,                   # why a confidential kernel is NOT trusted (one sentence)
     "refusal": null}                 # the kernel was refused at start: see refusal_json

A kernel refused at start never exists in the kernel manager, but the provisioner keeps the
refusal (:func:`jupyter_cc.provisioner.recent_refusals`): ``GET kernels/<its id>`` answers
``confidential: false``, ``error`` (the dialog's first sentence) and ``refusal``, and
``GET refusals`` lists the recent ones. A refusal (:func:`refusal_json`)::

    {"kernel_id": "...", "kernel_name": "cc-prod", "display_name": "...",
     "path": "analysis.ipynb",        # the notebook, relative to the server root, else null
     "refused_at": "2026-01-01T12:00:00Z",
     "check": "policy",               # the failed check
     "sentence": "Confidential kernel not started: policy 'default' refused the sim-snp TEE.",
     "message": "<the sentence>\n- <rule>\n...",   # the dialog's text, one failed rule a line
     "rules": [{"rule": "allow_simulated", "expected": "...", "observed": "..."}],
     "policy": "default", "evidence_kind": "sim-snp", "simulated": true,
     "claims": {...}}                 # the claims of the refused evidence (policy refusals)

A plain kernel (any provisioner without an attestation) is ``confidential: false`` with nulls and
no error. A confidential kernel that was refused, failed a re-attestation (and was stopped:
fail closed) or is not running is ``confidential: false`` with ``error`` saying why, so the
front end can tell "not confidential" from "attestation FAILED".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeGuard

from jupyter_cc.kernelspec import PROVISIONER_NAME
from jupyter_cc.policy.gpu import gpu_verdicts

__all__ = [
    "DEFAULT_AUDIT_LIMIT",
    "KEYS",
    "MAX_AUDIT_LIMIT",
    "PROVISIONER_NAME",
    "AttestingProvisioner",
    "is_confidential",
    "kernel_state",
    "normalize",
    "notebook_path",
    "parse_limit",
    "plain_state",
    "refusal_json",
    "refusal_state",
    "refusals",
    "spec_is_confidential",
]

DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_LIMIT = 1000

#: Every key of a kernel state, in the order the API writes them.
KEYS = (
    "kernel_id",
    "confidential",
    "simulated",
    "evidence_kind",
    "verdict",
    "claims",
    "attested_at",
    "evidence_sha256",
    "source",
    "gpu",
    "gpus",
    "agent",
    "error",
    "refusal",
)

# Only meaningful while the kernel is trusted; blanked otherwise so a stale verdict never shows.
_ATTESTATION_KEYS = tuple(key for key in KEYS if key not in ("kernel_id", "confidential", "error", "refusal"))


def plain_state(kernel_id: str, error: str | None = None) -> dict[str, Any]:
    """The state of a kernel with no (current) attestation: ``confidential: false``, nulls."""
    state: dict[str, Any] = dict.fromkeys(KEYS)
    state["kernel_id"] = kernel_id
    state["confidential"] = False
    state["error"] = error
    return state


def normalize(kernel_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Complete a provisioner's ``attestation_state()`` (or ``Attestation.to_json()``) to all KEYS.

    ``confidential`` is true only when the provisioner says so AND a verdict that passed is
    there: the API fails closed on anything less. Unknown keys are dropped, missing ones null.
    """
    verdict = raw.get("verdict")
    passed = isinstance(verdict, Mapping) and verdict.get("passed") is True
    if raw.get("confidential") is True and passed:
        state = plain_state(kernel_id)
        state["confidential"] = True
        for key in _ATTESTATION_KEYS:
            state[key] = raw.get(key)
        state["simulated"] = bool(raw.get("simulated"))
        claims = raw.get("claims")
        reasons = verdict.get("reasons") if isinstance(verdict, Mapping) else None
        state["gpus"] = gpu_verdicts(claims if isinstance(claims, Mapping) else None, reasons or ())
        return state
    error = raw.get("error")
    if raw.get("confidential") is True:
        error = error or "the attestation has no passed policy verdict, so the kernel is not trusted"
    return plain_state(kernel_id, str(error) if error else None)


class AttestingProvisioner(Protocol):
    """What the API uses of :class:`jupyter_cc.provisioner.ConfidentialProvisioner`."""

    @property
    def has_process(self) -> bool: ...

    def attestation_state(self) -> dict[str, Any]: ...

    async def reattest(self) -> Any: ...


def is_confidential(provisioner: Any) -> TypeGuard[AttestingProvisioner]:
    """Whether ``provisioner`` keeps an attestation (ConfidentialProvisioner, by its interface)."""
    return callable(getattr(provisioner, "attestation_state", None))


def spec_is_confidential(kernel_manager: Any) -> bool:
    """Whether the kernel's kernelspec names the confidential provisioner (running or not)."""
    spec = getattr(kernel_manager, "kernel_spec", None)
    metadata = getattr(spec, "metadata", None)
    provisioner = metadata.get("kernel_provisioner") if isinstance(metadata, Mapping) else None
    return isinstance(provisioner, Mapping) and provisioner.get("provisioner_name") == PROVISIONER_NAME


def kernel_state(kernel_id: str, kernel_manager: Any) -> dict[str, Any]:
    """The API state of one kernel from its KernelManager (read, never changed).

    The provisioner is what knows: ConfidentialProvisioner keeps the verdict and claims of the
    last attestation (design section 6.6). A kernel manager whose provisioner is gone (stopped,
    between restarts) but whose kernelspec names the confidential provisioner is reported as an
    untrusted confidential kernel rather than as a plain one.
    """
    provisioner = getattr(kernel_manager, "provisioner", None)
    if is_confidential(provisioner):
        raw = provisioner.attestation_state()
        return normalize(kernel_id, raw if isinstance(raw, Mapping) else {})
    if provisioner is None and spec_is_confidential(kernel_manager):
        return plain_state(
            kernel_id, "the confidential kernel is not running, so it has no current attestation"
        )
    return plain_state(kernel_id)


class KeptRefusal(Protocol):
    """What the API uses of :class:`jupyter_cc.provisioner.Refusal`."""

    @property
    def kernel_id(self) -> str: ...

    @property
    def kernel_name(self) -> str: ...

    @property
    def sentence(self) -> str: ...

    @property
    def session_path(self) -> str | None: ...

    def to_json(self) -> dict[str, Any]: ...


def refusal_json(refusal: KeptRefusal, root_dir: str | None = None) -> dict[str, Any]:
    """A kept refusal as the API's JSON, with ``path`` relative to the server's root.

    A session file outside ``root_dir`` (or without one) is ``path: null``: the API never shows
    a filesystem path the contents API would not.
    """
    body = refusal.to_json()
    body["path"] = notebook_path(refusal.session_path, root_dir)
    return body


def notebook_path(session_path: str | None, root_dir: str | None) -> str | None:
    """The notebook as JupyterLab names it ("work/lab.ipynb"), from a kernel's
    ``JPY_SESSION_NAME``, which jupyter_server sets to the file's path on disk: relative to
    ``root_dir``, with "/"; None without either, for a relative one, or outside the root (the
    API never shows a filesystem path the contents API would not).
    """
    if not session_path or not root_dir or not os.path.isabs(session_path):
        return None
    root = os.path.realpath(root_dir)
    full = os.path.realpath(session_path)
    if os.path.commonpath([root, full]) != root or full == root:
        return None
    return os.path.relpath(full, root).replace(os.sep, "/")


def refusal_state(kernel_id: str, refusal: KeptRefusal, root_dir: str | None = None) -> dict[str, Any]:
    """The state of a kernel refused at start: not confidential, the sentence, the refusal."""
    state = plain_state(kernel_id, refusal.sentence)
    state["refusal"] = refusal_json(refusal, root_dir)
    return state


def refusals(
    kept: Iterable[KeptRefusal],
    *,
    kernel_name: str | None = None,
    path: str | None = None,
    limit: int = DEFAULT_AUDIT_LIMIT,
    root_dir: str | None = None,
) -> list[dict[str, Any]]:
    """``GET refusals``: the kept refusals (newest first), filtered by kernelspec and notebook."""
    out: list[dict[str, Any]] = []
    for refusal in kept:
        if len(out) >= limit:
            break
        if kernel_name and refusal.kernel_name != kernel_name:
            continue
        body = refusal_json(refusal, root_dir)
        if path and body["path"] != path.strip("/"):
            continue
        out.append(body)
    return out


def parse_limit(text: str | None) -> int:
    """``?limit=N`` of the audit endpoint: default 50, an integer from 0 to 1000.

    Raises:
        ValueError: with one sentence for the 400 answer.
    """
    if text is None or text == "":
        return DEFAULT_AUDIT_LIMIT
    value = text.strip()
    # Few digits only: no giant int() conversions from a query string.
    if value.isascii() and value.isdigit() and len(value) <= 6 and int(value) <= MAX_AUDIT_LIMIT:
        return int(value)
    shown = text if len(text) <= 20 else text[:17] + "..."
    raise ValueError(f"limit must be a whole number from 0 to {MAX_AUDIT_LIMIT}, not {shown!r}")
