"""How values cross between an ordinary kernel and a confidential one (``%cc push``/``pull``).

A value travels as text: the safe codec's content type and its bytes, base64, in one JSON
object. The same codecs as sealing (bytes, str, JSON, NumPy, pandas via Arrow); pickle only when
the user explicitly asks for the unsafe path. Text fits in an ``execute_request`` one way and in
``user_expressions`` the other, so no side channel is needed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from jupyter_cc.errors import InputError
from jupyter_cc.seal.codecs import ContentType, decode, encode

__all__ = ["MAX_TRANSFER", "pack", "unpack"]

MAX_TRANSFER = 512 * 1024 * 1024


def pack(value: Any, *, unsafe_pickle: bool = False, extra: dict[str, Any] | None = None) -> str:
    """``value`` as transfer text (content type, base64 bytes, and ``extra`` members)."""
    content_type, data = encode(value, unsafe_pickle=unsafe_pickle)
    raw = bytes(data)
    if len(raw) > MAX_TRANSFER:
        raise InputError(
            f"the value is {len(raw)} bytes encoded, more than the {MAX_TRANSFER} a transfer carries",
            hint="seal it to a file in the confidential kernel and move the file instead",
        )
    doc = {
        "content_type": content_type.to_json(),
        "data": base64.b64encode(raw).decode("ascii"),
        **(extra or {}),
    }
    return json.dumps(doc, separators=(",", ":"))


def unpack(text: str, *, unsafe_pickle: bool = False) -> tuple[Any, dict[str, Any]]:
    """The value in transfer text, and the other members (reason, kind...)."""
    try:
        doc = json.loads(text)
        content_type = ContentType.from_json(doc.pop("content_type"))
        data = bytearray(base64.b64decode(doc.pop("data"), validate=True))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"the transferred value is malformed ({exc.__class__.__name__})") from None
    return decode(content_type, data, unsafe_pickle=unsafe_pickle), doc
