"""The SEV-SNP extended-report certificate table, turned into the bundle's PEM fields.

Both SNP sources can hand back the certificates the host stored for this chip: configfs-tsm as
``auxblob``, ``/dev/sev-guest`` through SNP_GET_EXT_REPORT. Both use the firmware ABI's table
(``GUID | offset u32 | length u32`` entries, docs/attestation-formats.md section 1.5), split by
:func:`jupyter_cc.attest.snp.parse_cert_table`. Here the signing key's certificate (VCEK, or VLEK
when the report says a VLEK signed it) becomes ``vcek`` and ASK/ASVK then ARK become ``chain``.
Nothing is verified here: the verifier does that against pinned roots.
"""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives.serialization import Encoding

from jupyter_cc.attest import snp
from jupyter_cc.attest.certs import load_certificate
from jupyter_cc.errors import EvidenceError, FormatError, InputError

__all__ = ["NO_CERTS_NOTE", "der_to_pem", "evidence_certificates", "snp_evidence"]

NO_CERTS_NOTE = (
    "the host supplied no SEV-SNP certificates with the report; the verifier needs the VCEK "
    "from AMD KDS (or its cache)"
)


def _der_extent(data: bytes) -> int:
    """The length of the DER SEQUENCE at the start of ``data`` (tables may pad entries)."""
    if len(data) < 2 or data[0] != 0x30:
        raise FormatError("an entry of the SNP certificate table is not a DER certificate (no SEQUENCE tag)")
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 3 or len(data) < 2 + n:
        raise FormatError("an entry of the SNP certificate table has a bad DER length")
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


def der_to_pem(der: bytes, *, what: str) -> str:
    """One DER certificate (trailing padding allowed) as PEM text; FormatError if unreadable."""
    end = _der_extent(der)
    if end > len(der):
        raise FormatError(f"{what} is cut short: its DER header says {end} bytes, the entry has {len(der)}")
    try:
        cert = load_certificate(der[:end], what=what)
    except InputError as exc:
        raise FormatError(exc.message) from None
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def _signing_key(report: bytes) -> str:
    if len(report) < 0x4C:
        return "vcek"
    info = struct.unpack_from("<I", report, 0x48)[0]
    return snp.SIGNING_KEYS.get((info >> 2) & 0x7, "vcek")


def evidence_certificates(table: bytes, report: bytes) -> tuple[dict[str, str], tuple[str, ...]]:
    """The ``vcek`` and ``chain`` evidence fields from a certificate table, and notes.

    An empty or all-zero table (the host stored no certificates) gives no fields and a note;
    a malformed table raises :class:`FormatError`.
    """
    if not any(table):
        return {}, (NO_CERTS_NOTE,)
    roles = snp.parse_cert_table(bytes(table))
    key_role = _signing_key(report)
    fields: dict[str, str] = {}
    notes: list[str] = []
    vek = roles.get(key_role)
    if vek is not None:
        fields["vcek"] = der_to_pem(vek, what=f"the {key_role.upper()} in the SNP certificate table")
    else:
        notes.append(
            f"the host's SEV-SNP certificate table has no {key_role.upper()}, which signed this report; "
            "the verifier must fetch it from AMD KDS"
        )
    chain = [
        der_to_pem(roles[role], what=f"the {role.upper()} in the SNP certificate table")
        for role in ("ask", "ark")
        if role in roles
    ]
    if chain:
        fields["chain"] = "".join(chain)
    return fields, tuple(notes)


def snp_evidence(
    report: bytes, table: bytes, *, table_name: str, source: str
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The bundle's ``evidence`` for an SNP report and the host's certificate table, and notes.

    What both SNP sources hand back: the report (base64) with the ``vcek`` and ``chain`` fields
    of :func:`evidence_certificates`.

    Raises:
        EvidenceError: the table is malformed; the message names it as ``table_name`` and the
            error comes from ``source``.
    """
    try:
        certs, notes = evidence_certificates(table, report)
    except FormatError as exc:
        raise EvidenceError(f"{table_name} is malformed: {exc.message}", source=source) from None
    return {"report": base64.b64encode(report).decode("ascii"), **certs}, notes
