"""The ``jupyter_cc`` Jupyter server extension: a kernel's attestation over REST.

Enabled by ``jupyter-config/server-config/jupyter_cc.json`` (installed into
``etc/jupyter/jupyter_server_config.d``) or ``--ServerApp.jpserver_extensions``; the JupyterLab
status bar item and attestation panel read it. Routes, under the server's ``base_url``
(design section 3)::

    GET  jupyter-cc/api/kernels/<kernel_id>          the kernel's state (jupyter_cc.server.state)
    POST jupyter-cc/api/kernels/<kernel_id>/attest   re-attest now, answer the new state
    GET  jupyter-cc/api/refusals?kernel_name=K&path=P  confidential kernels refused at start
    GET  jupyter-cc/api/audit?limit=N                the last N audit-log entries

The entry points jupyter_server calls live in :mod:`jupyter_cc` and delegate here, so that
``import jupyter_cc`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["API_PREFIX", "load"]

API_PREFIX = "jupyter-cc/api/"


def load(serverapp: Any) -> None:
    """Register the handlers on ``serverapp``'s web app under its ``base_url`` and log one line."""
    from jupyter_server.utils import url_path_join

    from jupyter_cc.server.handlers import routes

    web_app = serverapp.web_app
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*$", routes(base_url))
    serverapp.log.info("jupyter_cc: attestation API at %s", url_path_join(base_url, API_PREFIX))
