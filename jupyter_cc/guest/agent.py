"""The agent's request loop: attest, start, poll, signal and stop one kernel.

Everything the client sends arrives on stdin as JSON lines (see :mod:`jupyter_cc.guest.protocol`);
nothing secret is ever taken from the command line. When the stream ends, whatever the reason
(the client closed, sshd died), the kernel is stopped and its files removed: a lost connection
leaves nothing running in the guest.
"""

from __future__ import annotations

import base64
import signal as signal_module
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_cc.attest.binding import host_key_digest
from jupyter_cc.decoding import decode_hex
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.guest import server as guest_server
from jupyter_cc.guest.kernel import GuestKernel
from jupyter_cc.guest.protocol import (
    PROTOCOL_VERSION,
    Reader,
    Writer,
    error_message,
    read_message,
    write_message,
)

__all__ = ["Agent", "read_host_key"]

_SSH_DIR = Path("/etc/ssh")


def read_host_key(key_type: str, host_key_file: Path | None = None, ssh_dir: Path = _SSH_DIR) -> bytes:
    """The public key blob of the guest sshd's host key of ``key_type`` (e.g. ``ssh-ed25519``).

    With ``host_key_file`` that file is used whatever its type, which must still match the type
    the client saw in the handshake; otherwise ``/etc/ssh/ssh_host_*_key.pub`` is searched.
    """
    candidates = [host_key_file] if host_key_file else sorted(ssh_dir.glob("ssh_host_*_key.pub"))
    for path in candidates:
        try:
            fields = path.read_text().split()
        except OSError as exc:
            raise InputError(f"cannot read the host key {path} ({exc.strerror})") from None
        if len(fields) >= 2 and fields[0] == key_type:
            try:
                return base64.b64decode(fields[1], validate=True)
            except ValueError:
                raise InputError(f"the host key {path} is not valid base64") from None
    where = str(host_key_file) if host_key_file else f"{ssh_dir}/ssh_host_*_key.pub"
    raise InputError(
        f"no {key_type} host key in {where}",
        hint="the client saw a host key the guest sshd does not hold: a relay, or a wrong --host-key-file",
    )


#: The REPORT_DATA label of the kernel's CurveZMQ server key (attest.binding.OPTIONAL_LABELS).
CURVE_LABEL = "curve-server-key"


def _curve_keypair() -> tuple[bytes, bytes] | None:
    """A fresh CurveZMQ key pair (Z85 public, Z85 secret) made here, in the TEE; None when this
    guest's libzmq has no CURVE (the client then sees an unbound key and decides)."""
    import zmq  # ipykernel needs pyzmq anyway; loaded only when a client asks for CurveZMQ

    if not zmq.has("curve"):
        return None
    public, secret = zmq.curve_keypair()
    return public, secret


def _z85_decode(text: bytes) -> bytes:
    from zmq.utils import z85

    return z85.decode(text)


class Agent:
    """Serve one client: at most one kernel, stopped when the client goes away."""

    def __init__(
        self,
        *,
        tee: str = "auto",
        host_key_file: Path | None = None,
        sim_dir: Path | None = None,
        python: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        kernel: GuestKernel | None = None,
    ) -> None:
        """``kernel``: one already prepared (``__main__`` starts it before importing this)."""
        self.tee = tee
        self.host_key_file = host_key_file
        self.sim_dir = sim_dir
        base_env = {"JUPYTER_CC_TEE": tee}
        if sim_dir is not None:
            base_env["JUPYTER_CC_SIM_DIR"] = str(sim_dir)
        self.kernel = kernel or GuestKernel(python or sys.executable, base_env=base_env)
        self.clock = clock
        # The CurveZMQ key pair the last attestation bound, for the next kernel (never reused).
        self._curve: tuple[bytes, bytes] | None = None

    def _hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        from jupyter_cc.guest.collectors import probe

        sources = [s if isinstance(s, str) else f"{s.source}: {s.reason}" for s in probe()]
        answer = {"ok": True, "version": PROTOCOL_VERSION, "tee": self.tee, "sources": sources}
        return {**answer, "resident": False}

    def _attest(self, msg: dict[str, Any]) -> dict[str, Any]:
        # Imported here, not at start-up: X.509 and the collectors cost ~60 ms that every kernel
        # start would otherwise pay before the agent can even answer.
        from jupyter_cc.guest.bundle import collect_bundle

        nonce = decode_hex(str(msg.get("nonce", "")), what="the attestation nonce")
        key_type = msg.get("host_key_type")
        if key_type is None:
            digest = host_key_digest(None)  # local transport: no SSH host key to bind
        elif isinstance(key_type, str):
            digest = host_key_digest(read_host_key(key_type, self.host_key_file))
        else:
            raise InputError("host_key_type must be a string or null")
        self._curve = _curve_keypair() if msg.get("curve") else None
        bind = {CURVE_LABEL: _z85_decode(self._curve[0])} if self._curve is not None else None
        bundle = collect_bundle(
            nonce, digest, tee=self.tee, sim_dir=self.sim_dir, clock=self.clock, bind=bind
        )
        return {"ok": True, "bundle": bundle.decode(), "curve": self._curve is not None}

    def _start(self, msg: dict[str, Any]) -> dict[str, Any]:
        env = msg.get("env") or {}
        if not isinstance(env, dict):
            raise InputError("env must be an object of strings")
        cwd = msg.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise InputError("cwd must be a string or null")
        curve, self._curve = self._curve, None  # one key pair per kernel, from this attestation
        return {"ok": True, **self.kernel.start(env, cwd, curve=curve)}

    def _poll(self, msg: dict[str, Any]) -> dict[str, Any]:
        code = self.kernel.poll()
        out: dict[str, Any] = {"ok": True, "exit_code": code}
        if code is not None and code != 0:
            out["log"] = self.kernel.log_tail()
        return out

    def _signal(self, msg: dict[str, Any]) -> dict[str, Any]:
        signum = msg.get("signum")
        valid = {int(s) for s in signal_module.Signals}
        if not isinstance(signum, int) or signum not in valid | {0}:
            raise InputError(f"signum {signum!r} is not a signal number")
        if signum:
            self.kernel.signal(signum)
        return {"ok": True, "exit_code": self.kernel.poll()}

    def _stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "exit_code": self.kernel.stop(now=bool(msg.get("now")))}

    def _start_server(self, msg: dict[str, Any]) -> dict[str, Any]:
        # A JupyterHub single-user server takes the kernel's place (see jupyter_cc.guest.server).
        self.kernel, answer = guest_server.start_server_request(self.kernel, msg)
        return answer

    def _attach(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.kernel, answer = guest_server.attach_request(self.kernel, msg)
        return answer

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The requests this agent answers, by ``op`` (the resident agent's session adds some)."""
        return {
            "hello": self._hello,
            "attest": self._attest,
            "start": self._start,
            "poll": self._poll,
            "signal": self._signal,
            "stop": self._stop,
            "start_server": self._start_server,
            "attach": self._attach,
        }

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one request; a failure is an ``ok: false`` answer, never an exception."""
        op = msg.get("op")
        handler = self._handlers().get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "check": "protocol", "error": f"unknown request {op!r}."}
        try:
            return handler(msg)
        except CCError as exc:
            return error_message(exc)

    def serve(self, stdin: Reader, stdout: Writer) -> None:
        # Python and ipykernel start while the client attests; nothing secret is in that process
        # until the client, having accepted the evidence, asks for the kernel.
        self.kernel.prewarm()
        try:
            while True:
                try:
                    msg = read_message(stdin, what="client")
                except CCError:
                    return
                if msg.get("op") == "bye":
                    write_message(stdout, {"ok": True, "exit_code": self.kernel.stop()})
                    return
                write_message(stdout, self.handle(msg))
        finally:
            # A kernel stops with its connection; a Hub's server outlives it, for a restarted
            # Hub to re-attach (it is stopped by an explicit stop or bye).
            guest_server.connection_ended(self.kernel)
