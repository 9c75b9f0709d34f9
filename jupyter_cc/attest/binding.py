"""What a guest binds into REPORT_DATA, so evidence is fresh and tied to one connection.

Design section 6, step 3 (contract)::

    REPORT_DATA = SHA-512("jupyter-cc/v1" || nonce || SHA-256(ssh host public key blob))

with the client's fresh 32-byte nonce and the CVM sshd's host key; with the ``local`` transport
the host-key part is 32 zero bytes. A verifier recomputes it from the nonce it sent and the host
key it saw in the SSH handshake, so a replayed report or a relay with another key fails.
"""

from __future__ import annotations

import hashlib
import hmac

from jupyter_cc.errors import BindingError, InputError

__all__ = ["LABEL", "NONCE_SIZE", "check_report_data", "expected_report_data", "host_key_digest"]

LABEL = b"jupyter-cc/v1"
NONCE_SIZE = 32


def host_key_digest(host_key_blob: bytes | None) -> bytes:
    """SHA-256 of the SSH host public key blob, or 32 zero bytes for the local transport."""
    return hashlib.sha256(host_key_blob).digest() if host_key_blob is not None else b"\x00" * 32


def expected_report_data(nonce: bytes, host_key_sha256: bytes) -> bytes:
    """The 64-byte REPORT_DATA for ``nonce`` and the digest of the bound host key."""
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"the attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(host_key_sha256) != 32:
        raise InputError(f"the host key digest must be 32 bytes, got {len(host_key_sha256)}")
    return hashlib.sha512(LABEL + nonce + host_key_sha256).digest()


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
