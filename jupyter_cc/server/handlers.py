"""The REST handlers under ``<base_url>/jupyter-cc/api/`` (design section 3).

``GET kernels/<id>`` and ``POST kernels/<id>/attest`` answer a kernel state (see
:mod:`jupyter_cc.server.state` for its keys; a kernel refused at start is answered from the
refusal the provisioner kept); ``GET refusals?kernel_name=K&path=P&limit=N`` answers
``{"refusals": [...], "limit": N}``, the kept refusals newest first; ``GET audit?limit=N``
answers ``{"entries": [...], "limit": N}`` with the last N audit-log entries, oldest first.

Every verb is ``@tornado.web.authenticated`` (outermost, so the server's start-up check sees it)
and then ``@authorized`` against the ``kernels`` resource, like jupyter_server's own kernel API:
an authorizer that may not read kernels may not read their attestations or the audit log either,
and re-attesting (which can stop a kernel) needs write. Errors are JSON
``{"message": <one sentence>, "reason": <HTTP reason>}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from jupyter_cc.errors import CCError
from jupyter_cc.server.state import (
    is_confidential,
    kernel_state,
    parse_limit,
    refusal_state,
    refusals,
    spec_is_confidential,
)

__all__ = ["AuditHandler", "KernelAttestHandler", "KernelStateHandler", "RefusalsHandler", "routes"]

AUTH_RESOURCE = "kernels"
# Kernel ids are looked up, never interpreted, so any path segment is accepted; an unknown one is
# this API's JSON 404 rather than the server's HTML page for an unmatched URL.
_KERNEL_ID = r"(?P<kernel_id>[^/]+)"


class _BaseHandler(APIHandler):
    """Shared by the handlers: the auth resource, JSON answers and one-sentence errors."""

    auth_resource = AUTH_RESOURCE

    def _answer(self, body: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def _limit(self) -> int | None:
        """The ``limit`` query argument, or None after answering 400 with the reason."""
        try:
            return parse_limit(self.get_query_argument("limit", None))
        except ValueError as exc:
            self._fail(400, f"{str(exc)[0].upper()}{str(exc)[1:]}.")
            return None

    def _fail(self, status: int, sentence: str) -> None:
        """Finish with ``{"message": sentence, "reason": ...}`` (no %-formatting of the text)."""
        self.set_status(status)
        self._answer({"message": sentence, "reason": self._reason})

    @property
    def _root_dir(self) -> str | None:
        root = getattr(self.serverapp, "root_dir", None) if self.serverapp is not None else None
        return str(root) if root else None

    def _refusal(self, kernel_id: str) -> Any | None:
        """The kept refusal of a kernel refused at start with this id, if any."""
        from jupyter_cc.provisioner import recent_refusals

        return next((r for r in recent_refusals() if r.kernel_id == kernel_id), None)

    def _kernel(self, kernel_id: str) -> Any | None:
        """The kernel's KernelManager, or None after answering 404 (409 for a refused kernel)."""
        manager = self.kernel_manager
        if kernel_id not in manager:
            refusal = self._refusal(kernel_id)
            if refusal is not None:
                self._fail(409, f"Kernel {kernel_id} was refused at start: {refusal.sentence}")
            else:
                self._fail(404, f"There is no kernel with id {kernel_id!r} on this server.")
            return None
        return manager.get_kernel(kernel_id)


class KernelStateHandler(_BaseHandler):
    """``GET kernels/<id>``: whether the kernel runs in a verified TEE, and its evidence."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        if kernel_id not in self.kernel_manager:
            refusal = self._refusal(kernel_id)
            if refusal is not None:
                self._answer(refusal_state(kernel_id, refusal, self._root_dir))
                return
        km = self._kernel(kernel_id)
        if km is not None:
            self._answer(kernel_state(kernel_id, km))


class KernelAttestHandler(_BaseHandler):
    """``POST kernels/<id>/attest``: re-attest now with a fresh nonce and answer the new state.

    A failed re-attestation is answered 200 with ``confidential: false`` and ``error``: the
    request itself worked, and the provisioner has already stopped the kernel (fail closed).
    Each re-attestation is recorded in the audit log: ``attest``, or ``attest-refused`` on failure.
    """

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        km = self._kernel(kernel_id)
        if km is None:
            return
        provisioner = getattr(km, "provisioner", None)
        if not is_confidential(provisioner):
            if provisioner is None and spec_is_confidential(km):
                self._fail(409, f"Kernel {kernel_id} is not running, so it cannot be re-attested.")
            else:
                self._fail(
                    400, f"Kernel {kernel_id} is not a confidential kernel, so there is nothing to attest."
                )
            return
        if not provisioner.has_process:
            self._fail(409, f"Kernel {kernel_id} is not running, so it cannot be re-attested.")
            return
        try:
            await provisioner.reattest()
        except CCError as exc:
            self.log.error("jupyter_cc: re-attestation of kernel %s failed: %s", kernel_id, exc)
        state = kernel_state(kernel_id, km)
        await asyncio.to_thread(self._audit, state)
        self._answer(state)

    def _audit(self, state: dict[str, Any]) -> None:
        """Record the re-attestation; a log that cannot be written is a warning, not a 500."""
        from jupyter_cc.audit import record

        claims = state.get("claims") or {}
        verdict = state.get("verdict") or {}
        try:
            record(
                "attest" if state["confidential"] else "attest-refused",
                target=f"kernel {state['kernel_id']}",
                via="jupyter-server",
                passed=bool(state["confidential"]),
                policy=verdict.get("policy"),
                tee=claims.get("tee"),
                simulated=bool(state.get("simulated")),
                evidence_sha256=state.get("evidence_sha256"),
                error=state.get("error"),
            )
        except CCError as exc:
            self.log.warning("jupyter_cc: re-attestation not in the audit log: %s", exc.diagnostics())


class RefusalsHandler(_BaseHandler):
    """``GET refusals``: the confidential kernels refused at start, newest first.

    Optional filters ``kernel_name`` (the kernelspec) and ``path`` (the notebook, relative to
    the server root), and ``limit`` (default 50, at most 1000). Each refusal carries the
    dialog's text, its first sentence and the failed rules (see :mod:`jupyter_cc.server.state`).
    """

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from jupyter_cc.provisioner import recent_refusals

        limit = self._limit()
        if limit is None:
            return
        found = refusals(
            recent_refusals(),
            kernel_name=self.get_query_argument("kernel_name", None) or None,
            path=self.get_query_argument("path", None) or None,
            limit=limit,
            root_dir=self._root_dir,
        )
        self._answer({"refusals": found, "limit": limit})


class AuditHandler(_BaseHandler):
    """``GET audit?limit=N``: the last N entries of the audit log (default 50, at most 1000)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from jupyter_cc import audit

        limit = self._limit()
        if limit is None:
            return
        try:
            entries = await asyncio.to_thread(audit.read, limit=limit)
        except CCError as exc:
            self._fail(500, f"The audit log cannot be read: {exc.diagnostics()}")
            return
        self._answer({"entries": entries, "limit": limit})


def routes(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """The (pattern, handler) pairs to register under ``base_url``."""
    api = url_path_join(base_url, "jupyter-cc", "api")
    return [
        (url_path_join(api, "kernels", _KERNEL_ID) + "/?", KernelStateHandler),
        (url_path_join(api, "kernels", _KERNEL_ID, "attest") + "/?", KernelAttestHandler),
        (url_path_join(api, "refusals") + "/?", RefusalsHandler),
        (url_path_join(api, "audit") + "/?", AuditHandler),
    ]
