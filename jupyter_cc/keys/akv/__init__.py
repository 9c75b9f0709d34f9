"""Azure Key Vault Secure Key Release into this TEE: ``akv://vault/keys/name[/version]``.

:func:`release_akv` is what :func:`jupyter_cc.keys.release` calls for ``akv://`` URIs, inside
the confidential kernel. The steps, numbered as in the code:

1. **Wrapping key.** An ephemeral RSA key pair is made in this process. Its public half, as a
   JWK set ``{"keys": [{"kid", "kty": "RSA", "key_ops": ["encrypt"], "n", "e"}]}`` serialized
   compactly with sorted keys, is the *runtime data*. The private half never leaves this
   process and is never logged.
2. **Attest to MAA.** Fresh CPU evidence is collected in-process with
   ``REPORT_DATA = SHA-256(runtime data) || 32 zero bytes`` — the binding MAA checks for
   ``SevSnpVm``/``TdxVm`` requests and the one Azure's HCL uses for its own runtime data
   (docs/attestation-formats.md 3.1). The evidence and runtime data go to
   ``POST {maa}/attest/SevSnpVm?api-version=2022-08-01`` (SNP) or
   ``/attest/TdxVm?api-version=2023-04-01-preview`` (TDX); MAA answers ``{"token": JWT}`` and
   echoes the runtime data as the ``x-ms-runtime`` claim.
3. **Verify the token.** Before it is used, the token is verified with
   :func:`jupyter_cc.attest.maa.verify_maa` against the JWKS fetched over TLS from
   ``{maa}/certs`` (the pinned instance; the token's ``jku`` is ignored), its issuer must be
   that instance, its ``x-ms-runtime.keys`` must contain the ephemeral key (Key Vault wraps to
   the key found there), and its report data claim, when present, must be this release's.
4. **Release.** ``azure-keyvault-keys`` ``KeyClient.release_key`` with an ``azure-identity``
   credential (``DefaultAzureCredential`` unless one is given): the SDK enforces HTTPS and
   does Key Vault's bearer-challenge authentication. Key Vault evaluates the key's release
   policy against the token and answers a JWS.
5. **Verify the JWS.** ``alg`` RS256 (or another RSA JWS algorithm) with an ``x5c`` chain; the
   signature must verify with ``x5c[0]``, whose DNS names must cover the vault host and which
   must chain to a trusted root (the system store, or ``ca_bundle``/``jws_roots``). The
   payload must name the key asked for and the wrapping algorithm asked for.
6. **Unwrap.** ``response.key.key.key_hsm`` is base64url JSON ``{schema_version, header,
   ciphertext}``; the first modulus-size bytes of the ciphertext are RSA-OAEP (SHA-1 for
   ``CKM_RSA_AES_KEY_WRAP``, SHA-256 for ``RSA_AES_KEY_WRAP_256``, SHA-384 for
   ``RSA_AES_KEY_WRAP_384``; MGF1 with the same hash) of an AES key-encryption key, the rest is
   AES Key Wrap with Padding (RFC 5649) of the key material: raw bytes for ``oct`` keys,
   PKCS#8 DER for RSA and EC keys.

The rooms, by what they hold: :mod:`.uri` (the URI, the vault URL, the MAA endpoint),
:mod:`.unwrap` (steps 1 and 6), :mod:`.maa_token` (steps 2 and 3), :mod:`.transport` (TLS to MAA,
the Key Vault SDK call of step 4), :mod:`.jws` (step 5 and its trust roots) and :mod:`.release`
(:func:`release_akv`, which runs them in order).

Every failure is a :class:`AkvReleaseError`: one sentence naming the URI, the step and the
reason (for the release step also Key Vault's HTTP status, error code and message). No message
contains the MAA token, the bearer token or any key material.

Not supported: Azure CVMs whose only evidence source is the vTPM (``az-snp-vtpm``,
``az-tdx-vtpm``). There the hardware report binds the HCL's runtime data, whose keys live in
the vTPM, so Key Vault would wrap to a TPM-held key that needs TPM2 RSA-OAEP decryption.

>>> key = release_akv("akv://myvault/keys/dataset-key",
...                   maa_endpoint="https://sharedeus2.eus2.attest.azure.net")  # doctest: +SKIP
>>> key
ReleasedKey(key_id='https://myvault.vault.azure.net/keys/dataset-key/0f1e...', fingerprint='...')
"""

from __future__ import annotations

from jupyter_cc.keys.akv.jws import verify_release_jws
from jupyter_cc.keys.akv.maa_token import report_data_for, runtime_data_for
from jupyter_cc.keys.akv.release import AkvReleaseError, release_akv
from jupyter_cc.keys.akv.unwrap import ALGORITHMS, unwrap_key_hsm
from jupyter_cc.keys.akv.uri import AkvUri, parse_akv_uri

__all__ = [
    "ALGORITHMS",
    "AkvReleaseError",
    "AkvUri",
    "parse_akv_uri",
    "release_akv",
    "report_data_for",
    "runtime_data_for",
    "unwrap_key_hsm",
    "verify_release_jws",
]
