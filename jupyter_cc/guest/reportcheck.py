"""Sanity checks a collector makes on what the kernel handed back, before sending it anywhere.

These are not verification (the verifier checks signatures against pinned roots). They catch a
source that returned something other than the report just asked for: a wrong size, a stale
report of another writer, a buffer the kernel did not fill. Catching it in the guest turns a
confusing "binding failed" on the client into a sentence naming the source.
"""

from __future__ import annotations

import hmac
import struct

from jupyter_cc.attest import snp
from jupyter_cc.errors import EvidenceError

__all__ = ["check_snp_report", "check_td_quote", "hex_prefix"]

_TD_BODY_SIZES = {2: 584, 3: 648}
_TD_REPORT_DATA = 520
_TEE_TYPE_TDX = 0x81


def hex_prefix(data: bytes, n: int = 16) -> str:
    """The first ``n`` bytes of ``data`` as hex, ``...`` when cut (for messages)."""
    text = data[:n].hex()
    return text + "..." if len(data) > n else text or "(empty)"


def _same(observed: bytes, expected: bytes, source: str, what: str) -> None:
    if not hmac.compare_digest(observed, expected):
        raise EvidenceError(
            f"{what} carries REPORT_DATA {hex_prefix(observed)}, expected the "
            f"{hex_prefix(expected)} just requested",
            hint="another process may be using the device; try again",
            source=source,
        )


def check_snp_report(report: bytes, report_data: bytes, source: str) -> bytes:
    """``report`` if it is an SNP ATTESTATION_REPORT (1184 bytes) carrying ``report_data``."""
    if len(report) != snp.REPORT_SIZE:
        raise EvidenceError(
            f"the SEV-SNP report is {len(report)} bytes, expected {snp.REPORT_SIZE}",
            source=source,
        )
    _same(report[0x50:0x90], report_data, source, "the SEV-SNP report")
    return bytes(report)


def check_td_quote(quote: bytes, report_data: bytes, source: str) -> bytes:
    """``quote`` if it looks like a TDX DCAP quote (v4 or v5) carrying ``report_data``."""
    if len(quote) < 48:
        raise EvidenceError(
            f"the TD quote is {len(quote)} bytes, shorter than its 48-byte header", source=source
        )
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version not in (4, 5) or tee_type != _TEE_TYPE_TDX:
        raise EvidenceError(
            f"the TD quote header says version {version} and TEE type 0x{tee_type:x}, expected "
            "version 4 or 5 and TEE type 0x81 (TDX)",
            source=source,
        )
    body, body_size = 48, 584
    if version == 5:
        if len(quote) < 54:
            raise EvidenceError(f"the v5 TD quote is {len(quote)} bytes, shorter than 54", source=source)
        body_type = struct.unpack_from("<H", quote, 48)[0]
        if body_type not in _TD_BODY_SIZES:
            raise EvidenceError(
                f"the v5 TD quote has body type {body_type}, expected 2 (TDX 1.0) or 3 (TDX 1.5)",
                source=source,
            )
        body, body_size = 54, _TD_BODY_SIZES[body_type]
    if len(quote) < body + body_size:
        raise EvidenceError(
            f"the TD quote is {len(quote)} bytes, shorter than its header and "
            f"{body_size}-byte body ({body + body_size})",
            source=source,
        )
    start = body + _TD_REPORT_DATA
    _same(quote[start : start + 64], report_data, source, "the TD quote")
    return bytes(quote)
