"""A JupyterHub single-user server inside the guest, started and managed by the agent.

``AttestedSSHSpawner`` (:mod:`jupyter_cc.hub`) asks the agent, once the guest has attested::

    {"op": "start_server", "argv_name": "jupyterhub-singleuser", "args": ["--debug"],
     "env": {"JUPYTERHUB_API_TOKEN": "...", ...}, "timeout": 60}
    -> {"ok": true, "server_id": "<hex>", "pid": 1234, "port": 45678}
    {"op": "attach", "server_id": "<hex>"}
    -> {"ok": true, "server_id": "<hex>", "pid": 1234, "port": 45678}

after which ``poll``, ``signal`` and ``stop`` act on the server exactly as they act on a kernel.

- Only names in :data:`SERVERS` can be started, with the agent's own Python
  (``python -m jupyterhub.singleuser``), on 127.0.0.1 and a port the agent picks; ``args`` are
  extra options (never secret). The environment (the Hub API token among it) arrives inside the
  request, i.e. on the agent's stdin: it is never on a command line, and never written to a file.
- Unlike a kernel, the server outlives the agent's connection: a Hub restart must find it again.
  Each server has a private folder (0700) under ``<jupyter runtime dir>/jupyter-cc-servers``
  holding ``server.json`` (pid, port and the process's start time, mode 0600; no secret) and
  ``server.log``. A later agent, on a fresh SSH connection that attested again, re-attaches with
  ``attach`` and the server id; the start time guards against a reused pid. ``stop`` (or ``bye``
  on the connection that manages it) ends the server's whole process group and removes its folder.
- When the agent did not start the process itself (after ``attach``) its exit status is unknown,
  and ``poll`` reports 0 once it has gone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jupyter_core.paths import jupyter_runtime_dir

from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import write_private
from jupyter_cc.guest.kernel import GuestKernel, _checked_env, _free_ports

__all__ = ["SERVERS", "GuestServer", "ServerError", "servers_dir"]

SERVERS: Mapping[str, tuple[str, ...]] = {"jupyterhub-singleuser": ("-m", "jupyterhub.singleuser")}
"""The servers the agent may start, by name: arguments after the agent's Python."""

_ID_CHARS = frozenset("0123456789abcdef")


class ServerError(CCError):
    """The single-user server could not be started or found inside the guest."""

    check = "server"


def servers_dir() -> Path:
    """The private folder of this user's servers (created 0700; refused if others can enter it)."""
    path = Path(jupyter_runtime_dir()) / "jupyter-cc-servers"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ServerError(
            f"{path} is not a private folder of this user",
            hint="remove it, or make it mode 0700 and owned by the SSH user",
        )
    return path


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _service_url(env: dict[str, str], port: int) -> None:
    """Point JUPYTERHUB_SERVICE_URL at the address the server really binds in the guest."""
    url = env.get("JUPYTERHUB_SERVICE_URL")
    if url:
        parts = urlsplit(url)
        env["JUPYTERHUB_SERVICE_URL"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def _check_id(server_id: Any) -> str:
    if not isinstance(server_id, str) or len(server_id) != 32 or not set(server_id) <= _ID_CHARS:
        raise InputError("server_id must be the 32 hex digits that start_server returned")
    return server_id


def _checked_args(args: Any) -> list[str]:
    if args is None:
        return []
    if not isinstance(args, list) or not all(isinstance(a, str) and "\x00" not in a for a in args):
        raise InputError("args must be a list of strings without NUL bytes")
    return list(args)


class GuestServer(GuestKernel):
    """One single-user server managed by the agent, in place of its kernel.

    A :class:`GuestKernel` so the agent's ``poll``, ``signal``, ``stop`` and ``bye`` need no
    second code path; ``start`` (a kernel) is refused on a connection that manages a server.
    """

    noun = "server"
    error = ServerError
    listen_retry_s = 0.05

    def __init__(self, python: str, *, base_env: Mapping[str, str] | None = None) -> None:
        super().__init__(python, base_env=base_env)
        self.server_id: str | None = None
        self.pid: int | None = None
        self.port: int | None = None
        self.started: str | None = None
        self.folder: Path | None = None
        self.exit_code: int | None = None

    def __repr__(self) -> str:
        return f"GuestServer(id={self.server_id}, pid={self.pid}, port={self.port})"

    def prewarm(self) -> None:
        return None

    def start(
        self, env: Mapping[str, Any], cwd: str | None = None, *, curve: tuple[bytes, bytes] | None = None
    ) -> dict[str, Any]:
        raise ServerError("this agent connection manages a single-user server, not a kernel")

    # --- start and attach -------------------------------------------------------------------

    def start_server(
        self, argv_name: Any, args: Any, env: Any, *, timeout: float = 60.0, cwd: str | None = None
    ) -> dict[str, Any]:
        """Start server ``argv_name`` on 127.0.0.1 and a free port; return its id, pid and port."""
        if self.pid is not None and self.poll() is None:
            raise ServerError("a server is already running on this agent connection")
        if not isinstance(argv_name, str) or argv_name not in SERVERS:
            raise InputError(f"argv_name {argv_name!r} is not one of {', '.join(SERVERS)}")
        if not isinstance(env, dict):
            raise InputError("env must be an object of strings")
        extra_env = _checked_env(env)
        extra_args = _checked_args(args)
        port = _free_ports(1)[0]
        _service_url(extra_env, port)
        server_id = secrets.token_hex(16)
        folder = servers_dir() / server_id
        folder.mkdir(mode=0o700)
        argv = [self.python, *SERVERS[argv_name], "--ip=127.0.0.1", f"--port={port}", *extra_args]
        child_env = {**os.environ, **extra_env, **self.base_env}
        try:
            with open(folder / "server.log", "ab") as log:
                os.chmod(folder / "server.log", 0o600)
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    cwd=cwd or os.path.expanduser("~"),
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ServerError(f"cannot start {argv_name} with {self.python} ({exc.strerror})") from None
        self.process = process
        self.server_id, self.pid, self.port, self.folder = server_id, process.pid, port, folder
        self.started = _start_time(process.pid)
        self.exit_code = None
        record = {"pid": process.pid, "port": port, "start_time": self.started, "argv_name": argv_name}
        write_private(folder / "server.json", json.dumps(record).encode())
        self._wait_listening([port], timeout=timeout)
        return {"server_id": server_id, "pid": process.pid, "port": port}

    def attach(self, server_id: Any) -> dict[str, Any]:
        """Manage a server an earlier connection started; refused if it is not running."""
        if self.pid is not None and self.poll() is None:
            raise ServerError("a server is already managed by this agent connection")
        server_id = _check_id(server_id)
        folder = servers_dir() / server_id
        try:
            record = json.loads((folder / "server.json").read_text())
            pid, port, started = int(record["pid"]), int(record["port"]), record["start_time"]
        except FileNotFoundError:
            raise ServerError(
                f"no server {server_id} in this guest (it was stopped, or the VM restarted)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError):
            raise ServerError(f"the record of server {server_id} cannot be read") from None
        if started is None or _start_time(pid) != started:
            shutil.rmtree(folder, ignore_errors=True)
            raise ServerError(f"server {server_id} is no longer running in the guest")
        self.process = None
        self.server_id, self.pid, self.port, self.started, self.folder = server_id, pid, port, started, folder
        self.exit_code = None
        return {"server_id": server_id, "pid": pid, "port": port}

    # --- what the agent's poll, signal and stop call ---------------------------------------

    def poll(self) -> int | None:
        if self.pid is None:
            return self.exit_code if self.exit_code is not None else 0
        if self.process is not None:
            code = self.process.poll()
        else:
            code = None if _start_time(self.pid) == self.started else 0
        if code is not None:
            self.exit_code = code
        return code

    def signal(self, signum: int) -> None:
        if self.pid is None or self.poll() is not None:
            return
        try:
            os.killpg(self.pid, signum)  # its own session and group: children are signalled too
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, *, now: bool = False, timeout: float = 10.0) -> int | None:
        """End the server (SIGTERM, SIGKILL after ``timeout``) and remove its folder."""
        if self.pid is None:
            return self.exit_code
        if self.poll() is None:
            self.terminate(now=now, timeout=timeout)
            self.wait_exit(timeout)  # after a SIGKILL too: a server can take a moment to go
        if self.process is not None:
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # what it left in its group goes with it
        except (ProcessLookupError, PermissionError):
            pass
        code = self.exit_code
        self.cleanup()
        return code

    def detach(self) -> None:
        """Forget the server without stopping it (its connection ended; a new one may attach)."""
        self.process = None
        self.pid = self.server_id = self.folder = None

    def log_tail(self, limit: int = 2000) -> str:
        if self.folder is None:
            return ""
        try:
            return (self.folder / "server.log").read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.process = None
        self.pid = self.server_id = self.folder = None


def server_for(kernel: GuestKernel) -> GuestServer:
    """The agent's :class:`GuestServer`: ``kernel`` itself, or a new one replacing an idle kernel."""
    if isinstance(kernel, GuestServer):
        return kernel
    if kernel.process is not None and kernel.poll() is None:
        raise ServerError("a kernel is running on this agent connection; open another one for a server")
    kernel.stop(now=True)  # the prepared (warm) kernel process is not needed
    return GuestServer(kernel.python, base_env=kernel.base_env)


def start_server_request(kernel: GuestKernel, msg: Mapping[str, Any]) -> tuple[GuestServer, dict[str, Any]]:
    """Handle ``start_server`` for the agent: the server that now replaces its kernel, and the answer."""
    server = server_for(kernel)
    timeout = msg.get("timeout", 60.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise InputError("timeout must be a number of seconds between 0 and 3600")
    answer = server.start_server(
        msg.get("argv_name"), msg.get("args"), msg.get("env"), timeout=float(timeout)
    )
    return server, {"ok": True, **answer}


def attach_request(kernel: GuestKernel, msg: Mapping[str, Any]) -> tuple[GuestServer, dict[str, Any]]:
    """Handle ``attach`` for the agent: the server that now replaces its kernel, and the answer."""
    server = server_for(kernel)
    return server, {"ok": True, **server.attach(msg.get("server_id"))}


def connection_ended(kernel: GuestKernel) -> None:
    """The agent's stream ended without ``bye``: a kernel stops, a running server is left running."""
    if isinstance(kernel, GuestServer) and kernel.pid is not None and kernel.poll() is None:
        kernel.detach()
        return
    kernel.stop(now=True)
