"""What a guest binds into REPORT_DATA, so evidence is fresh and tied to one connection.

Design section 6, step 3 (contract), version 2 of the input::

    REPORT_DATA = SHA-512("jupyter-cc/v2" || u32 count || for each (label, value), labels sorted:
                          u16 len(label) || label || u32 len(value) || value)

Every input is a labelled value, so a new thing to bind (the GPU evidence, a kernel's CurveZMQ
key, the key of a transport without sshd) adds a label instead of a new formula:

* ``nonce``: the client's fresh 32-byte nonce (always);
* ``ssh-host-key``: SHA-256 of the CVM sshd's host public key blob, or 32 zero bytes with the
  ``local`` transport (always);
* the optional labels of :data:`OPTIONAL_LABELS`, which a bundle lists in its ``bound`` member.

A verifier recomputes the value from what it knows (the nonce it sent, the host key it saw in the
SSH handshake, the GPU evidence in the bundle) and refuses a bundle naming a label it cannot
account for, so nothing bound goes unchecked.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence

from jupyter_cc.errors import BindingError, FormatError, InputError

__all__ = [
    "GPU_EVIDENCE",
    "LABEL",
    "NONCE_SIZE",
    "OPTIONAL_LABELS",
    "binding_input",
    "check_report_data",
    "expected_report_data",
    "gpu_evidence_digest",
    "gpu_nonce",
    "host_key_digest",
    "parse_bound",
]

LABEL = b"jupyter-cc/v2"
NONCE_SIZE = 32
GPU_EVIDENCE = "gpu-evidence"
# Labels a bundle may bind besides the nonce and the host key, with what each holds.
OPTIONAL_LABELS: Mapping[str, str] = {
    GPU_EVIDENCE: "SHA-256 over every GPU's evidence, in the bundle's order (gpu_evidence_digest)",
    "curve-server-key": "the kernel's CurveZMQ server public key (32 bytes), made in the TEE",
    "transport-key": "SHA-256 of the public key of a transport that needs no sshd, made in the TEE",
}
_MAX_VALUE = 4096


def host_key_digest(host_key_blob: bytes | None) -> bytes:
    """SHA-256 of the SSH host public key blob, or 32 zero bytes for the local transport."""
    return hashlib.sha256(host_key_blob).digest() if host_key_blob is not None else b"\x00" * 32


def binding_input(values: Mapping[str, bytes]) -> bytes:
    """The versioned, length-prefixed structure that REPORT_DATA hashes (labels sorted)."""
    out = [LABEL, struct.pack(">I", len(values))]
    for label in sorted(values):
        name = label.encode("ascii")
        value = values[label]
        out += [struct.pack(">H", len(name)), name, struct.pack(">I", len(value)), value]
    return b"".join(out)


def expected_report_data(
    nonce: bytes, host_key_sha256: bytes, bound: Mapping[str, bytes] | None = None
) -> bytes:
    """The 64-byte REPORT_DATA for ``nonce``, the bound host key digest and the optional values.

    Raises:
        InputError: a value has the wrong size or ``bound`` names a label that is not defined.
    """
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"the attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(host_key_sha256) != 32:
        raise InputError(f"the host key digest must be 32 bytes, got {len(host_key_sha256)}")
    extra = dict(bound or {})
    unknown = sorted(set(extra) - set(OPTIONAL_LABELS))
    if unknown:
        raise InputError(f"cannot bind unknown label(s) {', '.join(unknown)} into REPORT_DATA")
    values = {"nonce": nonce, "ssh-host-key": host_key_sha256, **extra}
    return hashlib.sha512(binding_input(values)).digest()


def gpu_nonce(nonce: bytes, index: int) -> bytes:
    """The 32-byte SPDM nonce GPU ``index`` signs in a session with ``nonce``.

    Derived per index, so one GPU's report cannot stand in for another's, and per session, so a
    report from an earlier session is not fresh.
    """
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"the attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if not 0 <= index < 2**32:
        raise InputError(f"GPU index {index} is out of range")
    return hashlib.sha256(LABEL + b" gpu" + nonce + struct.pack(">I", index)).digest()


def gpu_evidence_digest(entries: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """SHA-256 over every GPU's (kind, report, certificate chain), in order, length-prefixed.

    Bound as ``gpu-evidence``, so GPU evidence cannot be dropped, reordered or swapped in from
    another VM or session without the CPU REPORT_DATA changing.
    """
    h = hashlib.sha256(LABEL + b" gpus" + struct.pack(">I", len(entries)))
    for kind, report, chain in entries:
        for part in (kind.encode("utf-8"), report, chain):
            h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


def parse_bound(doc: object) -> dict[str, bytes]:
    """The bundle's ``bound`` member (label -> hex) as bytes; :class:`FormatError` on any deviation."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise FormatError("evidence bundle field 'bound' must be an object of label -> hex")
    out: dict[str, bytes] = {}
    for label, value in doc.items():
        if label not in OPTIONAL_LABELS:
            raise FormatError(
                f"evidence bundle binds '{label}', which this verifier cannot check "
                f"(known: {', '.join(OPTIONAL_LABELS)})"
            )
        if not isinstance(value, str) or len(value) > 2 * _MAX_VALUE:
            raise FormatError(f"evidence bundle bound value '{label}' must be a hex string")
        try:
            out[label] = bytes.fromhex(value)
        except ValueError:
            raise FormatError(f"evidence bundle bound value '{label}' is not hex") from None
    return out


def check_report_data(observed: bytes, expected: bytes, *, what: str = "REPORT_DATA") -> None:
    """Compare the evidence's report data with the expected value (leading bytes when shorter).

    Raises:
        BindingError: the evidence was made for another nonce, key or connection.
    """
    if (
        not expected
        or len(expected) > len(observed)
        or not hmac.compare_digest(observed[: len(expected)], expected)
    ):
        raise BindingError(
            f"{what} is {observed.hex()[:32]}..., expected {expected.hex()[:32]}...",
            hint="the evidence was produced for another nonce or connection; collect fresh evidence",
        )
