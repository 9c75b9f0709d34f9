"""A confidential kernel's start steps and connection changes, on jupyter_server's event bus.

Two things JupyterLab would otherwise learn late, since it asks for a kernel's state every 30
seconds and learns a kernel's id only once its start is over:

- when the SSH connection to a kernel's CVM drops, the provisioner reconnects and attests again
  (resident agent); the status bar would say "verified" through the whole drop;
- an Azure CVM started from deallocated takes minutes before the kernel even attests; the
  status bar would say "attesting…" all along.

Each is emitted as an event (``/api/events/subscribe``, the stream JupyterLab's
``serviceManager.events`` reads) under :data:`CONNECTION_SCHEMA_ID` or :data:`START_SCHEMA_ID`,
and the labextension shows it at once. An event holds the kernel's id, name and notebook path
and a state or a step line: no claim, nothing of the evidence. The ``$id``s are names, never
fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_cc.server.state import notebook_path

__all__ = ["CONNECTION_SCHEMA", "CONNECTION_SCHEMA_ID", "START_SCHEMA", "START_SCHEMA_ID", "install"]

CONNECTION_SCHEMA_ID = "https://events.jupyter-cc.org/kernel_connection/v1"
START_SCHEMA_ID = "https://events.jupyter-cc.org/kernel_start/v1"

_KERNEL_ID = {"type": "string", "description": "The kernel's id in the kernel manager."}

CONNECTION_SCHEMA: dict[str, Any] = {
    "$id": CONNECTION_SCHEMA_ID,
    "version": "1",
    "title": "Confidential kernel connection",
    "description": (
        "The connection from the Jupyter server to a confidential kernel's CVM changed: "
        "'reconnecting' (it dropped; the server reconnects and attests again with a fresh nonce), "
        "'reconnected' (re-attested, the same kernel taken back) or 'lost' (the kernel is gone)."
    ),
    "type": "object",
    "required": ["kernel_id", "state"],
    "properties": {
        "kernel_id": _KERNEL_ID,
        "state": {"enum": ["reconnecting", "reconnected", "lost"], "description": "What happened."},
    },
    "additionalProperties": False,
}

START_SCHEMA: dict[str, Any] = {
    "$id": START_SCHEMA_ID,
    "version": "1",
    "title": "Confidential kernel start step",
    "description": (
        "A step of reaching a confidential kernel's CVM before it attests, such as starting a "
        "deallocated Azure CVM. The notebook's path finds the kernel in JupyterLab, which learns "
        "the kernel id only once the start is over."
    ),
    "type": "object",
    "required": ["kernel_id", "kernel_name", "path", "step"],
    "properties": {
        "kernel_id": _KERNEL_ID,
        "kernel_name": {"type": "string", "description": "The kernelspec's name."},
        "path": {
            "type": "string",
            "description": "The notebook's path under the server's root, as JupyterLab names it, or ''.",
        },
        "step": {"type": "string", "description": "One line saying what is under way."},
    },
    "additionalProperties": False,
}


def install(serverapp: Any) -> Callable[[], None]:
    """Register the schemas on ``serverapp``'s event logger and emit what the provisioners tell;
    returns what stops the emitting."""
    logger = getattr(serverapp, "event_logger", None)
    if logger is None:  # a jupyter_server without events: the labextension's poll remains
        return lambda: None
    from jupyter_cc.provisioner import on_connection_state, on_start_step

    logger.register_event_schema(CONNECTION_SCHEMA)
    logger.register_event_schema(START_SCHEMA)

    def connection(kernel_id: str, state: str) -> None:
        logger.emit(schema_id=CONNECTION_SCHEMA_ID, data={"kernel_id": kernel_id, "state": state})

    root = str(getattr(serverapp, "root_dir", "") or "")

    def start(kernel_id: str, kernel_name: str, session_name: str, step: str) -> None:
        path = notebook_path(session_name, root) or ""
        data = {"kernel_id": kernel_id, "kernel_name": kernel_name, "path": path, "step": step}
        logger.emit(schema_id=START_SCHEMA_ID, data=data)

    undo = [on_connection_state(connection), on_start_step(start)]

    def stop() -> None:
        for remove in undo:
            remove()

    return stop
