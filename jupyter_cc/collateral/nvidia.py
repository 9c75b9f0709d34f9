"""NVIDIA collateral for confidential GPUs: RIMs from the RIM service, OCSP from the responder.

Paths (design section 12):

* ``GET {nvidia_rim}/v1/rim/{rim id}``: JSON ``{"id": ..., "rim": <base64 SWID tag>, ...}``;
  the tag is cached (decoded) once its signature and chain verify to the pinned NVIDIA CoRIM
  signing Root CA and its version agrees with the id asked for. It stays current until the
  earliest ``notAfter`` of its chain (revocation is OCSP's business).
* ``POST {nvidia_ocsp}`` with a DER OCSP request (``application/ocsp-request``): the DER
  response, cached by its ``nextUpdate`` after :func:`~jupyter_cc.attest.nvidia_ocsp.check_response`
  accepted it. The entry's chain holds the certificate and its issuer, so an import can judge it.

:func:`gpu_collateral` gathers what one GPU report needs: the driver and VBIOS RIMs its opaque
data names, and OCSP answers for its device chain and both RIM chains. What cannot be had
becomes a note, never a substitute: the verifier then says ``rim: unchecked`` or
``revocation: unchecked`` and the policy decides (``[gpu] allow_unverified_rim``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jupyter_cc.attest.certs import describe, load_certificates, utcnow
from jupyter_cc.attest.nvidia_ocsp import check_response, ocsp_request, ocsp_targets, unique_pairs
from jupyter_cc.attest.nvidia_rim import NVIDIA_RIM_ROOT, GpuCollateral, Rim, verify_rim
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral.cache import Entry
from jupyter_cc.collateral.fetch import MAX_BODY, Response, offline_hint
from jupyter_cc.errors import CCError, ChainError, CollateralError, FormatError

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence
    from jupyter_cc.collateral.service import CollateralService, Item

__all__ = [
    "SERVICES",
    "Poster",
    "check_ocsp",
    "check_rim",
    "gpu_collateral",
    "gpu_collateral_items",
    "obtain_ocsp",
    "ocsp_params",
    "rim_roots",
    "rim_url",
    "rim_xml",
]

SERVICES: Mapping[str, str] = {"nvidia-rim": "NVIDIA RIM service", "nvidia-ocsp": "NVIDIA OCSP responder"}
_OCSP_TYPE = "application/ocsp-request"


class Poster(Protocol):
    """POST a body to a URL (the fetcher's ``post``). Raises TimeoutError or ConnectionError."""

    def post(self, url: str, body: bytes, *, timeout: float, content_type: str) -> Response: ...


def rim_roots() -> TrustStore:
    """The roots RIMs must chain to: only the pinned NVIDIA CoRIM signing Root CA."""
    return TrustStore.of(NVIDIA_RIM_ROOT)


def rim_url(base: str, rim_id: str) -> str:
    """The RIM service's URL for ``rim_id`` (design section 12)."""
    return f"{base}/v1/rim/{rim_id}"


def rim_xml(body: bytes, rim_id: str) -> bytes:
    """The SWID tag in a RIM service answer for ``rim_id``.

    Raises:
        FormatError: not the JSON the service sends, another id, or ``rim`` not base64.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"the RIM service's answer for {rim_id} is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rim"), str):
        raise FormatError(f"the RIM service's answer for {rim_id} has no 'rim' field")
    if doc.get("id", rim_id) != rim_id:
        raise FormatError(f"the RIM service answered for {doc.get('id')!r} when asked for {rim_id}")
    try:
        return base64.b64decode(str(doc["rim"]), validate=True)
    except binascii.Error:
        raise FormatError(f"the RIM service's 'rim' for {rim_id} is not base64") from None


def _id_version(rim_id: str) -> str:
    """The version an id names, as the tag writes it with the dots removed, upper case."""
    return rim_id.rsplit("_", 1)[-1].replace(".", "").upper()


def check_rim(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a RIM (the XML) for ``params['id']``: signature, chain, version; when it expires."""
    rim_id = params["id"]
    rim = verify_rim(body, at=at, roots=roots, what=f"RIM {rim_id}")
    if rim.version.replace(".", "").upper() != _id_version(rim_id):
        raise CollateralError(f"the RIM served as {rim_id} is for version {rim.version}")
    return rim.not_after


def _issuer_hash(issuer: x509.Certificate) -> str:
    """A short, stable name for the issuer's key, for cache keys."""
    spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()[:40]


def ocsp_params(cert: x509.Certificate, issuer: x509.Certificate) -> dict[str, str]:
    """The cache parameters of the OCSP answer about ``cert``: its serial and its issuer."""
    return {"serial": format(cert.serial_number, "x"), "issuer": _issuer_hash(issuer)}


def check_ocsp(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a cached OCSP answer (chain: the certificate, then its issuer); its nextUpdate."""
    certs = load_certificates(chain_pem, what="the OCSP entry's certificates")
    if len(certs) != 2 or ocsp_params(certs[0], certs[1]) != dict(params):
        raise CollateralError("the OCSP entry's certificates are not the ones its key names")
    return check_response(body, certs[0], certs[1], at=at, fresh=False).next_update


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _post(service: CollateralService, url: str, body: bytes, what: str) -> bytes:
    """POST an OCSP request through the service's fetcher; the 200 body or a CollateralError."""
    fetcher = service.client.fetcher
    poster: Callable[..., Response] | None = getattr(fetcher, "post", None)
    if poster is None:
        raise CollateralError(f"the collateral fetcher cannot POST, so the {what} cannot be asked for")
    try:
        answer = poster(url, body, timeout=service.client.timeout, content_type=_OCSP_TYPE)
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise CollateralError(
            f"{SERVICES['nvidia-ocsp']} could not be reached for the {what} ({exc})", hint=offline_hint()
        ) from None
    if answer.status != 200 or len(answer.body) > MAX_BODY:
        raise CollateralError(
            f"{SERVICES['nvidia-ocsp']} answered {answer.status} ({len(answer.body)} bytes) for the "
            f"{what} ({url})",
            hint=offline_hint(),
        )
    return bytes(answer.body)


def obtain_ocsp(
    service: CollateralService, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime
) -> Item:
    """The OCSP answer about ``cert``: a current cached one, else asked for, judged and cached.

    An answer that verifies but says revoked or unknown is returned uncached, for the verifier
    to refuse.

    Raises:
        CollateralError: offline with nothing current cached, the responder failed, or its
            answer does not verify.
    """
    from jupyter_cc.collateral.service import Item, describe_item, key_for

    params = ocsp_params(cert, issuer)
    key = key_for("nvidia-ocsp", params)
    what = describe_item("nvidia-ocsp", params) + f" ('{describe(cert)}')"
    cached = service.cache.get(key)
    if cached is not None and (
        (cached.stale_days(at) == 0 and cached.next_update >= at) or service.settings.offline
    ):
        return Item(cached, "cache", cached.stale_days(at))
    if service.settings.offline:
        raise CollateralError(f"offline, and the collateral cache holds no {what}", hint=offline_hint())
    url = service.settings.nvidia_ocsp
    body = _post(service, url, ocsp_request(cert, issuer), what)
    try:
        next_update = check_response(body, cert, issuer, at=at).next_update
    except ChainError:
        # Genuine, and it says revoked (or unknown): not cached, but handed on, so that the
        # verifier refuses the GPU by name instead of seeing "no answer".
        entry = Entry(key, "nvidia-ocsp", params, body, _pem(cert, issuer), at, utcnow(), source=url)
        return Item(entry, "fetched", 0)
    except CCError as exc:
        raise CollateralError(f"the {what} was not accepted ({exc.message.rstrip('.')})") from None
    entry = Entry(key, "nvidia-ocsp", params, body, _pem(cert, issuer), next_update, utcnow(), source=url)
    service.cache.put(entry)
    return Item(entry, "fetched", 0)


def _rim(
    service: CollateralService, rim_id: str, at: datetime, notes: list[str], items: list[Item]
) -> tuple[bytes | None, Rim | None]:
    try:
        item = service.obtain("nvidia-rim", {"id": rim_id}, at=at)
    except CCError as exc:
        notes.append(f"RIM {rim_id} could not be had ({exc.message.rstrip('.')})")
        return None, None
    items.append(item)
    try:
        return item.entry.body, verify_rim(item.entry.body, at=at, roots=service.nvidia_rim_roots)
    except CCError:
        return item.entry.body, None  # the verifier names what is wrong with it


def _ocsp_all(
    service: CollateralService,
    pairs: list[tuple[x509.Certificate, x509.Certificate]],
    at: datetime,
    notes: list[str],
    items: list[Item],
) -> list[bytes]:
    out = []
    for cert, issuer in pairs:
        try:
            item = obtain_ocsp(service, cert, issuer, at=at)
        except CCError as exc:
            notes.append(f"no OCSP answer about '{describe(cert)}' ({exc.message.rstrip('.')})")
            continue
        items.append(item)
        out.append(item.entry.body)
    return out


def gpu_collateral(service: CollateralService, ev: Evidence, *, at: datetime) -> GpuCollateral:
    """The RIMs and OCSP answers one ``nvidia`` evidence entry needs (see the module docstring).

    Raises:
        FormatError, InputError: the report or chain is too malformed to tell what it needs.
    """
    return gpu_collateral_items(service, ev, at=at)[0]


def gpu_collateral_items(
    service: CollateralService, ev: Evidence, *, at: datetime
) -> tuple[GpuCollateral, tuple[Item, ...]]:
    """:func:`gpu_collateral`, and the cache items it used (``jupyter-cc collateral fetch``)."""
    from jupyter_cc.attest.nvidia import parse_spdm_report, supported_chip
    from jupyter_cc.attest.nvidia_rim import rim_ids

    report = parse_spdm_report(ev.binary())
    chain = load_certificates(ev.chain_pem or b"", what="GPU certificate chain")
    notes: list[str] = []
    items: list[Item] = []
    driver_id, vbios_id = rim_ids(report, supported_chip(chain))
    driver, driver_rim = _rim(service, driver_id, at, notes, items)
    vbios, vbios_rim = _rim(service, vbios_id, at, notes, items)
    pairs = ocsp_targets(chain, skip_leaf=True)
    for rim in (driver_rim, vbios_rim):
        if rim is not None:
            pairs += ocsp_targets(list(rim.chain), skip_leaf=False)
    responses = _ocsp_all(service, unique_pairs(pairs), at, notes, items)
    collateral = GpuCollateral(
        driver_rim=driver,
        vbios_rim=vbios,
        ocsp=tuple(responses),
        notes=tuple(notes),
        rim_roots=service.nvidia_rim_roots,
    )
    return collateral, tuple(items)
