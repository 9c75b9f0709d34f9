"""What a confidential pod's evidence must bind of its deployment: CCE policy or init-data.

Pure functions (no I/O), used by ``jupyter-cc verify ... --cce-policy FILE`` and by the Hub's
:class:`~jupyter_cc.hub.kube_spawner.AttestedKubeSpawner`, so nobody computes a hash by hand:

- **Confidential ACI** (and AKS virtual nodes on it): SEV-SNP's HOST_DATA is the SHA-256 of the
  pod's CCE policy *as Rego*, i.e. of the base64-decoded value of the annotation
  ``microsoft.containerinstance.virtualnode.ccepolicy`` (what ``az confcom acipolicygen`` prints).
  :func:`cce_policy_rego` accepts either form: the base64 text (the annotation's value) or the
  Rego itself.
- **CoCo** (``kata-qemu-snp``/``-tdx``): the init-data annotation
  (``io.katacontainers.config.hypervisor.cc_init_data``, or ``...runtime.cc_init_data`` for peer
  pods) is gzip + base64 TOML; the digest of the TOML with its own ``algorithm`` is HOST_DATA (SNP)
  or MRCONFIGID (TDX). Parsing and the field check are those of the key broker
  (:func:`jupyter_cc.kbs.upstream.parse_init_data` and ``check_init_data``), so there is one
  reading of init-data in the project.

>>> rego = b'package policy\\napi_version := "0.10.0"\\n'
>>> import base64
>>> cce_host_data(base64.b64encode(rego)) == cce_host_data(rego)
True
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import io
import zlib
from collections.abc import Mapping
from typing import Any

from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.errors import BindingError, FormatError

__all__ = [
    "CCE_POLICY_FORMS",
    "cce_host_data",
    "cce_policy_rego",
    "check_cce_policy",
    "check_pod_init_data",
    "init_data_annotation_body",
]

CCE_POLICY_FORMS = (
    "the base64 text (the annotation's value, as az confcom acipolicygen prints it) or the Rego itself"
)
_MAX_POLICY = 4 * 1024 * 1024
_MAX_INIT_DATA = 64 * 1024


def cce_policy_rego(policy: bytes) -> bytes:
    """The Rego of a CCE policy given as base64 text or as Rego (whitespace around base64 ignored).

    Rego always has spaces or newlines between words, which strict base64 never has, so the two
    forms cannot be mistaken for each other.

    Raises:
        FormatError: too large, or neither base64 of UTF-8 text nor UTF-8 text.
    """
    if len(policy) > _MAX_POLICY:
        raise FormatError(f"the CCE policy is {len(policy)} bytes, more than {_MAX_POLICY}")
    compact = policy.strip()
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    rego = decoded if decoded else policy
    try:
        rego.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("the CCE policy is neither base64 Rego nor Rego text") from None
    return rego


def cce_host_data(policy: bytes) -> bytes:
    """The 32-byte HOST_DATA SEV-SNP reports for a container group under this CCE policy."""
    return hashlib.sha256(cce_policy_rego(policy)).digest()


def _snp_host_data(claims: Claims) -> bytes:
    entry = registered_kind(claims.kind)
    if entry is None or entry.family != "snp":
        raise BindingError(f"a CCE policy binds SEV-SNP's HOST_DATA; {claims.kind} evidence has none")
    try:
        return bytes.fromhex(str(claims.get("host_data") or ""))
    except ValueError:
        return b""


def check_cce_policy(claims: Claims, policy: bytes) -> None:
    """The evidence's HOST_DATA must be the SHA-256 of this CCE policy's Rego.

    Raises:
        BindingError: another policy (the message names both digests) or not SNP evidence.
        FormatError: the policy is unreadable.
    """
    expected = cce_host_data(policy)
    seen = _snp_host_data(claims)
    if not hmac.compare_digest(seen, expected):
        raise BindingError(
            f"HOST_DATA is {seen.hex() or 'absent'}, but the CCE policy's SHA-256 is {expected.hex()}",
            hint="the container group runs under another CCE policy than the one given",
        )


def init_data_annotation_body(annotation: str) -> str:
    """The TOML text of a CoCo init-data annotation (base64 of gzip, or base64 of plain TOML).

    Raises:
        FormatError: not base64, not gzip or UTF-8, or larger than 64 KiB once decompressed.
    """
    try:
        raw = base64.b64decode(annotation.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("the init-data annotation is not base64") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                raw = fh.read(_MAX_INIT_DATA + 1)
        except (OSError, EOFError, zlib.error):
            raise FormatError("the init-data annotation is not valid gzip") from None
    if len(raw) > _MAX_INIT_DATA:
        raise FormatError(f"the init-data is larger than {_MAX_INIT_DATA} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("the init-data is not UTF-8 TOML") from None


def check_pod_init_data(claims: Claims, annotation: str) -> Mapping[str, Any]:
    """The evidence's HOST_DATA (SNP) or MRCONFIGID (TDX) must be the digest of the pod's init-data.

    Returns the parsed init-data document.

    Raises:
        BindingError: another digest, or evidence with neither field.
        FormatError: the annotation is malformed.
    """
    from jupyter_cc.kbs.upstream import check_init_data, parse_init_data

    init = parse_init_data({"format": "toml", "body": init_data_annotation_body(annotation)})
    assert init is not None
    check_init_data(init, claims.kind, {name: claims.get(name) for name in ("host_data", "mrconfigid")})
    return init.document
