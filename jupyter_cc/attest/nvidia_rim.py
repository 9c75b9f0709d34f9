"""NVIDIA reference integrity manifests (RIMs): signed SWID tags of a GPU's golden measurements.

NVIDIA publishes one RIM per driver release and one per VBIOS build. Each is an ISO 19770-2
SWID tag (``SoftwareIdentity``) whose ``Payload`` holds one ``Resource`` per measurement index,
with the SHA-384 values the GPU may report there (``Hash0`` ... ``Hash{alternatives-1}``) and
whether the index is ``active`` (compared at all). The tag is signed with an enveloped XMLDSig
signature (c14n 1.1, ecdsa-sha384, SHA-384 digests); ``KeyInfo/X509Data`` carries the
signer, two NVIDIA CAs and a copy of the root.

Appraisal of one GPU report with its two RIMs, in order (:func:`appraise_rims`):

1. each RIM is well-formed XML, its signature verifies (signxml, a maintained XMLDSig library)
   with the leaf certificate of its own ``X509Data``, and that certificate's chain verifies to
   the pinned **NVIDIA CoRIM signing Root CA** (:data:`NVIDIA_RIM_ROOT`, design section 8), not
   to the copy the tag carries;
2. everything after that is read from the bytes the signature covers (signxml's
   ``signed_xml``), never from the document as received, so a wrapped or appended element
   counts for nothing;
3. the RIM's ``colloquialVersion`` equals the version the report states (driver or VBIOS);
4. every active RIM index ``k`` is compared with SPDM measurement block ``k + 1`` of the report:
   the reported digest must equal one of the alternatives; a missing block is a mismatch.

Why the chain is verified here and not by signxml: the two NVIDIA CA certificates encode their
2023-2033 validity as GeneralizedTime, which RFC 5280 reserves for dates from 2050. OpenSSL
accepts that; ``cryptography``'s ``x509.verification`` (which signxml 4 and later use for
``ca_pem_file``) refuses the whole chain. Skipping the chain check is not an option, so signxml
checks only the XML signature with the leaf it is handed, and the chain is verified by
:func:`jupyter_cc.attest.certs.verify_chain`, the project's explicit chain verifier: each
signature, issuer/subject link, CA constraint and the validity window *as dated* (whatever its
ASN.1 time encoding), to a pinned fingerprint. The encoding quirk is reported in the result
(``generalized_time_ca``) instead of being either fatal or silent.

A RIM whose bytes verified once is remembered (by SHA-256 and roots): many GPUs, and every
re-attestation, share the same two RIMs, and the XML signature over the same bytes verifies the
same way each time; what depends on the time (the chain's validity) is judged on every call.

>>> rim = verify_rim(xml_bytes, at=utcnow())                     # doctest: +SKIP
>>> result = appraise_rims(report, driver=d, vbios=v, at=now)     # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from jupyter_cc.attest.certs import describe, verify_chain
from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.errors import ChainError, EvidenceError, FormatError, InputError, SignatureError

if TYPE_CHECKING:
    from jupyter_cc.attest.nvidia import SpdmReport

__all__ = [
    "NVIDIA_RIM_ROOT",
    "GpuCollateral",
    "MeasurementError",
    "Rim",
    "RimMeasurement",
    "RimResult",
    "appraise_rims",
    "compare",
    "driver_rim_id",
    "rim_ids",
    "vbios_rim_id",
    "verify_rim",
]

NVIDIA_RIM_ROOT = TrustAnchor(
    name="NVIDIA CoRIM signing Root CA",
    fingerprint="12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
)

_SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_HASH_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
_MAX_RIM = 2 * 1024 * 1024
_DIGEST_SIZE = 48
# RFC 5280 section 4.1.2.5: dates before 2050 are UTCTime; NVIDIA's RIM CAs use GeneralizedTime.
_UTCTIME_END = 2050
# RIMs verified before, by the SHA-256 of their bytes and the roots: the XML signature over the
# same bytes verifies the same way every time, so a verifier judging many GPUs (or one GPU again
# and again) checks it once; the chain's validity at the asked time is judged on every call.
_MEMO = 64


class MeasurementError(EvidenceError):
    """A GPU's measurements or versions differ from NVIDIA's signed reference values."""

    check = "GPU reference measurements"


@dataclass(frozen=True)
class RimMeasurement:
    """One ``Resource`` of a RIM: index, whether it is compared, and the accepted digests."""

    index: int
    active: bool
    alternatives: tuple[bytes, ...]
    name: str


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature and chain verified, read from the signed bytes only."""

    tag_id: str
    version: str
    product: str
    measurements: tuple[RimMeasurement, ...]
    signer: str
    not_after: datetime
    generalized_time_ca: tuple[str, ...]
    chain: tuple[x509.Certificate, ...] = ()

    def active(self) -> tuple[RimMeasurement, ...]:
        return tuple(m for m in self.measurements if m.active)


_VERIFIED: dict[tuple[bytes, tuple[str, ...]], Rim] = {}


@dataclass(frozen=True)
class GpuCollateral:
    """What appraising one GPU needs besides its report: both RIMs (XML) and OCSP answers (DER).

    A RIM that could not be had is None, and ``notes`` say why (offline with nothing cached, no
    RIM at NVIDIA for that id); the verifier then claims ``rim: unchecked``, which only
    ``[gpu] allow_unverified_rim = true`` accepts. Everything here is checked by the verifier:
    where it came from adds no trust. ``rim_roots`` is the verifier side's configuration (the
    collateral service's roots), never read from evidence: bundles cannot carry this object.
    """

    driver_rim: bytes | None = None
    vbios_rim: bytes | None = None
    ocsp: tuple[bytes, ...] = ()
    notes: tuple[str, ...] = ()
    rim_roots: TrustStore | None = None  # the verifier's own setting (default: NVIDIA_RIM_ROOT)


@dataclass(frozen=True)
class RimResult:
    """The outcome of comparing one report with its driver and VBIOS RIMs (all matched)."""

    driver: Rim
    vbios: Rim
    matched: tuple[int, ...]  # RIM indices compared and matched

    def details(self) -> dict[str, Any]:
        return {
            "rim": "verified",
            "driver_rim": {"tag_id": self.driver.tag_id, "version": self.driver.version},
            "vbios_rim": {"tag_id": self.vbios.tag_id, "version": self.vbios.version},
            "rim_measurements_matched": len(self.matched),
        }


# --- RIM ids, from the report's opaque data ---------------------------------------------------


def driver_rim_id(report: SpdmReport, chip: str = "GH100") -> str:
    """``NV_GPU_DRIVER_GH100_545.00``: the RIM service id of the report's driver."""
    version = report.driver_version
    if not version:
        raise FormatError("the GPU report names no driver version (opaque field 3), so its RIM is unknown")
    return f"NV_GPU_DRIVER_{chip}_{version}"


def _ascii_field(report: SpdmReport, type_: int, name: str) -> str:
    """An opaque field as the RIM id writes it (NUL-terminated ASCII, upper case)."""
    value = report.field(type_)
    if value is None:
        raise FormatError(f"the GPU report has no {name} (opaque field {type_}), so its VBIOS RIM is unknown")
    return value.split(b"\x00", 1)[0].decode("ascii", "replace").strip().upper()


def vbios_rim_id(report: SpdmReport) -> str:
    """``NV_GPU_VBIOS_1010_0200_882_96005E0001``: project, project SKU, chip SKU, VBIOS version."""
    version = report.vbios_version
    if not version:
        raise FormatError("the GPU report names no VBIOS version (opaque field 6), so its RIM is unknown")
    parts = [_ascii_field(report, t, n) for t, n in ((17, "project"), (18, "project SKU"), (15, "chip SKU"))]
    return "NV_GPU_VBIOS_" + "_".join([*parts, version.replace(".", "").upper()])


def rim_ids(report: SpdmReport, chip: str = "GH100") -> tuple[str, str]:
    """(driver RIM id, VBIOS RIM id) named by the report's opaque data."""
    return driver_rim_id(report, chip), vbios_rim_id(report)


# --- verifying one RIM ------------------------------------------------------------------------


def _parse_xml(data: bytes, what: str) -> Any:
    """The XML tree of a RIM, parsed without entities or network (the input is untrusted)."""
    try:
        from lxml import etree  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise InputError(
            "verifying NVIDIA RIMs needs the signxml package (and lxml), which is not installed",
            hint="pip install signxml",
        ) from None

    if len(data) > _MAX_RIM:
        raise FormatError(f"the {what} is {len(data)} bytes, more than a RIM can be ({_MAX_RIM})")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=False)
    try:
        return etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise FormatError(f"the {what} is not well-formed XML ({exc})") from None


def _x509_chain(root: Any, what: str) -> list[x509.Certificate]:
    """The certificates of the tag's ``KeyInfo/X509Data``, signer first."""
    nodes = root.findall(
        f"{{{_DSIG}}}Signature/{{{_DSIG}}}KeyInfo/{{{_DSIG}}}X509Data/{{{_DSIG}}}X509Certificate"
    )
    if not nodes:
        raise FormatError(f"the {what} carries no signer certificate (Signature/KeyInfo/X509Data)")
    certs = []
    for node in nodes:
        try:
            der = base64.b64decode("".join((node.text or "").split()), validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise FormatError(
                f"the {what} carries a signer certificate that is not base64 DER X.509"
            ) from None
    return certs


def _generalized_time_cas(certs: list[x509.Certificate]) -> tuple[str, ...]:
    """Certificates dated before 2050 in GeneralizedTime (see the module docstring)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    out = []
    for cert in certs:
        der = cert.public_bytes(Encoding.DER)
        before = cert.not_valid_before_utc.strftime("%Y%m%d%H%M%SZ").encode()
        if cert.not_valid_before_utc.year < _UTCTIME_END and b"\x18\x0f" + before in der:
            out.append(describe(cert))
    return tuple(out)


def _signed_root(data: bytes, leaf: x509.Certificate, at: datetime, what: str) -> Any:
    """The element the signature covers, after signxml verified it with ``leaf``."""
    try:
        from signxml.algorithms import DigestAlgorithm, SignatureMethod  # type: ignore[import-not-found,unused-ignore]
        from signxml.exceptions import InvalidInput, InvalidSignature  # type: ignore[import-not-found,unused-ignore]
        from signxml.verifier import SignatureConfiguration, XMLVerifier  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError(
            "verifying NVIDIA RIMs needs the signxml package, which is not installed",
            hint="pip install signxml",
        ) from None

    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ChainError(f"the {what} signer '{describe(leaf)}' does not hold an EC P-384 key")
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=at,
    )
    try:
        result = XMLVerifier().verify(data, x509_cert=leaf, expect_config=config)
    except InvalidSignature as exc:
        raise SignatureError(
            f"the {what}'s XML signature does not verify with its signer '{describe(leaf)}' ({exc})",
            hint="the RIM was edited after NVIDIA signed it; fetch it again from NVIDIA's RIM service",
        ) from None
    except (InvalidInput, ValueError) as exc:
        raise FormatError(
            f"the {what} is not an enveloped XMLDSig document signxml can check ({exc})"
        ) from None
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None:
        raise FormatError(f"the {what} holds more than one signed reference; a RIM signs exactly its tag")
    return signed


def _measurement(node: Any, what: str) -> RimMeasurement:
    """One ``Resource`` element: index, active, and its 48-byte alternatives."""
    try:
        index = int(node.get("index", ""))
        count = int(node.get("alternatives", ""))
    except ValueError:
        raise FormatError(f"a measurement of the {what} has no integer index or alternatives") from None
    active = node.get("active", "").strip().lower()
    if active not in ("true", "false") or not 1 <= count <= 64:
        raise FormatError(f"measurement {index} of the {what} has active={active!r}, alternatives={count}")
    values = []
    for i in range(count):
        text = node.get(f"{{{_HASH_NS}}}Hash{i}")
        try:
            value = bytes.fromhex(text or "")
        except ValueError:
            value = b""
        if len(value) != _DIGEST_SIZE:
            raise FormatError(f"measurement {index} of the {what} has no 48-byte Hash{i}")
        values.append(value)
    return RimMeasurement(index, active == "true", tuple(values), str(node.get("name", "")))


def _read_rim(signed: Any, what: str) -> tuple[str, str, str, tuple[RimMeasurement, ...]]:
    """(tagId, colloquialVersion, product, measurements) of the signed element."""
    if signed.tag != f"{{{_SWID}}}SoftwareIdentity":
        raise FormatError(f"the {what} signs a {signed.tag}, not a SWID SoftwareIdentity tag")
    meta = signed.find(f"{{{_SWID}}}Meta")
    payload = signed.find(f"{{{_SWID}}}Payload")
    if meta is None or payload is None or not meta.get("colloquialVersion"):
        raise FormatError(f"the {what} has no Meta colloquialVersion or no Payload")
    measurements = tuple(
        _measurement(node, what)
        for node in payload.findall(f"{{{_SWID}}}Resource")
        if node.get("type") == "Measurement"
    )
    indices = [m.index for m in measurements]
    if not measurements or len(set(indices)) != len(indices):
        raise FormatError(f"the {what} lists no measurements or one index twice")
    return (
        str(signed.get("tagId", "")),
        str(meta.get("colloquialVersion")),
        str(meta.get("product", "")),
        measurements,
    )


def verify_rim(data: bytes, *, at: datetime, roots: TrustStore | None = None, what: str = "RIM") -> Rim:
    """Verify one SWID-tag RIM (signature, chain to the pinned RIM root) and read it.

    Args:
        data: the XML as NVIDIA's RIM service serves it (after base64 decoding).
        at: the verification time (every certificate of the chain must be valid then).
        roots: the roots accepted (default: only :data:`NVIDIA_RIM_ROOT`).
        what: how messages name it (``driver RIM NV_GPU_DRIVER_GH100_545.00``).

    Raises:
        FormatError: not well-formed XML, not a signed SWID tag, an unreadable measurement.
        SignatureError: the XML signature does not verify over the tag.
        ChainError: the signer does not chain to the pinned root at ``at``.
    """
    if at.tzinfo is None:
        raise InputError("the verification time must carry a timezone (use UTC)")
    store = roots if roots is not None else TrustStore.of(NVIDIA_RIM_ROOT)
    key = (hashlib.sha256(data).digest(), tuple(sorted(store.anchors)))
    held = _VERIFIED.get(key)
    if held is not None:
        # The same bytes verified before: only what depends on the time is judged again.
        _chain_at(list(held.chain), store, at, what)
        return held
    rim = _verify_rim(data, at, store, what)
    _remember(key, rim)
    return rim


def _remember(key: tuple[bytes, tuple[str, ...]], rim: Rim) -> None:
    """Keep a verified RIM, dropping the oldest beyond the memo size."""
    if len(_VERIFIED) >= _MEMO:
        _VERIFIED.pop(next(iter(_VERIFIED)))
    _VERIFIED[key] = rim


def _chain_at(chain: list[x509.Certificate], store: TrustStore, at: datetime, what: str) -> None:
    """The RIM signer's chain to ``store`` at ``at``, failures worded for a RIM."""
    try:
        verify_chain(chain, roots=store, at=at, end_entity=f"the {what} signer")
    except ChainError as exc:
        raise ChainError(
            f"the {what} signer does not chain to {', '.join(store.names())}: {exc.message}"
        ) from None


def _verify_rim(data: bytes, at: datetime, store: TrustStore, what: str) -> Rim:
    """:func:`verify_rim` for bytes not verified before."""
    root = _parse_xml(data, what)
    certs = _x509_chain(root, what)
    # The chain first: a signature by an unpinned key is worth nothing, whatever it covers.
    # The tag's last certificate counts only if its fingerprint is the pinned root's.
    chain = certs
    _chain_at(chain, store, at, what)
    signed = _signed_root(data, certs[0], at, what)
    tag_id, version, product, measurements = _read_rim(signed, what)
    return Rim(
        tag_id=tag_id,
        version=version,
        product=product,
        measurements=measurements,
        signer=describe(certs[0]),
        not_after=min(c.not_valid_after_utc for c in chain),
        generalized_time_ca=_generalized_time_cas(chain),
        chain=tuple(chain),
    )


# --- comparing a report with its RIMs ---------------------------------------------------------


def compare(report: SpdmReport, rim: Rim) -> tuple[list[int], list[int]]:
    """(matched, mismatched) RIM indices of the active measurements; RIM index k is SPDM block k+1."""
    blocks = {b.index: b.value for b in report.blocks}
    matched: list[int] = []
    mismatched: list[int] = []
    for m in rim.active():
        value = blocks.get(m.index + 1)
        (matched if value is not None and value in m.alternatives else mismatched).append(m.index)
    return matched, mismatched


def _versions_equal(reported: str | None, rim: Rim) -> bool:
    return reported is not None and reported.strip().lower() == rim.version.strip().lower()


def appraise_rims(report: SpdmReport, *, driver: Rim, vbios: Rim) -> RimResult:
    """Compare ``report`` with its verified driver and VBIOS RIMs: versions, then every index.

    Raises:
        MeasurementError: a version differs, or an active index matches none of its values
            (one sentence listing every mismatched index of both RIMs).
    """
    problems = []
    if not _versions_equal(report.driver_version, driver):
        problems.append(f"driver {report.driver_version} is not the driver RIM's {driver.version}")
    if not _versions_equal(report.vbios_version, vbios):
        problems.append(f"VBIOS {report.vbios_version} is not the VBIOS RIM's {vbios.version}")
    overlap = {m.index for m in driver.active()} & {m.index for m in vbios.active()}
    if overlap:
        problems.append(f"the driver and VBIOS RIMs both claim indices {sorted(overlap)}")
    matched: list[int] = []
    for name, rim in (("driver", driver), ("VBIOS", vbios)):
        ok, bad = compare(report, rim)
        matched += ok
        if bad:
            problems.append(f"measurements {', '.join(map(str, bad))} differ from the {name} RIM")
    if problems:
        raise MeasurementError(
            "the GPU's reference measurements do not match: " + "; ".join(problems),
            hint="the GPU runs firmware or a driver NVIDIA did not sign these values for",
        )
    return RimResult(driver=driver, vbios=vbios, matched=tuple(sorted(matched)))
