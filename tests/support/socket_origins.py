"""Name where a leaked socket was opened.

The suite turns warnings into errors, so a socket that some test left open fails whichever
later test happens to be running when the garbage collector finds it, with a message that
names only its addresses. This records a short stack when a Python socket is made and adds it
to the socket's repr, which is what ``ResourceWarning: unclosed <socket ...>`` prints, so the
failure names the code that opened it.
"""

from __future__ import annotations

import socket
import traceback

_ORIGINS: dict[int, str] = {}
_SKIP = ("/socket.py", "/asyncio/", "/selectors.py", "/ssl.py")


def _origin() -> str:
    frames = [f for f in traceback.extract_stack(limit=24)[:-2] if not f.filename.endswith(_SKIP)]
    return " < ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-8:]))


def install() -> None:
    """Record each socket's origin for the rest of this process (idempotent)."""
    if getattr(socket.socket, "_jupyter_cc_origins", False):
        return
    init = socket.socket.__init__
    plain_repr = socket.socket.__repr__
    real_close = socket.socket._real_close  # type: ignore[attr-defined]

    def __init__(self: socket.socket, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        _ORIGINS[id(self)] = _origin()

    def _real_close(self: socket.socket, *args: object) -> None:
        _ORIGINS.pop(id(self), None)  # closed: nothing to name, and no entry grows the table
        real_close(self, *args)

    def __repr__(self: socket.socket) -> str:
        text = plain_repr(self)
        where = _ORIGINS.get(id(self))
        return f"{text[:-1]}, opened at {where}>" if where else text

    socket.socket.__init__ = __init__  # type: ignore[method-assign]
    socket.socket.__repr__ = __repr__  # type: ignore[method-assign]
    socket.socket._real_close = _real_close  # type: ignore[attr-defined]
    socket.socket._jupyter_cc_origins = True  # type: ignore[attr-defined]
