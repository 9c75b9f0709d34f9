"""How an ``akv://`` release talks to Azure: TLS requests to MAA, and Key Vault through its SDK.

MAA is called with :mod:`urllib` over TLS (redirects refused, answers capped at 1 MiB); Key
Vault through ``azure-keyvault-keys`` ``KeyClient.release_key`` with an ``azure-identity``
credential, because the SDK enforces HTTPS and does Key Vault's bearer-challenge
authentication. A failure becomes the caller's error (``fail``) with one line of the service's
answer, never a token.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_cc.errors import InputError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from jupyter_cc.keys.akv.release import AkvReleaseError
    from jupyter_cc.keys.akv.uri import AkvUri

__all__ = ["DEFAULT_API_VERSION", "MAX_RESPONSE", "https", "key_vault_release", "one_line", "ssl_context"]

DEFAULT_API_VERSION = "7.4"
MAX_RESPONSE = 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses redirects: an answer elsewhere than the pinned instance is an error."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the error it is, never followed


def ssl_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """The TLS context for MAA: the system store, or the CAs in ``ca_bundle``."""
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the CA bundle {os.fspath(ca_bundle)} ({exc})") from None


def one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line, cut to ``limit`` characters (for a service's message in a sentence)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _service_error(body: bytes) -> str:
    """``code: message`` from an Azure error body ``{"error": {"code", "message"}}``, if any."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return ""
    code, message = error.get("code"), error.get("message")
    parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
    return one_line(": ".join(parts))


def https(
    url: str,
    *,
    body: Mapping[str, Any] | None,
    context: ssl.SSLContext,
    timeout: float,
    fail: Callable[[str], AkvReleaseError],
) -> bytes:
    """GET (no body) or POST JSON over TLS; the response body, at most 1 MiB."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    where = urlsplit(url)
    shown = f"{where.scheme}://{where.netloc}{where.path}"
    try:
        with opener.open(request, timeout=timeout) as response:
            payload: bytes = response.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _service_error(exc.read(64 * 1024))
        raise fail(f"{shown} answered HTTP {exc.code}" + (f" ({detail})" if detail else "")) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise fail(
                f"the TLS certificate of {where.netloc} is not trusted ({reason.verify_message})"
            ) from None
        raise fail(f"{shown} could not be reached ({one_line(str(reason))})") from None
    except (OSError, ValueError) as exc:
        raise fail(f"{shown} could not be reached ({one_line(str(exc))})") from None
    if len(payload) > MAX_RESPONSE:
        raise fail(f"the response of {shown} is larger than {MAX_RESPONSE} bytes")
    return payload


def key_vault_release(
    vault_url: str,
    target: AkvUri,
    token: str,
    *,
    credential: TokenCredential | None,
    algorithm: str,
    api_version: str,
    ca_bundle: str | os.PathLike[str] | None,
    timeout: float,
    fail: Callable[..., AkvReleaseError],
) -> str:
    """Step 4: ``KeyClient.release_key`` through the Azure SDK; the JWS Key Vault answered."""
    from azure.core.exceptions import AzureError, HttpResponseError
    from azure.keyvault.keys import KeyClient, KeyExportEncryptionAlgorithm

    owned = None
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = owned = DefaultAzureCredential()
    options: dict[str, Any] = {
        "api_version": api_version,
        "connection_timeout": timeout,
        "read_timeout": timeout,
    }
    if ca_bundle is not None:
        options["connection_verify"] = os.fspath(ca_bundle)
    try:
        with KeyClient(vault_url, credential, **options) as client:
            result = client.release_key(
                target.name,
                token,
                version=target.version,
                algorithm=KeyExportEncryptionAlgorithm(algorithm),
            )
    except HttpResponseError as exc:
        status = exc.status_code
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None) if error is not None else None
        message = getattr(error, "message", None) if error is not None else None
        detail = ": ".join(str(p) for p in (code, message) if p) or (exc.reason or "no error details")
        raise fail(
            f"Key Vault answered HTTP {status} ({one_line(detail.replace(token, '<token>'), 400)})",
            status=status,
            code=code if isinstance(code, str) else None,
        ) from None
    except AzureError as exc:
        # Connection, TLS and credential failures; the first line of the SDK's message says which.
        text = str(exc.message or exc).strip() or type(exc).__name__
        first = text.splitlines()[0].replace(token, "<token>")
        raise fail(f"{type(exc).__name__}: {one_line(first)}") from None
    finally:
        if owned is not None:
            owned.close()
    value = result.value
    if not isinstance(value, str):
        raise fail("Key Vault's answer has no value (the JWS)")
    return value
