"""A session with an attested confidential kernel, driven from an ordinary kernel.

``%cc connect PROFILE`` starts a kernel through the very same ``confidential-provisioner`` code
a kernelspec uses (attestation, host-key binding, the tunnel), from a kernelspec written to a
private folder for this session only. ``%%confidential`` cells run there; their output is
replayed here as if local; ``%cc push``/``pull`` move values with the safe codecs.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_cc.errors import CCError, InputError

__all__ = ["ConfidentialSession", "RemoteError", "SessionError"]


class SessionError(CCError):
    """The confidential session could not be started or used."""

    check = "session"


class RemoteError(Exception):
    """An exception raised in the confidential kernel, shown with the remote traceback.

    Not a :class:`~jupyter_cc.errors.CCError`: it carries the user's own exception from the
    TEE (its name and value unchanged), not a check of jupyter-cc's that failed.
    """

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a local traceback: the error reads as if local.
        return self.traceback or [f"{self.ename}: {self.evalue}"]


class ConfidentialSession:
    """One attested remote kernel and a client to it."""

    def __init__(self, name: str, provisioner_config: dict[str, Any], *, timeout: float = 120.0) -> None:
        # Imported here, not when the magics load: the provisioner pulls in paramiko and tornado
        # (~0.2 s), which every confidential kernel's start would otherwise pay (issue 14).
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        from jupyter_cc.kernelspec import kernelspec

        self.name = name
        self.timeout = timeout
        self._dir = Path(tempfile.mkdtemp(prefix="jupyter-cc-session-"))
        spec_dir = self._dir / "cc-session"
        spec_dir.mkdir()
        spec = kernelspec(f"Confidential session {name}", dict(provisioner_config))
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        self.km = KernelManager(
            kernel_name="cc-session", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self._dir)])
        )
        self.kc: Any = None

    def __repr__(self) -> str:
        return f"ConfidentialSession({self.name!r}, alive={self.alive})"

    @property
    def alive(self) -> bool:
        return bool(self.km.has_kernel and self.km.is_alive())

    @property
    def attestation_state(self) -> dict[str, Any]:
        from jupyter_cc.provisioner import ConfidentialProvisioner

        prov = self.km.provisioner
        if not isinstance(prov, ConfidentialProvisioner):
            return {"confidential": False}
        return prov.attestation_state()

    def start(self) -> None:
        try:
            self.km.start_kernel()
        except Exception as exc:
            message = str(exc)
            self.close()
            raise SessionError(message.removeprefix("Confidential kernel not started: ")) from None
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=self.timeout)
        except RuntimeError as exc:
            self.close()
            raise SessionError(f"the confidential kernel did not become ready ({exc})") from None

    def execute(
        self,
        code: str,
        *,
        on_output: Callable[[dict[str, Any]], None],
        interrupt_on: type[BaseException] = KeyboardInterrupt,
        user_expressions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run ``code`` remotely; every iopub output goes to ``on_output``; returns the reply.

        A local KeyboardInterrupt while waiting interrupts the remote cell (a message on the
        control channel), waits for its reply, then re-raises locally.
        """
        if self.kc is None or not self.alive:
            raise SessionError(
                f"the confidential kernel of session '{self.name}' is not running", hint="%cc connect"
            )
        try:
            reply: dict[str, Any] = self.kc.execute_interactive(
                code,
                timeout=None,
                output_hook=on_output,
                store_history=False,
                user_expressions=user_expressions or {},
                allow_stdin=False,
            )
        except interrupt_on:
            self.km.interrupt_kernel()
            self.kc.execute_interactive("", timeout=30, output_hook=on_output, store_history=False)
            raise
        return reply

    def evaluate(self, expression: str) -> str:
        """Evaluate ``expression`` remotely and return its value, which must be a str."""
        reply = self.execute("", on_output=lambda msg: None, user_expressions={"value": expression})
        result = reply["content"]["user_expressions"]["value"]
        if result.get("status") != "ok":
            raise RemoteError(
                result.get("ename", "Error"), result.get("evalue", ""), result.get("traceback", [])
            )
        text = result["data"]["text/plain"]
        value = ast.literal_eval(text)
        if not isinstance(value, str):
            raise SessionError("the confidential kernel returned something other than text")
        return value

    def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)
        shutil.rmtree(self._dir, ignore_errors=True)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def replay_output(msg: dict[str, Any]) -> None:
    """Show a remote iopub message here: streams to our streams, displays through IPython."""
    from IPython.display import publish_display_data

    kind = msg["header"]["msg_type"]
    content = msg["content"]
    if kind == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(content.get("text", ""))
        stream.flush()
    elif kind in ("display_data", "execute_result", "update_display_data"):
        data = dict(content.get("data", {}))
        metadata = content.get("metadata", {})
        if (metadata.get("jupyter_cc") or {}).get("card") == "copy":
            return  # a card's static copy: the card's own text/html shows it here (see card.py)
        if WIDGET_VIEW in data and len(data) > 1:
            # The widget's model lives in the confidential kernel and never reaches this
            # frontend: its text/html and text/plain render instead of "model not found".
            del data[WIDGET_VIEW]
        publish_display_data(data, metadata)  # type: ignore[no-untyped-call]
    elif kind == "clear_output":
        from IPython.display import clear_output

        clear_output(wait=content.get("wait", False))  # type: ignore[no-untyped-call]


def check_name(name: str, what: str = "variable") -> str:
    if not name.isidentifier():
        raise InputError(f"{what} name {name!r} is not a Python identifier")
    return name
