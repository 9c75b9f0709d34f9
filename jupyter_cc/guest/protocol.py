"""The agent protocol: one JSON object per line, one response per request, in order.

Requests (client to agent)::

    {"op": "hello"}
    {"op": "attest", "nonce": "<64 hex>", "host_key_type": "ssh-ed25519" | null, "curve": false}
    {"op": "start", "env": {"NAME": "value"}, "cwd": "/path" | null}
    {"op": "poll"}
    {"op": "signal", "signum": 2}
    {"op": "stop", "now": false}
    {"op": "bye"}

The resident agent (:mod:`jupyter_cc.guest.resident`) answers the same requests on its Unix socket
(default :data:`DEFAULT_SOCKET`, ``{user}`` the SSH user) and adds ``kernel_id`` to ``start``'s
answer, an ``orphan_timeout`` field to ``start``, the service's state to ``hello``'s answer
(``resident``, ``pool``, ``kernels``, ``orphans``, and ``idle_seconds``: 0 while a kernel runs,
else the seconds since the last one stopped, for idle culling), and::

    {"op": "reattach", "kernel_id": "<32 hex>"}   # after a fresh attest on the new connection

With ``"curve": true`` the agent makes the next kernel's CurveZMQ key pair in the TEE and binds
its public key as ``curve-server-key`` (answering ``"curve": true``); ``start`` then puts the pair
into the kernel's connection file and its answer's ``connection`` (``curve_publickey``,
``curve_secretkey``), after the client's verdict, as it does the HMAC key.

Responses: ``{"ok": true, ...}`` or ``{"ok": false, "check": "...", "error": "<one sentence>"}``.
Secrets (the kernel's HMAC key, environment values) travel only inside this stream, which for
the ``ssh`` transport is encrypted up to the sshd inside the TEE; never on a command line.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from jupyter_cc.errors import CCError, EvidenceError

__all__ = [
    "DEFAULT_SOCKET",
    "MAX_LINE",
    "PROTOCOL_VERSION",
    "AgentError",
    "Reader",
    "Writer",
    "read_message",
    "write_message",
]

PROTOCOL_VERSION = 1
MAX_LINE = 8 * 1024 * 1024
#: Where a user's resident agent listens, ``{user}`` being the user name (host and guest agree).
DEFAULT_SOCKET = "/run/jupyter-cc/{user}/agent.sock"


class Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...

    def flush(self) -> Any: ...


class AgentError(EvidenceError):
    """The guest agent answered with an error, or broke the protocol."""

    check = "guest agent"


def write_message(stream: Writer, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def read_message(stream: Reader, *, what: str = "guest agent") -> dict[str, Any]:
    """Read one message; :class:`AgentError` on end of stream, oversize or bad JSON."""
    line = stream.readline(MAX_LINE + 1)
    if not line:
        raise AgentError(f"the {what} closed the connection")
    if len(line) > MAX_LINE:
        raise AgentError(f"the {what} sent a message over {MAX_LINE} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AgentError(f"the {what} sent something that is not a JSON message: {line[:60]!r}") from None
    if not isinstance(message, dict):
        raise AgentError(f"the {what} sent a JSON {type(message).__name__}, expected an object")
    return message


def error_message(exc: CCError) -> dict[str, Any]:
    return {"ok": False, "check": exc.check, "error": exc.diagnostics()}
