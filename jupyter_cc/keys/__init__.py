"""Attestation-gated key release: ``release(uri)`` returns a :class:`ReleasedKey`.

Runs inside the TEE (the confidential kernel): an ephemeral key pair is made in this process,
its public key bound into fresh evidence, and the key comes back wrapped to it. The released
key lives only in this process: :class:`ReleasedKey` never shows its material in ``repr`` or
``str`` and refuses to be pickled, and nothing here prints or logs it.

URIs:

* ``kbs://host[:port]/repo/type/tag[?cert-sha256=HEX]`` (HTTPS, the broker authenticated by a
  pinned certificate, a CA file or the system trust store; ``kbs+http://`` only to loopback):
  the Trustee KBS protocol, against ``jupyter-cc kbs serve`` or upstream Trustee
  (:mod:`.kbs_client`, :mod:`.broker_trust`).
* ``akv://vault-name/keys/name[/version]``: Azure Key Vault Secure Key Release (:mod:`.akv`).

>>> key = release("kbs://127.0.0.1:8085/default/key/demo?cert-sha256=3f1c...", tee="sim")  # doctest: +SKIP
>>> key
ReleasedKey(key_id='default/key/demo', fingerprint='5f2c...')
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, NoReturn
from urllib.parse import urlsplit

from jupyter_cc.errors import CCError, InputError

__all__ = ["KeyReleaseError", "ReleasedKey", "fingerprint", "release"]

_FINGERPRINT_LABEL = b"jupyter-cc key fingerprint v1\x00"


class KeyReleaseError(CCError):
    """A key broker refused or failed a release; the message names the step and the reason."""

    check = "key release"


def fingerprint(material: bytes) -> str:
    """A short public name for key material: hex of SHA-256(label || material), 32 digits.

    Domain-separated so it is not the plain hash of the key; equal for the same material on
    every path (KBS, Key Vault, a key file), so a sealed file's key can be matched to a release.
    """
    return hashlib.sha256(_FINGERPRINT_LABEL + material).hexdigest()[:32]


class ReleasedKey:
    """Key material released to this TEE, with the names needed to show and audit it.

    Attributes:
        material: the key bytes (keep them in this process; never print or write them).
        key_id: the broker's name for the key (``repo/type/tag``, or the Key Vault key id).
        fingerprint: :func:`fingerprint` of the material, safe to show and log.
        uri: the URI it was released from.
        policy: the name of the policy that allowed the release, when the broker says.
    """

    __slots__ = ("fingerprint", "key_id", "material", "policy", "uri")

    material: bytes
    key_id: str
    fingerprint: str
    uri: str
    policy: str | None

    def __init__(self, material: bytes, *, key_id: str, uri: str, policy: str | None = None) -> None:
        if not isinstance(material, bytes):
            raise TypeError("ReleasedKey material must be bytes")
        for name, value in (
            ("material", material),
            ("key_id", key_id),
            ("fingerprint", fingerprint(material)),
            ("uri", uri),
            ("policy", policy),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"ReleasedKey is read-only (cannot set {name})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"ReleasedKey is read-only (cannot delete {name})")

    def __repr__(self) -> str:
        return f"ReleasedKey(key_id={self.key_id!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __len__(self) -> int:
        return len(self.material)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReleasedKey):
            return NotImplemented
        return self.key_id == other.key_id and hmac.compare_digest(self.material, other.material)

    def __hash__(self) -> int:
        return hash((self.key_id, self.fingerprint))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ReleasedKey cannot be pickled: released keys stay in the process that holds them")

    def __copy__(self) -> ReleasedKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ReleasedKey:
        return self


def release(uri: str, **options: Any) -> ReleasedKey:
    """Release the key that ``uri`` names to this TEE (see the module docstring for schemes).

    ``options`` go to the scheme's client, e.g. ``tee``, ``sim_dir``, ``timeout`` for
    ``kbs://``; evidence comes from the collector that ``JUPYTER_CC_TEE`` selects by default.

    Raises:
        InputError: the URI is not one of the supported forms.
        KeyReleaseError: the broker refused the release or a step failed (named in the message).
        EvidenceError: this machine could not produce evidence.
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("kbs", "kbs+http"):
        from jupyter_cc.keys.kbs_client import release_kbs

        return release_kbs(uri, **options)
    if scheme == "akv":
        from jupyter_cc.keys.akv import release_akv

        return release_akv(uri, **options)
    raise InputError(
        f"cannot release a key from {uri!r}",
        hint="use kbs://host[:port]/repo/type/tag or akv://vault-name/keys/name[/version]",
    )
