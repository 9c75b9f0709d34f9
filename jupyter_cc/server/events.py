"""A confidential kernel's connection changes, on jupyter_server's event bus.

When the SSH connection to a kernel's CVM drops, the provisioner reconnects and attests again
(resident agent); JupyterLab, which asks for a kernel's state every 30 seconds, would say
"verified" through the whole drop and learn of the reconnect late. Each change is emitted as
an event under :data:`SCHEMA_ID` (``/api/events/subscribe``, the stream JupyterLab's
``serviceManager.events`` reads), and the labextension asks for the kernel's state at once.

An event holds the kernel id and the state only: no host, no claim, nothing of the evidence.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "SCHEMA_ID", "install"]

SCHEMA_ID = "https://events.jupyter-cc.org/kernel_connection/v1"

SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
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
        "kernel_id": {"type": "string", "description": "The kernel's id in the kernel manager."},
        "state": {"enum": ["reconnecting", "reconnected", "lost"], "description": "What happened."},
    },
    "additionalProperties": False,
}


def install(serverapp: Any) -> None:
    """Register the schema on ``serverapp``'s event logger and emit each connection change."""
    logger = getattr(serverapp, "event_logger", None)
    if logger is None:  # a jupyter_server without events: the labextension's poll remains
        return
    from jupyter_cc.provisioner import on_connection_state

    logger.register_event_schema(SCHEMA)

    def emit(kernel_id: str, state: str) -> None:
        logger.emit(schema_id=SCHEMA_ID, data={"kernel_id": kernel_id, "state": state})

    on_connection_state(emit)
