"""Steps 2 and 3 of an ``akv://`` release: fresh evidence to MAA, and MAA's token checked.

The ephemeral wrapping key's public JWK set is the *runtime data*; the evidence binds it as
``REPORT_DATA = SHA-256(runtime data) || 32 zero bytes`` (what MAA checks for ``SevSnpVm`` and
``TdxVm`` requests, docs/attestation-formats.md 3.1). MAA answers a token echoing the runtime
data as ``x-ms-runtime``; before anyone sees it, it is verified against the instance's JWKS
(its ``jku`` is ignored), its issuer must be that instance, its ``x-ms-runtime.keys`` must
hold the wrapping key, and its report data claim, when present, must be this release's.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from jupyter_cc.attest.kinds import AZURE_KINDS
from jupyter_cc.attest.maa import claim_path, verify_maa
from jupyter_cc.decoding import b64decode_any, b64url_encode, strict_json
from jupyter_cc.errors import CCError
from jupyter_cc.guest.collectors import Collected, collect_cpu_evidence
from jupyter_cc.keys.akv.transport import https

if TYPE_CHECKING:
    from jupyter_cc.keys.akv.release import AkvReleaseError

__all__ = [
    "MAA_SNP",
    "MAA_TDX",
    "attest_to_maa",
    "maa_request",
    "report_data_for",
    "runtime_data_for",
    "verify_token",
]

# claim_path treats its own MISSING as "no default"; this marks an absent claim instead.
_ABSENT: Any = object()

# MAA attest paths and API versions per evidence kind (docs/attestation-formats.md 3.2).
MAA_SNP = ("SevSnpVm", "2022-08-01")
MAA_TDX = ("TdxVm", "2023-04-01-preview")


def runtime_data_for(jwk: Mapping[str, Any]) -> bytes:
    """The runtime data carrying a public JWK: ``{"keys": [jwk]}``, compact, keys sorted."""
    return json.dumps({"keys": [dict(jwk)]}, separators=(",", ":"), sort_keys=True).encode("utf-8")


def report_data_for(runtime_data: bytes) -> bytes:
    """REPORT_DATA binding runtime data: SHA-256 of it, then 32 zero bytes (MAA and the HCL)."""
    return hashlib.sha256(runtime_data).digest() + bytes(32)


def maa_request(
    collected: Collected, runtime_data: bytes, sim_dir: Path | None, fail: Callable[[str], AkvReleaseError]
) -> tuple[tuple[str, str], dict[str, Any]]:
    """The MAA attest path and request body for the collected evidence."""
    runtime = {"data": b64url_encode(runtime_data), "dataType": "JSON"}
    evidence = collected.evidence
    if collected.kind in AZURE_KINDS:
        raise fail(
            f"the evidence is {collected.kind} (Azure vTPM): its hardware report binds the HCL's runtime "
            "data, whose keys are held by the vTPM, so Key Vault would wrap the key to a TPM-held key, "
            "which this client cannot decrypt"
        )
    report = b64decode_any(evidence["report"], what="the collected report")
    if collected.kind == "tdx":
        return MAA_TDX, {"quote": b64url_encode(report), "runtimeData": runtime}
    if collected.kind == "sim-snp":
        from jupyter_cc.attest.sim import SimulatedTee

        tee = SimulatedTee.load(sim_dir)
        chain = tee.vcek.public_bytes(serialization.Encoding.PEM) + tee.chain_pem()
    elif collected.kind == "snp":
        vcek = evidence.get("vcek")
        if not vcek:
            raise fail(
                "the SNP evidence came without a VCEK certificate, which MAA needs (VcekCertChain)",
            )
        chain = (vcek + evidence.get("chain", "")).encode("ascii")
    else:
        raise fail(f"MAA cannot attest {collected.kind} evidence")
    inner = {"SnpReport": b64url_encode(report), "VcekCertChain": b64url_encode(chain)}
    encoded = b64url_encode(json.dumps(inner, separators=(",", ":")).encode("utf-8"))
    return MAA_SNP, {"report": encoded, "runtimeData": runtime}


def attest_to_maa(
    maa: str,
    runtime_data: bytes,
    report_data: bytes,
    *,
    tee: str,
    sim_dir: Path | None,
    context: ssl.SSLContext,
    timeout: float,
    fail: Callable[[str], AkvReleaseError],
) -> str:
    """Step 2: collect evidence binding ``report_data`` in this process; the token MAA answers."""
    collected, _unavailable = collect_cpu_evidence(report_data, tee=tee, sim_dir=sim_dir)
    (path, api), body = maa_request(collected, runtime_data, sim_dir, fail)
    answer = https(
        f"{maa}/attest/{path}?api-version={api}", body=body, context=context, timeout=timeout, fail=fail
    )
    try:
        doc = strict_json(answer.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise fail("MAA's answer is not JSON") from None
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise fail("MAA's answer has no token")
    return token


def verify_token(
    token: str,
    maa: str,
    jwk: Mapping[str, Any],
    report_data: bytes,
    *,
    jwks: bytes | None,
    context: ssl.SSLContext,
    timeout: float,
    clock: Callable[[], datetime],
    fail: Callable[[str], AkvReleaseError],
) -> None:
    """Step 3: the token verifies, is the instance's, carries ``jwk`` and this release's report data.

    ``jwks`` are MAA's signing keys when they are pinned; None fetches ``{maa}/certs`` over TLS.
    """
    if jwks is None:
        jwks = https(f"{maa}/certs", body=None, context=context, timeout=timeout, fail=fail)
    try:
        claims = verify_maa(token, jwks, at=clock(), issuer=maa)
    except CCError as exc:
        raise fail(exc.message) from None
    why = _check_runtime_keys(claims.details, jwk)
    if why:
        raise fail(why)
    if claims.report_data and claims.report_data != report_data:
        raise fail("the MAA token's report data is not this release's (it attests other evidence)")


def _same_key(entry: Any, ours: Mapping[str, Any]) -> bool:
    return (
        isinstance(entry, Mapping)
        and entry.get("kty") == "RSA"
        and all(entry.get(name) == ours[name] for name in ("n", "e"))
    )


def _check_runtime_keys(details: Mapping[str, Any], jwk: Mapping[str, Any]) -> str | None:
    """Why the token does not carry ``jwk`` in ``x-ms-runtime.keys`` (None when it does)."""
    keys = claim_path(details, "x-ms-runtime.keys", _ABSENT)
    if keys is _ABSENT:
        return (
            "the MAA token has no x-ms-runtime.keys claim, so it does not carry this release's wrapping key"
        )
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        return "the MAA token's x-ms-runtime.keys claim is not a list of keys"
    if not any(_same_key(entry, jwk) for entry in keys):
        return (
            "the MAA token's x-ms-runtime.keys do not include this release's ephemeral wrapping key, "
            "so Key Vault would wrap the key to another key"
        )
    return None
