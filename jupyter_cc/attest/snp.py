"""AMD SEV-SNP attestation reports: parse the 1184-byte report, verify it to a pinned ARK.

Layout and checks follow docs/attestation-formats.md section 1 (AMD SEV-SNP ABI, report versions
2, 3 and 5; Milan, Genoa and Turin TCB layouts). Verification, in order:

1. the signer named in the report (VCEK or VLEK) and its certificate agree;
2. the processor line comes from CPUID (v3+) or, for v2, from the certificate's product name;
3. VEK, ASK/ASVK and ARK form a chain that ends at the pinned ARK of that line;
4. the report signature (ECDSA P-384, SHA-384, little-endian r and s) verifies with the VEK;
5. REPORTED_TCB equals the TCB the VEK was issued for, and (VCEK) CHIP_ID equals its hwID;
6. CRLs, when given: each is issued by a CA of the chain (AMD KDS ``/vcek/v1/{product}/crl``
   and ``/vlek/v1/{product}/crl`` are issued by the ARK), verifies with its key, is current,
   and lists no certificate below its issuer. Claims say ``revocation: checked`` when the ARK's
   CRL was among them, else ``unchecked``.

>>> report = parse_report(open("report.bin", "rb").read())      # doctest: +SKIP
>>> claims = verify_report(report, vek, [ask, ark], at=utcnow())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from jupyter_cc.attest import der
from jupyter_cc.attest.certs import describe, verify_chain
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import SNP_PRODUCTS
from jupyter_cc.attest.revocation import check_amd_crls, load_amd_crls
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.errors import ChainError, FormatError, SignatureError, TcbError

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SnpReport",
    "TcbVersion",
    "VekInfo",
    "parse_cert_table",
    "parse_report",
    "parse_vek",
    "product_from_cpuid",
    "verify_evidence",
    "verify_report",
]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
POLICY_DEBUG = 1 << 19
POLICY_RESERVED_ONE = 1 << 17
SIGNING_KEYS = {0: "vcek", 1: "vlek"}

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_BL_SPL = f"{AMD_OID}.3.1"
OID_TEE_SPL = f"{AMD_OID}.3.2"
OID_SNP_SPL = f"{AMD_OID}.3.3"
OID_UCODE_SPL = f"{AMD_OID}.3.8"
OID_FMC_SPL = f"{AMD_OID}.3.9"
OID_HWID = f"{AMD_OID}.4"
OID_CSP_ID = f"{AMD_OID}.5"

# Extended-report certificate table GUIDs (SNP firmware ABI, gosev abi.go).
CERT_TABLE_GUIDS = {
    "63da758d-e664-4564-adc5-f4b93be8accd": "vcek",
    "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "vlek",
    "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ask",
    "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ark",
    "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6": "extra",
}

# Byte ranges that must be zero, by report version (the signature's unused high bytes included).
_MBZ_COMMON = (
    (0x04C, 0x050),
    (0x1EB, 0x1EC),
    (0x1EF, 0x1F0),
    (0x2A0 + 48, 0x2E8),
    (0x2E8 + 48, 0x330),
    (0x330, REPORT_SIZE),
)
_MBZ_V2 = ((0x188, 0x1A0), (0x1F8, 0x2A0))
_MBZ_V3 = ((0x18B, 0x1A0), (0x1F8, 0x2A0))
_MBZ_V5 = ((0x18B, 0x1A0), (0x208, 0x2A0))


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION. ``fmc`` exists on Turin and later only."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: bytes, product: str) -> TcbVersion:
        if product in ("Milan", "Genoa"):
            return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])
        return cls(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])

    def to_json(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class SnpReport:
    """An SEV-SNP ATTESTATION_REPORT as laid out by the firmware; byte fields kept raw."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb: bytes
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def signing_key(self) -> str:
        """``vcek`` or ``vlek``; the parser refuses any other signer."""
        return SIGNING_KEYS[(self.signer_info >> 2) & 0x7]

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 0x2)


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def parse_report(data: bytes) -> SnpReport:
    """Parse an ATTESTATION_REPORT (exactly 1184 bytes).

    Raises:
        FormatError: wrong size, unknown version or algorithm, reserved bits set.
    """
    if len(data) != REPORT_SIZE:
        raise FormatError(
            f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, this input is {len(data)}",
            hint="pass the raw report (not the extended report or a certificate)",
        )
    version = _u32(data, 0x000)
    if version not in (2, 3, 4, 5):
        raise FormatError(f"SNP report version {version} is not supported (expected 2, 3, 4 or 5)")
    algo = _u32(data, 0x034)
    if algo != 1:
        raise FormatError(f"SNP report signature algorithm is {algo}, expected 1 (ECDSA P-384 with SHA-384)")
    policy = _u64(data, 0x008)
    if not policy & POLICY_RESERVED_ONE:
        raise FormatError(f"SNP guest policy 0x{policy:x} has reserved bit 17 clear (it must be 1)")
    if policy >> 26:
        raise FormatError(f"SNP guest policy 0x{policy:x} sets bits 26-63, which must be zero")
    signer_info = _u32(data, 0x048)
    key = (signer_info >> 2) & 0x7
    if key not in SIGNING_KEYS:
        raise FormatError(f"SNP report names signing key {key}, expected 0 (VCEK) or 1 (VLEK)")
    if signer_info >> 5:
        raise FormatError(f"SNP signer info 0x{signer_info:x} sets bits 5-31, which must be zero")
    mbz = _MBZ_COMMON + (_MBZ_V2 if version == 2 else _MBZ_V5 if version >= 5 else _MBZ_V3)
    for start, end in mbz:
        if any(data[start:end]):
            raise FormatError(f"SNP report bytes 0x{start:03x}-0x{end - 1:03x} are reserved and must be zero")
    return SnpReport(
        raw=bytes(data),
        version=version,
        guest_svn=_u32(data, 0x004),
        policy=policy,
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=_u32(data, 0x030),
        signature_algo=algo,
        current_tcb=data[0x038:0x040],
        platform_info=_u64(data, 0x040),
        signer_info=signer_info,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=(data[0x188], data[0x189], data[0x18A]) if version >= 3 else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        launch_mit_vector=_u64(data, 0x1F8) if version >= 5 else None,
        current_mit_vector=_u64(data, 0x200) if version >= 5 else None,
        signature_r=int.from_bytes(data[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(data[0x2E8:0x330], "little"),
    )


def product_from_cpuid(family: int, model: int) -> str | None:
    """The processor line for a CPUID family/model, or None when it is not a known SNP part."""
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A and model <= 0x11:
        return "Turin"
    return None


# --- V[CL]EK certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class VekInfo:
    """What a VCEK or VLEK certificate vouches for, from AMD's extensions."""

    kind: str  # "vcek" or "vlek"
    product: str | None  # "Milan", "Genoa", "Turin" (stepping suffix removed)
    product_name: str | None  # as written, e.g. "Milan-B0"
    spl: Mapping[str, int]  # bootloader, tee, snp, microcode[, fmc]
    hwid: bytes | None
    csp_id: str | None


def _der_tlv(raw: bytes, tag: int, what: str) -> bytes:
    return der.single(raw, tag, f"VEK extension {what}")


def _der_uint(raw: bytes, what: str) -> int:
    return der.uint(0x02, _der_tlv(raw, 0x02, what), f"VEK extension {what}", bits=32)


def _hwid(raw: bytes) -> bytes:
    # Real VCEKs carry the hwID as raw bytes without a DER tag (64 bytes; 8 on Turin); some
    # test certificates wrap it in an OCTET STRING. Accept both, nothing else.
    if len(raw) in (64, 8):
        return raw
    if len(raw) in (66, 10) and raw[0] == 0x04 and raw[1] == len(raw) - 2:
        return raw[2:]
    raise FormatError(f"VCEK hwID extension is {len(raw)} bytes, expected 64 or 8 (or DER-wrapped)")


@functools.lru_cache(maxsize=64)
def parse_vek(cert: x509.Certificate) -> VekInfo:
    """Read AMD's extensions from a VCEK or VLEK certificate (once per certificate: one chip's
    VCEK signs every report it makes).

    Raises:
        FormatError: the certificate is not a VEK (wrong subject, key type or extensions).
    """
    name = describe(cert)
    if name not in ("SEV-VCEK", "SEV-VLEK"):
        raise FormatError(
            f"certificate '{name}' is not a VCEK or VLEK (subject CN must be SEV-VCEK or SEV-VLEK)",
            hint="pass the VCEK from AMD KDS (or the extended report) as --vcek",
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise FormatError(f"certificate '{name}' does not hold an EC P-384 key")
    ext: dict[str, bytes] = {}
    for e in cert.extensions:
        if isinstance(e.value, x509.UnrecognizedExtension):
            ext[e.oid.dotted_string] = e.value.value
    product_name = None
    if OID_PRODUCT_NAME in ext:
        product_name = _der_tlv(ext[OID_PRODUCT_NAME], 0x16, "productName").decode("ascii", "replace")
    product = None
    if product_name:
        base = product_name.split("-")[0]
        product = base if base in SNP_PRODUCTS else None
    spl: dict[str, int] = {}
    for oid, field in (
        (OID_BL_SPL, "bootloader"),
        (OID_TEE_SPL, "tee"),
        (OID_SNP_SPL, "snp"),
        (OID_UCODE_SPL, "microcode"),
        (OID_FMC_SPL, "fmc"),
    ):
        if oid in ext:
            spl[field] = _der_uint(ext[oid], field)
        elif field != "fmc":
            raise FormatError(f"certificate '{name}' lacks the {field} SPL extension ({oid})")
    kind = "vcek" if name == "SEV-VCEK" else "vlek"
    hwid = _hwid(ext[OID_HWID]) if OID_HWID in ext else None
    if kind == "vcek" and hwid is None:
        raise FormatError(f"certificate '{name}' lacks the hwID extension ({OID_HWID})")
    csp = None
    if OID_CSP_ID in ext:
        csp = _der_tlv(ext[OID_CSP_ID], 0x16, "csp_id").decode("ascii", "replace")
    return VekInfo(kind=kind, product=product, product_name=product_name, spl=spl, hwid=hwid, csp_id=csp)


def parse_cert_table(data: bytes) -> dict[str, bytes]:
    """Split an extended-report certificate table into DER certificates by role.

    Entries are ``GUID(16) | offset u32 | length u32`` up to an all-zero entry; offsets count
    from the start of the table. Roles: ``vcek``, ``vlek``, ``ask``, ``ark``, ``extra``.
    """
    import uuid

    out: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + 24 > len(data):
            raise FormatError("SNP certificate table ends without its all-zero terminator entry")
        entry = data[pos : pos + 24]
        if not any(entry):
            return out
        guid = str(uuid.UUID(bytes_le=entry[:16]))
        off, length = struct.unpack_from("<II", entry, 16)
        if off + length > len(data) or off < pos + 24:
            raise FormatError(f"SNP certificate table entry {guid} points outside the table")
        role = CERT_TABLE_GUIDS.get(guid)
        if role is not None:
            out[role] = data[off : off + length]
        pos += 24


# --- verification ---------------------------------------------------------------------------


def _report_product(report: SnpReport, vek: VekInfo) -> str:
    if report.cpuid is not None:
        family, model, _ = report.cpuid
        product = product_from_cpuid(family, model)
        if product is None:
            raise FormatError(
                f"SNP report CPUID family 0x{family:x} model 0x{model:x} is not a known SEV-SNP processor"
            )
        if vek.product is not None and vek.product != product:
            raise ChainError(
                f"the report comes from a {product} processor but the {vek.kind.upper()} is for "
                f"{vek.product_name}",
                hint=f"pass the {vek.kind.upper()} and chain for {product}",
            )
        return product
    if vek.product is None:
        raise ChainError(
            f"a version {report.version} report has no CPUID, and the {vek.kind.upper()} names no "
            "known product",
            hint="pass the VCEK issued by AMD KDS for this chip",
        )
    return vek.product


def _verify_signature(report: SnpReport, key: ec.EllipticCurvePublicKey) -> None:
    der = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(der, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            "SNP report signature does not verify with the VEK: the report was altered or was "
            "signed by another chip",
            hint="pass the VCEK/VLEK for the chip that produced this report",
        ) from None


def _check_tcb(report: SnpReport, vek: VekInfo, tcb: TcbVersion) -> None:
    wanted = tcb.to_json()
    for field, observed in wanted.items():
        expected = vek.spl.get(field)
        if expected is None:
            raise TcbError(f"the {vek.kind.upper()} has no {field} SPL to compare with the report")
        if expected != observed:
            raise TcbError(
                f"reported TCB {field} is {observed} but the {vek.kind.upper()} was issued for {expected}",
                hint="fetch the VEK for the report's REPORTED_TCB",
            )


def _check_hwid(report: SnpReport, vek: VekInfo, product: str) -> None:
    if vek.kind != "vcek" or report.mask_chip_id:
        return
    assert vek.hwid is not None
    observed = report.chip_id[:8] if product == "Turin" and len(vek.hwid) == 8 else report.chip_id
    if len(vek.hwid) == 8 and any(report.chip_id[8:]):
        raise ChainError("the VCEK has an 8-byte (Turin) hwID but the report's CHIP_ID uses 64 bytes")
    if vek.hwid != observed:
        raise ChainError(
            f"the report's CHIP_ID {observed.hex()[:16]}... does not match the VCEK hwID "
            f"{vek.hwid.hex()[:16]}...",
            hint="pass the VCEK of the chip that produced this report",
        )


def verify_report(
    report: SnpReport,
    vek_cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    roots: TrustStore | None = None,
    kind: str = "snp",
    crls: Sequence[x509.CertificateRevocationList] = (),
    allow_stale_days: int = 0,
) -> Claims:
    """Verify ``report`` with its VEK and the ASK/ASVK-then-ARK ``chain``; return its claims.

    Args:
        report: a parsed report.
        vek_cert: the VCEK or VLEK the report names as signer.
        chain: the issuer chain, ASK (or ASVK) first and ARK last.
        at: the verification time.
        roots: the ARKs accepted (default: the pinned AMD ARKs).
        kind: the evidence kind the claims are labelled with.
        crls: AMD CRLs to check the chain against
            (:func:`~jupyter_cc.attest.revocation.check_amd_crls`).
        allow_stale_days: accept CRLs at most this many days past their nextUpdate.

    Claims carry ``revocation`` (``checked`` when the ARK's CRL was given and valid, else
    ``unchecked``) and, with CRLs, ``collateral_stale_days``.

    Raises:
        ChainError, SignatureError, TcbError, FormatError: the failed check, by name.
        CollateralError: a CRL is for another chain, mis-signed or stale.
    """
    roots = roots if roots is not None else TrustStore.hardware()
    vek = parse_vek(vek_cert)
    if vek.kind != report.signing_key:
        raise ChainError(
            f"the report is signed by its {report.signing_key.upper()} but a {vek.kind.upper()} was given",
            hint=f"pass the {report.signing_key.upper()} certificate",
        )
    product = _report_product(report, vek)
    if not chain:
        raise ChainError(
            f"no ASK/ARK chain for {product}",
            hint=f"pass --chain with AMD KDS {report.signing_key}/v1/{product}/cert_chain",
        )
    anchor = verify_chain([vek_cert, *chain], roots=roots, at=at, end_entity=f"the {vek.kind.upper()}")
    if anchor.product != product:
        raise ChainError(
            f"the report comes from a {product} processor but the chain ends at {anchor.name}",
            hint=f"pass the AMD chain for {product}",
        )
    key = vek_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    _verify_signature(report, key)
    tcb = TcbVersion.decode(report.reported_tcb, product)
    _check_tcb(report, vek, tcb)
    _check_hwid(report, vek, product)
    revocation = check_amd_crls(
        crls, [vek_cert, *chain], product=product, signer=vek.kind, at=at, allow_stale_days=allow_stale_days
    )
    return Claims(
        kind=kind,
        simulated=anchor.simulated,
        debug=report.debug,
        report_data=report.report_data,
        details=report_details(report, product) | {"signing_key": vek.kind, "root": anchor.name} | revocation,
    )


def report_details(report: SnpReport, product: str) -> dict[str, Any]:
    """The per-kind claims of an SNP report (design section 4), JSON-ready."""

    def version(v: tuple[int, int, int]) -> str:
        return ".".join(str(x) for x in v)

    details: dict[str, Any] = {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "chip_id": report.chip_id.hex(),
        "vmpl": report.vmpl,
        "policy": report.policy,
        "guest_svn": report.guest_svn,
        "reported_tcb": TcbVersion.decode(report.reported_tcb, product).to_json(),
        "current_tcb": TcbVersion.decode(report.current_tcb, product).to_json(),
        "committed_tcb": TcbVersion.decode(report.committed_tcb, product).to_json(),
        "launch_tcb": TcbVersion.decode(report.launch_tcb, product).to_json(),
        "product": product,
        "report_version": report.version,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "platform_info": report.platform_info,
        "firmware": version(report.current_version),
        "smt_allowed": bool(report.policy & (1 << 16)),
        "migrate_ma": bool(report.policy & (1 << 18)),
    }
    return details


def report_digest(report: SnpReport) -> str:
    """SHA-384 of the signed part: a stable identifier for audit entries."""
    return hashlib.sha384(report.signed_bytes).hexdigest()


def verify_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``snp``: parse ``ev.report``, verify it with ``ev.vek``."""
    report = parse_report(ev.binary())
    vek = ev.require("vek", "the VCEK or VLEK certificate", "pass --vcek with the certificate from AMD KDS")
    return verify_report(
        report,
        vek,
        list(ev.chain),
        at=at,
        roots=roots,
        crls=load_amd_crls(ev.crls),
        allow_stale_days=ev.allow_stale_days,
    )
