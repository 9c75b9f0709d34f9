"""Steps 1 and 6 of an ``akv://`` release: the ephemeral wrapping key, and unwrapping with it.

The wrapping key is an RSA key pair made in this process for one release; its private half
never leaves the :class:`_WrappingKey` object (no repr of it, no pickling, never logged).
Key Vault answers ``key_hsm``: base64url JSON ``{schema_version, header, ciphertext}``, whose
ciphertext is RSA-OAEP (SHA-1 for ``CKM_RSA_AES_KEY_WRAP``, SHA-256 for
``RSA_AES_KEY_WRAP_256``, SHA-384 for ``RSA_AES_KEY_WRAP_384``; MGF1 with the same hash) of an
AES key-encryption key, followed by AES Key Wrap with Padding (RFC 5649) of the key material:
raw bytes for ``oct`` keys, PKCS#8 DER for RSA and EC keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from joserfc.jwk import RSAKey

from jupyter_cc.decoding import b64decode_any, strict_json
from jupyter_cc.errors import InputError

__all__ = ["ALGORITHMS", "WRAPPING_KEY_SIZES", "check_algorithm", "released_material", "unwrap_key_hsm"]


# The enc values Key Vault accepts and the OAEP hash each one names (sidecar RsaAESKeyUnwrap).
ALGORITHMS: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
WRAPPING_KEY_SIZES = (2048, 3072, 4096)


def check_algorithm(algorithm: str) -> None:
    """Refuse a wrapping algorithm Key Vault does not offer (an :class:`InputError`)."""
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"unknown key wrapping algorithm {algorithm!r}", hint=f"use one of {', '.join(ALGORITHMS)}"
        )


class _WrappingKey:
    """The ephemeral RSA key pair Key Vault wraps to; it never leaves this object or process."""

    __slots__ = ("_private", "jwk", "kid")

    def __init__(self, bits: int) -> None:
        if bits not in WRAPPING_KEY_SIZES:
            raise InputError(f"the wrapping key size must be one of {WRAPPING_KEY_SIZES}, not {bits}")
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.kid = f"jupyter-cc-{secrets.token_hex(8)}"
        public = RSAKey.import_key(self._private.public_key()).as_dict(private=False)
        self.jwk: dict[str, Any] = {"kid": self.kid, "kty": "RSA", "key_ops": ["encrypt"]}
        self.jwk.update({"n": public["n"], "e": public["e"]})

    def __repr__(self) -> str:
        return f"_WrappingKey(kid={self.kid!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("the ephemeral wrapping key cannot be pickled")

    @property
    def size(self) -> int:
        return int(self._private.key_size) // 8

    def decrypt(self, data: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
        oaep = padding.OAEP(mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=None)
        return self._private.decrypt(data, oaep)


def unwrap_key_hsm(
    key_hsm: str, algorithm: str, decrypt: Callable[[bytes, hashes.HashAlgorithm], bytes], size: int
) -> bytes:
    """Unwrap a release response's ``key_hsm`` (step 6 of the module docstring).

    Args:
        key_hsm: base64url JSON ``{schema_version, header, ciphertext}``.
        algorithm: the ``enc`` that was asked for; the blob's header must agree.
        decrypt: RSA-OAEP decryption with the wrapping key (given the OAEP hash).
        size: the wrapping key's modulus size in bytes.

    Raises:
        ValueError: the blob is malformed, names another algorithm, or does not unwrap.
    """
    try:
        blob = strict_json(b64decode_any(key_hsm, what="key_hsm").decode("utf-8"))
    except (InputError, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("key_hsm is not base64url JSON") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("ciphertext"), str):
        raise ValueError("key_hsm has no ciphertext")
    header = blob.get("header")
    enc = header.get("enc") if isinstance(header, dict) else None
    if enc is not None and enc != algorithm:
        raise ValueError(f"the key was wrapped with {enc!r}, not the {algorithm} asked for")
    try:
        ciphertext = b64decode_any(blob["ciphertext"], what="the key_hsm ciphertext")
    except InputError:
        raise ValueError("the key_hsm ciphertext is not base64url") from None
    if len(ciphertext) < size + 16 or (len(ciphertext) - size) % 8:
        raise ValueError(
            f"the key_hsm ciphertext is {len(ciphertext)} bytes; a {size * 8}-bit RSA block and an "
            "RFC 5649 wrapped key (16 bytes or more, a multiple of 8) are expected"
        )
    hash_algorithm = ALGORITHMS[algorithm]()
    try:
        kek = decrypt(ciphertext[:size], hash_algorithm)
    except ValueError:
        raise ValueError(
            f"RSA-OAEP ({hash_algorithm.name.upper()}) decryption of the key-encryption key failed: it was "
            "wrapped to another key or with another hash"
        ) from None
    if len(kek) not in (16, 24, 32):
        raise ValueError(f"the key-encryption key is {len(kek)} bytes, not an AES key")
    try:
        return aes_key_unwrap_with_padding(kek, ciphertext[size:])
    except InvalidUnwrap:
        raise ValueError(
            "the AES key wrap with padding (RFC 5649) does not unwrap: the ciphertext was altered"
        ) from None


def released_material(kty: Any, material: bytes) -> bytes:
    """Check the unwrapped bytes are what ``kty`` says: raw for oct, PKCS#8 DER for RSA/EC."""
    if kty in ("oct", "oct-HSM"):
        if not material:
            raise ValueError("the released symmetric key is empty")
        return material
    if kty in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
        try:
            serialization.load_der_private_key(material, password=None)
        except (ValueError, TypeError):
            raise ValueError(f"the released {kty} key is not PKCS#8 DER") from None
        return material
    raise ValueError(f"the released key has type {kty!r}, which this client does not understand")
