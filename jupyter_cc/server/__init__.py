"""The ``jupyter_cc`` Jupyter server extension: a kernel's attestation over REST.

Enabled by ``jupyter-config/server-config/jupyter_cc.json`` (installed into
``etc/jupyter/jupyter_server_config.d``) or ``--ServerApp.jpserver_extensions``; the JupyterLab
status bar item and attestation panel read it. Routes, under the server's ``base_url``
(design section 3)::

    GET  jupyter-cc/api/kernels/<kernel_id>          the kernel's state (jupyter_cc.server.state)
    POST jupyter-cc/api/kernels/<kernel_id>/attest   re-attest now, answer the new state
    GET  jupyter-cc/api/refusals?kernel_name=K&path=P  confidential kernels refused at start
    GET  jupyter-cc/api/audit?limit=N                the last N audit-log entries

A kernel's connection changes (a drop, the reconnect after it) go on the server's event bus too
(:mod:`jupyter_cc.server.events`), so the status bar shows them as they happen.

The entry points jupyter_server calls live in :mod:`jupyter_cc` and delegate here, so that
``import jupyter_cc`` stays light.

Confidential kernels survive a restart of the server (``ConfidentialProvisioner.persist``, with
the resident guest agent): when the server exits, the kernels with a record are detached, not
stopped (:func:`jupyter_cc.provisioner.detach_all`, run just before jupyter_server shuts its
kernels down); when it starts, each record's kernel is started again under the same kernel id,
which the provisioner turns into connect, attest afresh, ``reattach`` (:func:`restore_kernels`).
A kernel whose re-attestation fails is not restored: its refusal is kept and audited like any
refused start, and the guest stops the orphan at its timeout.

So that open notebooks find their kernel again, the sessions (notebook path to kernel id) are
kept too: unless ``SessionManager.database_filepath`` is configured, the extension points it at
``<runtime dir>/jupyter-cc-sessions.db`` (0600), and a session whose kernel has a record is not
judged gone while the restore is still running (jupyter_server deletes a session whose kernel
it does not know the moment it lists it, which JupyterLab's first poll after the restart would
otherwise do): that check waits for the restore, at most :data:`RESTORE_WAIT_S` seconds.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

__all__ = ["API_PREFIX", "RESTORE_WAIT_S", "load", "restore_kernels"]

API_PREFIX = "jupyter-cc/api/"

#: How long a session check waits for its kernel's restore (a re-attestation) to finish.
RESTORE_WAIT_S = 120.0


def load(serverapp: Any) -> None:
    """Register the handlers on ``serverapp``'s web app under its ``base_url`` and log one line."""
    from jupyter_server.utils import url_path_join

    from jupyter_cc.server.handlers import routes

    web_app = serverapp.web_app
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*$", routes(base_url))
    serverapp.log.info("jupyter_cc: attestation API at %s", url_path_join(base_url, API_PREFIX))
    from jupyter_cc.server import events

    events.install(serverapp)
    _detach_before_kernel_cleanup(serverapp)
    restored = _keep_sessions(serverapp)
    from tornado.ioloop import IOLoop

    IOLoop.current().add_callback(restore_kernels, serverapp, restored)


def _keep_sessions(serverapp: Any) -> asyncio.Event | None:
    """Keep the sessions across a restart, and let none be dropped while its kernel is restored.

    A plain server keeps its sessions in memory; a restored kernel would come back under its id
    with no notebook pointing at it. The session database goes to the runtime dir (0600) unless
    the operator configured one. ``kernel_culled`` (jupyter_server's only test of "this session's
    kernel is gone", after which it deletes the session) waits for the restore of a kernel that
    has a record, and of no other. Returns the event :func:`restore_kernels` sets when it is
    done (None when there is nothing to restore).
    """
    from traitlets import TraitError

    from jupyter_cc.files import create_private_db
    from jupyter_cc.remote import records

    manager = getattr(serverapp, "session_manager", None)
    if manager is None:
        return None
    configured = "database_filepath" in serverapp.config.get("SessionManager", {})
    if not configured and manager.database_filepath == ":memory:":
        path = Path(serverapp.runtime_dir) / "jupyter-cc-sessions.db"
        try:
            create_private_db(path)
            manager.database_filepath = str(path)
        except (OSError, TraitError) as exc:  # TraitError: the file there is not an SQLite database
            serverapp.log.warning(
                "jupyter_cc: sessions stay in memory, so notebooks do not find restored kernels "
                "after a restart (cannot use %s: %s); set SessionManager.database_filepath",
                path,
                exc,
            )
    pending = {record.kernel_id for record in records.records()}
    if not pending:
        return None
    restored = asyncio.Event()
    original = manager.kernel_culled

    @functools.wraps(original)
    async def kernel_culled(kernel_id: str) -> bool:
        if kernel_id in pending and not restored.is_set():
            try:
                await asyncio.wait_for(restored.wait(), timeout=RESTORE_WAIT_S)
            except asyncio.TimeoutError:
                pass  # judged as it stands: a kernel not restored by now is gone
        return bool(await original(kernel_id))

    manager.kernel_culled = kernel_culled
    return restored


def _detach_before_kernel_cleanup(serverapp: Any) -> None:
    """Run :func:`~jupyter_cc.provisioner.detach_all` when the server cleans its kernels up.

    A plain (non-ExtensionApp) server extension gets no stop hook, so the server's own
    ``cleanup_kernels`` is wrapped on this instance: it runs only when the server exits.
    """
    original = getattr(serverapp, "cleanup_kernels", None)
    if original is None:
        return

    @functools.wraps(original)
    async def cleanup_kernels() -> None:
        from jupyter_cc.provisioner import detach_all

        kept = detach_all()
        if kept:
            serverapp.log.info("jupyter_cc: %d confidential kernel(s) left running for the next server", kept)
        await original()

    serverapp.cleanup_kernels = cleanup_kernels


async def restore_kernels(serverapp: Any, done: asyncio.Event | None = None) -> list[str]:
    """Start each recorded kernel again under its id (the provisioner re-attests and re-attaches);
    returns the ids restored. Failures are logged, kept as refusals and audited, never raised.
    ``done`` is set at the end, whatever happened (sessions wait for it: :func:`_keep_sessions`)."""
    from jupyter_cc.remote import records

    restored = []
    manager = serverapp.kernel_manager
    try:
        for record in records.records():
            if record.kernel_id in manager:
                continue
            try:
                await manager.start_kernel(kernel_id=record.kernel_id, kernel_name=record.kernel_name)
            except Exception as exc:  # the server must start whatever one kernel does
                records.forget(record.kernel_id)
                serverapp.log.error("jupyter_cc: kernel %s not restored: %s", record.kernel_id, exc)
                continue
            serverapp.log.info("jupyter_cc: restored confidential kernel %s", record.kernel_id)
            restored.append(record.kernel_id)
    finally:
        if done is not None:
            done.set()
    return restored
