"""The ``akv://`` release itself: :func:`release_akv` runs the six steps of :mod:`jupyter_cc.keys.akv`.

Each step lives in the module named for what it holds (:mod:`.unwrap` for the wrapping key,
:mod:`.maa_token` for MAA, :mod:`.transport` for Key Vault, :mod:`.jws` for its answer); this
module checks the options, runs them in order, and turns a failure into one
:class:`AkvReleaseError` naming the URI and the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from jupyter_cc.attest.certs import utcnow
from jupyter_cc.keys import KeyReleaseError, ReleasedKey
from jupyter_cc.keys.akv.jws import released_key, trust_roots, verify_release_jws
from jupyter_cc.keys.akv.maa_token import attest_to_maa, report_data_for, runtime_data_for, verify_token
from jupyter_cc.keys.akv.transport import DEFAULT_API_VERSION, key_vault_release, ssl_context
from jupyter_cc.keys.akv.unwrap import _WrappingKey, check_algorithm, released_material, unwrap_key_hsm
from jupyter_cc.keys.akv.uri import DEFAULT_VAULT_URL, maa_url, parse_akv_uri, vault_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["POLICY_NAME", "AkvReleaseError", "release_akv"]

POLICY_NAME = "akv release policy"


class AkvReleaseError(KeyReleaseError):
    """A step of an ``akv://`` release failed.

    Attributes:
        step: which step (``attest to MAA``, ``MAA token verification``, ``Key Vault
            release``, ``JWS verification``, ``unwrap``).
        status: Key Vault's HTTP status, for the release step when it answered.
        code: Key Vault's error code (``Forbidden``, ``KeyNotFound``, ...), when it gave one.
    """

    check = "key release"

    def __init__(
        self,
        uri: str,
        step: str,
        why: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"Key Vault release of {uri} failed at {step}: {why.rstrip('.')}", hint=hint)
        self.step = step
        self.status = status
        self.code = code


def release_akv(
    uri: str,
    *,
    credential: TokenCredential | None = None,
    maa_endpoint: str | None = None,
    tee: str | None = None,
    sim_dir: Path | None = None,
    algorithm: str = "RSA_AES_KEY_WRAP_256",
    vault_url_template: str = DEFAULT_VAULT_URL,
    ca_bundle: str | os.PathLike[str] | None = None,
    jws_roots: Sequence[x509.Certificate] | None = None,
    maa_jwks: bytes | None = None,
    api_version: str = DEFAULT_API_VERSION,
    key_size: int = 2048,
    timeout: float = 30.0,
    clock: Callable[[], datetime] = utcnow,
) -> ReleasedKey:
    """Release the Key Vault key ``uri`` names to this TEE (steps in the module docstring).

    Args:
        uri: ``akv://vault-name/keys/key-name[/version]``.
        credential: an ``azure-identity`` credential (anything with ``get_token``); None means
            ``DefaultAzureCredential()`` (managed identity on an Azure VM).
        maa_endpoint: the MAA instance, e.g. ``https://sharedeus2.eus2.attest.azure.net``; None
            means ``$JUPYTER_CC_MAA_ENDPOINT``. It must be the authority the key's release
            policy names.
        tee: the evidence source (``auto``, ``sim``, ``snp``, ``tdx``); None means
            ``$JUPYTER_CC_TEE``, else ``auto``.
        sim_dir: the simulated TEE's folder for ``tee="sim"``.
        algorithm: the ``enc`` Key Vault wraps with: ``RSA_AES_KEY_WRAP_256`` (default),
            ``RSA_AES_KEY_WRAP_384`` or ``CKM_RSA_AES_KEY_WRAP`` (OAEP with SHA-1).
        vault_url_template: the vault URL with ``{vault}`` for the vault name (other clouds:
            ``https://{vault}.vault.azure.cn``).
        ca_bundle: a PEM file of the CAs to trust for TLS to MAA and Key Vault and for the JWS
            signer; None means the system store.
        jws_roots: the roots for the JWS signer only, overriding ``ca_bundle``/the system store.
        maa_jwks: MAA's signing keys (the ``/certs`` document) when they are pinned; None means
            fetch them from ``{maa_endpoint}/certs`` over TLS.
        api_version: the Key Vault REST API version (7.3 or later has release).
        key_size: the ephemeral RSA wrapping key's size in bits (2048, 3072 or 4096).
        timeout: seconds for each network call.
        clock: the current time (UTC), for the token and certificate checks.

    Raises:
        InputError: the URI, the MAA endpoint or an option is malformed.
        EvidenceError: this machine could not produce evidence.
        AkvReleaseError: a step failed; the message names it (a subclass of
            ``jupyter_cc.keys.KeyReleaseError``).
    """
    target = parse_akv_uri(uri)
    check_algorithm(algorithm)
    maa = maa_url(maa_endpoint)
    vault, vault_host = vault_url(target, vault_url_template)
    tee = tee or os.environ.get("JUPYTER_CC_TEE") or "auto"
    context = ssl_context(ca_bundle)
    failure = _failures(str(target))

    # (1) the ephemeral wrapping key, bound into the evidence through the runtime data
    wrapping = _WrappingKey(key_size)
    runtime_data = runtime_data_for(wrapping.jwk)
    report_data = report_data_for(runtime_data)

    # (2) fresh evidence, attested by MAA; (3) the token, verified before it is shown to anyone
    token = attest_to_maa(
        maa,
        runtime_data,
        report_data,
        tee=tee,
        sim_dir=sim_dir,
        context=context,
        timeout=timeout,
        fail=failure("attest to MAA"),
    )
    verify_token(
        token,
        maa,
        wrapping.jwk,
        report_data,
        jwks=maa_jwks,
        context=context,
        timeout=timeout,
        clock=clock,
        fail=failure("MAA token verification"),
    )

    # (4) the release
    value = key_vault_release(
        vault,
        target,
        token,
        credential=credential,
        algorithm=algorithm,
        api_version=api_version,
        ca_bundle=ca_bundle,
        timeout=timeout,
        fail=failure("Key Vault release"),
    )

    # (5) the JWS, and what it says was released
    try:
        roots = trust_roots(jws_roots, ca_bundle)
        payload = verify_release_jws(value, vault_host=vault_host, roots=roots, at=clock())
        kid, kty, key_hsm = released_key(payload, vault_host, target, algorithm)
    except ValueError as exc:
        raise failure("JWS verification")(str(exc)) from None

    # (6) unwrap with the ephemeral key
    try:
        material = released_material(kty, unwrap_key_hsm(key_hsm, algorithm, wrapping.decrypt, wrapping.size))
    except ValueError as exc:
        raise failure("unwrap")(str(exc)) from None
    del wrapping
    return ReleasedKey(material, key_id=kid, uri=uri, policy=POLICY_NAME)


def _failures(shown: str) -> Callable[[str], Callable[..., AkvReleaseError]]:
    """``failure(step)(why, **extra)``: the :class:`AkvReleaseError` of ``step`` for the URI ``shown``."""

    def failure(step: str) -> Callable[..., AkvReleaseError]:
        def make(why: str, **extra: Any) -> AkvReleaseError:
            return AkvReleaseError(shown, step, why, **extra)

        return make

    return failure
