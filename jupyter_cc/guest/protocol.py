"""The agent protocol: one JSON object per line, one response per request, in order.

Requests (client to agent)::

    {"op": "hello"}
    {"op": "attest", "nonce": "<64 hex>", "host_key_type": "ssh-ed25519" | null}
    {"op": "start", "env": {"NAME": "value"}, "cwd": "/path" | null}
    {"op": "poll"}
    {"op": "signal", "signum": 2}
    {"op": "stop", "now": false}
    {"op": "bye"}

Responses: ``{"ok": true, ...}`` or ``{"ok": false, "check": "...", "error": "<one sentence>"}``.
Secrets (the kernel's HMAC key, environment values) travel only inside this stream, which for
the ``ssh`` transport is encrypted up to the sshd inside the TEE; never on a command line.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from jupyter_cc.errors import CCError, EvidenceError

__all__ = ["MAX_LINE", "PROTOCOL_VERSION", "AgentError", "Reader", "Writer", "read_message", "write_message"]

PROTOCOL_VERSION = 1
MAX_LINE = 8 * 1024 * 1024


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
