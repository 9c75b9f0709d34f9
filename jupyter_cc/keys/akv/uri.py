"""Where an ``akv://`` release goes: the key's URI, its vault's URL and the MAA instance.

Each is checked before anything is sent, so a typo is an :class:`~jupyter_cc.errors.InputError`
naming the expected form rather than a network error.

>>> parse_akv_uri("akv://myvault/keys/dataset-key/0f1e")
AkvUri(vault='myvault', name='dataset-key', version='0f1e')
>>> vault_url(parse_akv_uri("akv://myvault/keys/k"))
('https://myvault.vault.azure.net', 'myvault.vault.azure.net')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from jupyter_cc.errors import InputError

__all__ = ["DEFAULT_VAULT_URL", "AkvUri", "maa_url", "parse_akv_uri", "vault_url"]

DEFAULT_VAULT_URL = "https://{vault}.vault.azure.net"

_VAULT = re.compile(r"\A[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]\Z")
_KEY_NAME = re.compile(r"\A[A-Za-z0-9-]{1,127}\Z")
_VERSION = re.compile(r"\A[A-Za-z0-9]{1,64}\Z")


@dataclass(frozen=True)
class AkvUri:
    """``akv://vault/keys/name[/version]``, parsed."""

    vault: str
    name: str
    version: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"akv://{self.vault}/keys/{self.name}{tail}"


def parse_akv_uri(uri: str) -> AkvUri:
    """Parse and check an ``akv://`` URI (vault 3-24 characters, key name up to 127).

    Raises:
        InputError: not of the form ``akv://vault-name/keys/key-name[/version]``.
    """
    form = "write akv://vault-name/keys/key-name[/version]"
    parts = urlsplit(uri)
    if parts.scheme.lower() != "akv":
        raise InputError(f"{uri!r} is not an akv:// URI", hint=form)
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise InputError(
            f"{uri!r} has a query, fragment, user or port, which akv:// URIs do not take", hint=form
        )
    vault = parts.netloc
    if not _VAULT.match(vault):
        raise InputError(
            f"{uri!r} names vault {vault!r}; a vault name is 3-24 letters, digits and hyphens", hint=form
        )
    segments = parts.path.split("/")
    if len(segments) not in (3, 4) or segments[0] != "" or segments[1] != "keys":
        raise InputError(f"{uri!r} does not name a key", hint=form)
    name = segments[2]
    if not _KEY_NAME.match(name):
        raise InputError(f"{uri!r} names key {name!r}; a key name is 1-127 letters, digits and hyphens")
    version = segments[3] if len(segments) == 4 else None
    if version is not None and not _VERSION.match(version):
        raise InputError(f"{uri!r} has key version {version!r}; a version is letters and digits")
    return AkvUri(vault=vault, name=name, version=version)


def vault_url(target: AkvUri, template: str = DEFAULT_VAULT_URL) -> tuple[str, str]:
    """The vault's URL and host for ``target``: ``template`` with ``{vault}`` filled in.

    Raises:
        InputError: the template takes other fields, or does not make an https URL.
    """
    try:
        url = template.format(vault=target.vault).rstrip("/")
    except (KeyError, IndexError, ValueError):
        raise InputError(f"the vault URL template {template!r} takes only {{vault}}") from None
    host = urlsplit(url).hostname
    if not url.startswith("https://") or not host:
        raise InputError(f"the vault URL {url!r} is not an https URL")
    return url, host


def maa_url(maa_endpoint: str | None) -> str:
    """The MAA instance's base URL (``https://host``): ``maa_endpoint``, else ``$JUPYTER_CC_MAA_ENDPOINT``.

    Raises:
        InputError: none is given, or it is not an ``https://host`` URL.
    """
    endpoint = maa_endpoint or os.environ.get("JUPYTER_CC_MAA_ENDPOINT")
    if not endpoint:
        raise InputError(
            "no MAA endpoint is given for the akv:// release",
            hint="pass maa_endpoint= or set JUPYTER_CC_MAA_ENDPOINT, e.g. https://sharedeus2.eus2.attest.azure.net",
        )
    parts = urlsplit(endpoint)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path.strip("/")
        or parts.query
        or parts.username
    ):
        raise InputError(
            f"the MAA endpoint {endpoint!r} is not an https://host URL",
            hint="give the attestation instance's base URL, e.g. https://sharedeus2.eus2.attest.azure.net",
        )
    return f"https://{parts.netloc}"
