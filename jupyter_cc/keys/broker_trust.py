"""How a ``kbs://`` client decides it is talking to the right key broker (design section 13).

The JWE a broker answers is encrypted to the TEE's own key, so anyone who answers can encrypt
one: the key is only as trustworthy as the party that chose it. The client therefore takes a
resource only from a broker it has authenticated, in this order of precedence:

1. a pinned certificate fingerprint (SHA-256 of the certificate's DER, hex; colons allowed):
   ``?cert-sha256=HEX`` on the URI, else ``$JUPYTER_CC_KBS_CERT_SHA256``, else ``cert_sha256``
   in the broker's table of the user config (:func:`jupyter_cc.paths.config_path`)::

       [brokers."kbs.example.org:8085"]
       cert_sha256 = "3f1c...e0"          # `jupyter-cc kbs info` on the broker prints it
       # ca_file = "/etc/ssl/my-ca.pem"   # or trust a CA instead

   With a pin the certificate must hash to it (compared in constant time) and nothing else is
   checked: not the chain, not the host name, not the dates. The pin is checked right after
   the handshake, before a byte of the request is sent.
2. a CA file (``ca_file`` argument, else ``$JUPYTER_CC_KBS_CA``, else ``ca_file`` in the
   broker's table): normal certificate and host-name checks against it.
3. the system trust store, with normal checks.

``kbs+http://`` is plain HTTP and is accepted only to ``localhost`` or a literal loopback
address (and ``localhost`` is connected to as ``127.0.0.1``, not resolved), where no one else
can answer. Every refusal is one :class:`~jupyter_cc.keys.KeyReleaseError` sentence naming
the broker and what to pin.

>>> trust = resolve_trust("kbs.example.org", 8085, tls=True, uri_pin=None)   # doctest: +SKIP
>>> conn = trust.connection(timeout=30)                                       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any

import tomllib

from jupyter_cc.errors import InputError
from jupyter_cc.kbs.tls import is_loopback_host
from jupyter_cc.keys import KeyReleaseError
from jupyter_cc.paths import config_path

__all__ = [
    "CA_ENV",
    "PIN_ENV",
    "BrokerTrust",
    "normalize_pin",
    "resolve_trust",
]

PIN_ENV = "JUPYTER_CC_KBS_CERT_SHA256"
CA_ENV = "JUPYTER_CC_KBS_CA"
_BROKER_KEYS = frozenset({"cert_sha256", "ca_file"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_pin(text: str, where: str) -> str:
    """A fingerprint as 64 lower-case hex digits (``:`` and spaces dropped); InputError if not."""
    pin = re.sub(r"[\s:]", "", str(text)).lower()
    if not _HEX64.fullmatch(pin):
        raise InputError(
            f"{where}: the certificate pin must be 64 hex digits (SHA-256 of the certificate's DER)",
            hint="copy it from `jupyter-cc kbs info` on the broker",
        )
    return pin


def _broker_config(broker: str) -> dict[str, Any]:
    """The ``[brokers."host:port"]`` table of the user config, or ``{}``."""
    path = config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read the config {path} ({exc})") from None
    brokers = doc.get("brokers", {})
    table = brokers.get(broker) if isinstance(brokers, dict) else None
    if table is None:
        return {}
    where = f'{path} [brokers."{broker}"]'
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a table")
    unknown = set(table) - _BROKER_KEYS
    if unknown:
        raise InputError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    for key, value in table.items():
        if not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a string")
    return table


def _refusal(broker: str, why: str) -> KeyReleaseError:
    return KeyReleaseError(
        f"the key broker {broker} is not authenticated: {why}; pin its certificate with "
        f'?cert-sha256=HEX on the URI, {PIN_ENV}, or cert_sha256 in [brokers."{broker}"] of '
        "jupyter_cc.toml (`jupyter-cc kbs info` on the broker prints it), or name its CA with ca_file"
    )


@functools.lru_cache(maxsize=1)
def _pinning_context() -> ssl.SSLContext:
    """The client context for pinned brokers (one per process: its settings never change)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the pin names the certificate; the name adds nothing
    ctx.verify_mode = ssl.CERT_NONE  # the chain is not what is trusted; the pin is
    return ctx


@functools.lru_cache(maxsize=8)
def _verifying_context(ca_file: str | None, _mtime: float) -> ssl.SSLContext:
    """A chain- and name-checking context for the CA file (None: the system store).

    Loading the system store takes tens of milliseconds, so contexts are kept, keyed by the
    file and its modification time (a changed CA file is loaded again).
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the CA file {ca_file} ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS that checks the peer's certificate against a pin right after the handshake."""

    def __init__(self, host: str, port: int, *, timeout: float, pin: str, broker: str) -> None:
        super().__init__(host, port, timeout=timeout, context=_pinning_context())
        self._pin = pin
        self._broker = broker

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) if isinstance(self.sock, ssl.SSLSocket) else None
        got = hashlib.sha256(der).hexdigest() if der else ""
        if not hmac.compare_digest(got.encode(), self._pin.encode()):
            self.close()
            raise _refusal(
                self._broker,
                f"its certificate (SHA-256 {got or 'none'}) is not the pinned one ({self._pin})",
            )


@dataclass(frozen=True)
class BrokerTrust:
    """How one broker is authenticated: by ``pin``, by ``ca_file``, by the system store, or
    (``tls`` False) not at all, which :func:`resolve_trust` allows only on loopback."""

    host: str
    port: int
    tls: bool
    pin: str | None = None
    ca_file: str | None = None

    @property
    def broker(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def how(self) -> str:
        """A few words for messages: what authenticates this broker."""
        if not self.tls:
            return "plain HTTP on loopback"
        if self.pin:
            return f"pinned certificate {self.pin[:16]}..."
        return f"CA file {self.ca_file}" if self.ca_file else "the system trust store"

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """An unopened connection that authenticates the broker as it connects."""
        if not self.tls:
            host = "127.0.0.1" if self.host.lower().rstrip(".") == "localhost" else self.host
            return http.client.HTTPConnection(host, self.port, timeout=timeout)
        if self.pin:
            return _PinnedHTTPSConnection(
                self.host, self.port, timeout=timeout, pin=self.pin, broker=self.broker
            )
        try:
            mtime = os.stat(self.ca_file).st_mtime if self.ca_file else 0.0
        except OSError as exc:
            raise InputError(f"cannot load the CA file {self.ca_file} ({exc.strerror})") from None
        ctx = _verifying_context(self.ca_file, mtime)
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=ctx)

    def handshake_refusal(self, exc: ssl.SSLError) -> KeyReleaseError:
        """The refusal for a failed TLS handshake (an untrusted or mismatched certificate)."""
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return _refusal(self.broker, f"its certificate is not trusted by {self.how} ({reason})")


def resolve_trust(
    host: str, port: int, *, tls: bool, uri_pin: str | None, ca_file: str | None = None
) -> BrokerTrust:
    """How to authenticate the broker at ``host:port`` (see the module docstring's order).

    Raises:
        KeyReleaseError: plain HTTP (``kbs+http://``) to an address that is not loopback.
        InputError: a malformed pin or config table.
    """
    probe = BrokerTrust(host, port, tls)
    if not tls:
        if not is_loopback_host(host):
            raise KeyReleaseError(
                f"the key broker {probe.broker} is not authenticated: kbs+http:// (plain HTTP) is "
                "accepted only to localhost or a loopback address; use kbs:// (HTTPS) and pin its "
                f"certificate with ?cert-sha256=HEX (`jupyter-cc kbs info` on the broker prints it)"
            )
        return probe
    table = _broker_config(probe.broker)
    if uri_pin:
        pin: str | None = normalize_pin(uri_pin, f"kbs://{probe.broker} ?cert-sha256")
    elif os.environ.get(PIN_ENV):
        pin = normalize_pin(os.environ[PIN_ENV], PIN_ENV)
    elif table.get("cert_sha256"):
        pin = normalize_pin(table["cert_sha256"], f'[brokers."{probe.broker}"] cert_sha256')
    else:
        pin = None
    ca = ca_file or os.environ.get(CA_ENV) or table.get("ca_file") or None
    return BrokerTrust(host, port, True, pin=pin, ca_file=None if pin else ca)
