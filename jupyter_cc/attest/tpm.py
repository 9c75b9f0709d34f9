"""TPM 2.0 quotes: parse a TPMS_ATTEST and verify it with an attestation key.

An Azure confidential VM's vTPM lives inside the TEE (the HCL). Its attestation key HCLAkPub is
bound into the hardware report through the HCL runtime data (see :mod:`jupyter_cc.attest.azure`),
so a TPM2_Quote signed by that key extends the hardware evidence to the PCRs (boot chain) and to a
verifier's nonce, which the quote carries in ``extraData``.

The message is the marshalled TPMS_ATTEST (TPM 2.0 Library Part 2, section 10.12; all integers
big-endian). Only quotes (type ``TPM_ST_ATTEST_QUOTE``) are accepted. The signature is
RSASSA-PKCS1-v1_5 with SHA-256 and may come as the raw signature or as a marshalled
TPMT_SIGNATURE; both forms are recognised by length, never guessed.

>>> quote = verify_quote(msg, sig, runtime.ak_pub, nonce=b"challenge")  # doctest: +SKIP
>>> quote.pcr_selection                                                 # doctest: +SKIP
(PcrSelection(hash_alg=11, pcrs=(0, 1, 2, 3, 4, 5, 6, 7, 14)),)
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from jupyter_cc.attest.reader import Reader
from jupyter_cc.errors import BindingError, FormatError, SignatureError

__all__ = [
    "TPM_ALG_NAMES",
    "PcrSelection",
    "TpmsAttest",
    "parse_tpms_attest",
    "quote_signature",
    "verify_quote",
]

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NAMES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512", 0x0012: "sm3_256"}
# Bounds from the TPM 2.0 library (HASH_COUNT, PCR_SELECT_MAX for up to 256 PCRs): generous
# enough for any real TPM, small enough that a hostile count cannot make the parser spin.
MAX_PCR_BANKS = 16
MAX_SIZEOF_SELECT = 32


def _hex(data: bytes, n: int = 16) -> str:
    """A hex prefix of ``data`` for messages: the first ``n`` bytes, "..." when cut."""
    text = data[:n].hex()
    return text + "..." if len(data) > n else text or "(empty)"


def alg_name(alg: int) -> str:
    """The TPM_ALG_ID name (``sha256``), or its hex value for algorithms not listed here."""
    return TPM_ALG_NAMES.get(alg, f"0x{alg:04x}")


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a hash bank and the PCR indices selected in it."""

    hash_alg: int
    pcrs: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"hash": alg_name(self.hash_alg), "pcrs": list(self.pcrs)}


@dataclass(frozen=True)
class TpmsAttest:
    """A TPMS_ATTEST of type quote, fields as the TPM marshalled them."""

    raw: bytes
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selection: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def to_json(self) -> dict[str, Any]:
        """The ``tpm_quote`` claims: nonce and digest as hex, the selection per bank."""
        return {
            "nonce": self.extra_data.hex(),
            "pcr_selection": [s.to_json() for s in self.pcr_selection],
            "pcr_digest": self.pcr_digest.hex(),
            "clock": self.clock,
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "safe": self.safe,
            "firmware_version": self.firmware_version,
        }


class _Reader(Reader):
    """Big-endian cursor over TPM marshalled bytes; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        super().__init__(
            data,
            ends="TPMS_ATTEST ends inside ",
            hint="pass the complete quote message as the TPM returned it",
            byteorder="big",
        )

    def tpm2b(self, what: str) -> bytes:
        return self.take(self.u16(f"the size of {what}"), what)


def parse_tpms_attest(data: bytes) -> TpmsAttest:
    """Parse a marshalled TPMS_ATTEST of type quote.

    Raises:
        FormatError: wrong magic or type, a size that runs past the end, too many PCR banks, a
            bad TPMI_YES_NO, or bytes left over after the structure.
    """
    r = _Reader(bytes(data))
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise FormatError(
            f"TPMS_ATTEST magic is 0x{magic:08x}, expected 0x{TPM_GENERATED_VALUE:08x} (TPM_GENERATED_VALUE)",
            hint="pass the quote message (TPMS_ATTEST), not the signature or a PCR list",
        )
    st = r.u16("type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise FormatError(
            f"TPMS_ATTEST type is 0x{st:04x}, expected 0x{TPM_ST_ATTEST_QUOTE:04x} (TPM_ST_ATTEST_QUOTE)",
            hint="pass the output of TPM2_Quote",
        )
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock = r.u64("clockInfo.clock")
    reset_count = r.u32("clockInfo.resetCount")
    restart_count = r.u32("clockInfo.restartCount")
    safe = r.u8("clockInfo.safe")
    if safe > 1:
        raise FormatError(f"TPMS_ATTEST clockInfo.safe is {safe}, expected 0 or 1")
    firmware = r.u64("firmwareVersion")
    count = r.u32("the PCR selection count")
    if count > MAX_PCR_BANKS:
        raise FormatError(f"TPMS_ATTEST selects {count} PCR banks, at most {MAX_PCR_BANKS} exist")
    selections = []
    for _ in range(count):
        alg = r.u16("a PCR bank's hash algorithm")
        size = r.u8("a PCR bank's sizeofSelect")
        if size > MAX_SIZEOF_SELECT:
            raise FormatError(f"TPMS_ATTEST PCR bitmap is {size} bytes, at most {MAX_SIZEOF_SELECT}")
        bitmap = r.take(size, "a PCR bitmap")
        pcrs = tuple(i * 8 + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1)
        selections.append(PcrSelection(hash_alg=alg, pcrs=pcrs))
    digest = r.tpm2b("pcrDigest")
    if r.pos != len(r.data):
        raise FormatError(
            f"TPMS_ATTEST has {len(r.data) - r.pos} bytes after the quote's pcrDigest",
            hint="pass exactly the quote message the TPM signed",
        )
    return TpmsAttest(
        raw=r.data,
        magic=magic,
        type=st,
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware,
        pcr_selection=tuple(selections),
        pcr_digest=digest,
    )


def quote_signature(sig: bytes, key_size_bytes: int) -> bytes:
    """The raw RSASSA signature from ``sig``: either exactly the raw signature, or a TPMT_SIGNATURE.

    The two forms differ in length (a TPMT_SIGNATURE adds six header bytes), so the choice is
    never ambiguous.

    Raises:
        FormatError: neither form, another signature scheme, or another hash than SHA-256.
    """
    if len(sig) == key_size_bytes:
        return bytes(sig)
    if len(sig) < 6:
        raise FormatError(
            f"the TPM quote signature is {len(sig)} bytes, expected {key_size_bytes} (raw RSA) "
            f"or {key_size_bytes + 6} (TPMT_SIGNATURE)"
        )
    alg, hash_alg, size = struct.unpack_from(">HHH", sig, 0)
    if alg != TPM_ALG_RSASSA:
        scheme = "RSAPSS" if alg == TPM_ALG_RSAPSS else f"0x{alg:04x}"
        raise FormatError(
            f"the TPM quote signature is neither {key_size_bytes} raw bytes nor a TPMT_SIGNATURE "
            f"with scheme RSASSA (0x0014): {len(sig)} bytes, scheme field {scheme}",
            hint="quote with the RSASSA-PKCS1-v1_5 SHA-256 scheme of the HCL attestation key",
        )
    if hash_alg != TPM_ALG_SHA256:
        raise FormatError(
            f"the TPMT_SIGNATURE hash is {alg_name(hash_alg)}, expected sha256 (0x000b)",
            hint="quote with the SHA-256 scheme of the HCL attestation key",
        )
    if size != key_size_bytes or len(sig) != 6 + size:
        raise FormatError(
            f"the TPMT_SIGNATURE holds a {size}-byte signature in {len(sig) - 6} bytes, expected "
            f"{key_size_bytes} bytes for this key"
        )
    return bytes(sig[6:])


def verify_quote(
    message: bytes, signature: bytes, key: rsa.RSAPublicKey, *, nonce: bytes | None = None
) -> TpmsAttest:
    """Verify a TPM quote signed with ``key`` and return the parsed TPMS_ATTEST.

    The signature is checked over the exact message bytes before anything in them is believed;
    then the message is parsed and, when ``nonce`` is given, its extraData must equal it.

    Raises:
        FormatError: the signature or the message is malformed.
        SignatureError: the signature does not verify with ``key``.
        BindingError: the quote's extraData is not ``nonce``.
    """
    raw_sig = quote_signature(signature, (key.key_size + 7) // 8)
    try:
        key.verify(raw_sig, bytes(message), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError(
            "the TPM quote signature does not verify with the attestation key (RSASSA-PKCS1-v1_5 "
            "SHA-256): the quote was altered or signed by another TPM",
            hint="pass the quote message and signature produced together by the vTPM of this VM",
        ) from None
    quote = parse_tpms_attest(message)
    if nonce is not None and not hmac.compare_digest(quote.extra_data, bytes(nonce)):
        raise BindingError(
            "the TPM quote's extraData is not the expected nonce (expected "
            f"{_hex(bytes(nonce))}, found {_hex(quote.extra_data)})",
            hint="the quote was made for another challenge; request a fresh quote with this nonce",
        )
    return quote
