"""What the ``verify`` and ``attest`` commands print: the failure sentence and the claims summary.

Both commands report one refusal as one line on stderr (design section 4: never a traceback)
and a verified result as the same indented summary of its claims, so they share these two.
"""

from __future__ import annotations

from collections.abc import Mapping

from jupyter_cc.attest.claims import Claims
from jupyter_cc.errors import CCError

__all__ = ["failure_line", "summary"]

_SUMMARY_KEYS = (
    "product",
    "measurement",
    "mrtd",
    "reported_tcb",
    "tcb_status",
    "vmpl",
    "signing_key",
    "root",
    "attestation_type",
    "compliance_status",
    "measurements",
    "fwid",
)


def failure_line(exc: CCError) -> str:
    """The stderr line for ``exc``: a usage error (exit 2) or the failed check's sentence."""
    if exc.exit_status == 2:
        return f"jupyter-cc: error: {exc.diagnostics()}"
    return f"jupyter-cc: {exc.sentence()}"


def summary(claims: Claims) -> list[str]:
    """The indented lines under ``...: VERIFIED`` naming the claims a reader checks first."""
    lines = [f"  debug: {'yes' if claims.debug else 'no'}"]
    if claims.report_data:
        lines.append(f"  report_data: {claims.report_data.hex()}")
    for key in _SUMMARY_KEYS:
        value = claims.get(key)
        if value is not None:
            if isinstance(value, Mapping):
                value = ", ".join(f"{k} {v}" for k, v in dict(value).items())
            lines.append(f"  {key}: {value}")
    gpus = claims.gpus or ((claims.gpu,) if claims.gpu is not None else ())
    for index, gpu in enumerate(gpus):
        facts = [gpu.kind, str(gpu.get("arch") or gpu.get("chip") or "unknown architecture")]
        facts += [
            f"RIM {gpu.get('rim') or 'unchecked'}",
            f"revocation {gpu.get('revocation') or 'unchecked'}",
        ]
        lines.append(f"  gpu {index}: {', '.join(facts)}")
    return lines
