"""The resident guest agent (``jupyter-cc guest serve``): one service, many agent connections.

It runs in the CVM as a service of the SSH user, listens on a Unix socket only that user can
open (socket 0600 in a folder 0700 that the user owns; a connecting peer of another uid is
refused by its SO_PEERCRED credentials) and speaks the agent protocol of
:mod:`jupyter_cc.guest.protocol` on each connection, exactly as the per-connection agent does on
its stdin: the host reaches it through a ``direct-streamlocal@openssh.com`` channel on the SSH
connection it already has, so no shell and no Python start per kernel.

What a connection may do, and in which order, is what the per-connection agent allows, with
two additions that need the service:

- ``start`` and ``reattach`` are refused until ``attest`` ran on this connection: nothing of the
  user's reaches a kernel process before the client had fresh evidence to judge;
- ``start`` takes a prepared process from the warm pool (:mod:`jupyter_cc.guest.pool`) and
  answers a ``kernel_id``. When the connection ends without ``bye`` the kernel is kept as an
  orphan for ``orphan_timeout`` seconds (the client's value, at most the service's; 0 stops it at
  once, like the per-connection agent); a new connection that attested again takes it back with
  ``{"op": "reattach", "kernel_id": "..."}`` (answered with the kernel's connection info again,
  for a restarted Jupyter server that kept none). An orphan past its timeout is stopped and its
  files removed. Stopping the service stops every kernel it holds.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_cc.errors import CCError, InputError
from jupyter_cc.guest.agent import Agent
from jupyter_cc.guest.kernel import GuestKernel, KernelError
from jupyter_cc.guest.pool import KernelPool
from jupyter_cc.guest.protocol import DEFAULT_SOCKET, read_message, write_message

__all__ = [
    "DEFAULT_ORPHAN_TIMEOUT",
    "ResidentAgent",
    "ServiceError",
    "default_socket_path",
    "prepare_socket_dir",
]

log = logging.getLogger("jupyter_cc.guest")

DEFAULT_ORPHAN_TIMEOUT = 600.0
_ID_CHARS = frozenset("0123456789abcdef")
_NO_POOL = {"size": 0, "ready": 0, "idle_rss_bytes": 0, "handed_out": 0}


class ServiceError(CCError):
    """The resident guest agent cannot listen, or its socket is not private."""

    check = "guest service"


def default_socket_path(user: str) -> str:
    """Where the resident agent of ``user`` listens unless told otherwise.

    ``/run/jupyter-cc/<user>/agent.sock``: the system unit's ``RuntimeDirectory`` creates the
    folder (owned by the user, 0700) under a root-owned parent, so no other user can take the
    name first; the host side computes the same path from the SSH user name.
    """
    return DEFAULT_SOCKET.format(user=user)


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder 0700, or check that an existing one is this user's and private.

    Raises:
        ServiceError: the folder belongs to someone else or others may enter it.
    """
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise ServiceError(
            f"cannot create the socket folder {folder} ({exc.strerror})",
            hint="use --socket with a path under a folder you own, or the system unit's RuntimeDirectory",
        ) from None
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ServiceError(
            f"{folder} is not a private folder of this user",
            hint="remove it, or make it mode 0700 and owned by the agent's user",
        )


def _bind(path: Path) -> socket.socket:
    """Listen on ``path`` (mode 0600 from the start); a stale socket is replaced, a live one refused."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServiceError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left by an agent that was killed
        else:
            raise ServiceError(f"another agent already listens on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    except OSError as exc:
        listener.close()
        raise ServiceError(f"cannot listen on {path} ({exc.strerror})") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(16)
    return listener


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process on the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _pid(kernel: GuestKernel) -> int | None:
    """The kernel's process id, what the logs name it by (its kernel id is a capability)."""
    return kernel.process.pid if kernel.process is not None else None


class _Held:
    """A kernel the service holds: which connection owns it, or since when it is an orphan."""

    def __init__(self, kernel: GuestKernel, owner: object, orphan_timeout: float) -> None:
        self.kernel = kernel
        self.owner: object | None = owner
        self.orphan_timeout = orphan_timeout
        self.orphaned_at: float | None = None


class _Session(Agent):
    """One connection to the resident agent: the per-connection agent's requests, plus a pool
    start, orphan keeping and ``reattach``."""

    def __init__(self, service: ResidentAgent) -> None:
        super().__init__(
            tee=service.tee,
            host_key_file=service.host_key_file,
            sim_dir=service.sim_dir,
            python=service.python,
        )
        self.service = service
        self.attested = False
        self.kernel_id: str | None = None

    def _hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {**super()._hello(msg), **self.service.status()}

    def _attest(self, msg: dict[str, Any]) -> dict[str, Any]:
        answer = super()._attest(msg)
        self.attested = True
        return answer

    def _need_attest(self, op: str) -> None:
        if not self.attested:
            raise InputError(f"'{op}' needs a fresh attestation on this connection first")

    def _start(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._need_attest("start")
        if self.kernel_id is not None:
            raise KernelError("a kernel is already running on this agent connection")
        timeout = self.service.orphan_timeout_for(msg.get("orphan_timeout"))
        pool = self.service.status()["pool"]  # as the start found it, for the panel and attest
        prepared = self.service.pool.take() if self.service.pool is not None else None
        if prepared is not None:
            self.kernel.adopt_warm(*prepared)
        answer = super()._start(msg)
        self.kernel_id = self.service.hold(self.kernel, owner=self, orphan_timeout=timeout)
        warm = prepared is not None and answer.get("pid") == prepared[0].pid
        return {**answer, "kernel_id": self.kernel_id, "orphan_timeout": timeout, "pool": pool, "warm": warm}

    def _reattach(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._need_attest("reattach")
        if self.kernel_id is not None:
            raise KernelError("a kernel is already running on this agent connection")
        kernel_id = msg.get("kernel_id")
        if not isinstance(kernel_id, str) or len(kernel_id) != 32 or not set(kernel_id) <= _ID_CHARS:
            raise InputError("kernel_id must be the 32 hex digits that start returned")
        self.kernel = self.service.take_back(kernel_id, owner=self)
        self.kernel_id = kernel_id
        self._curve = None  # the kernel keeps the CurveZMQ key its first attestation bound
        pid = self.kernel.process.pid if self.kernel.process is not None else None
        answer = {"ok": True, "kernel_id": kernel_id, "pid": pid, "exit_code": self.kernel.poll()}
        # The connection info again (key included), for a client that kept none: a restarted
        # Jupyter server. It travels only in this stream, after the attestation on it.
        return {**answer, "connection": self._connection_info()}

    def _connection_info(self) -> dict[str, Any] | None:
        path = self.kernel.connection_file
        try:
            info = json.loads(path.read_text()) if path is not None else None
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        answer = super()._stop(msg)
        self._release()
        return answer

    def _release(self) -> None:
        if self.kernel_id is not None:
            self.service.forget(self.kernel_id, owner=self)
            self.kernel_id = None
        self.kernel = GuestKernel(self.kernel.python, base_env=self.kernel.base_env)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {**super()._handlers(), "reattach": self._reattach}

    def run(self, conn: socket.socket) -> None:
        """Serve ``conn`` until it ends; a kernel left running becomes an orphan, not a corpse."""
        reader = conn.makefile("rb")
        writer = conn.makefile("wb")
        try:
            while True:
                try:
                    msg = read_message(reader, what="client")
                except CCError:
                    return
                if msg.get("op") == "bye":
                    code = self.kernel.stop()
                    self._release()
                    write_message(writer, {"ok": True, "exit_code": code})
                    return
                write_message(writer, self.handle(msg))
        except OSError:
            return
        finally:
            self._ended()
            for stream in (reader, writer):
                try:
                    stream.close()
                except OSError:
                    pass
            conn.close()

    def _ended(self) -> None:
        from jupyter_cc.guest import server as guest_server

        if self.kernel_id is not None:
            self.service.orphan(self.kernel_id, owner=self)
            self.kernel_id = None
            return
        guest_server.connection_ended(self.kernel)


class ResidentAgent:
    """The service: a listener, the warm pool and the kernels it holds (owned or orphaned)."""

    def __init__(
        self,
        socket_path: Path,
        *,
        tee: str = "auto",
        host_key_file: Path | None = None,
        sim_dir: Path | None = None,
        python: str | None = None,
        pool_size: int = 1,
        orphan_timeout: float = DEFAULT_ORPHAN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.tee = tee
        self.host_key_file = host_key_file
        self.sim_dir = sim_dir
        self.python = python
        self.orphan_timeout = max(0.0, orphan_timeout)
        self.clock = clock
        base_env = {"JUPYTER_CC_CONFIDENTIAL": "1", "JUPYTER_CC_TEE": tee}
        if sim_dir is not None:
            base_env["JUPYTER_CC_SIM_DIR"] = str(sim_dir)
        probe = GuestKernel(python or sys.executable, base_env=base_env)
        self.pool = KernelPool(probe.python, base_env=probe.base_env, size=pool_size) if pool_size else None
        self._held: dict[str, _Held] = {}
        # When a kernel last ran here (the service's start before any did), for idle culling.
        self._last_activity = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    def __repr__(self) -> str:
        return f"ResidentAgent({self.socket_path}, kernels={len(self._held)}, pool={self.pool!r})"

    # --- kernels held across connections ------------------------------------------------------

    def orphan_timeout_for(self, asked: Any) -> float:
        """The client's orphan timeout, at most the service's (None: the service's)."""
        if asked is None:
            return self.orphan_timeout
        if not isinstance(asked, int | float) or isinstance(asked, bool) or asked < 0:
            raise InputError("orphan_timeout must be a number of seconds, 0 or more")
        return min(float(asked), self.orphan_timeout)

    def hold(self, kernel: GuestKernel, *, owner: object, orphan_timeout: float) -> str:
        kernel_id = secrets.token_hex(16)
        with self._lock:
            self._held[kernel_id] = _Held(kernel, owner, orphan_timeout)
        return kernel_id

    def take_back(self, kernel_id: str, *, owner: object) -> GuestKernel:
        """The orphaned (or still owned, by a connection not yet seen to end) kernel, now ``owner``'s."""
        with self._lock:
            held = self._held.get(kernel_id)
            if held is None or held.kernel.poll() is not None:
                raise KernelError(f"no kernel {kernel_id} runs in this guest (it stopped or timed out)")
            held.owner, held.orphaned_at = owner, None
        log.info("kernel pid %s re-attached", _pid(held.kernel))
        return held.kernel

    def forget(self, kernel_id: str, *, owner: object) -> None:
        with self._lock:
            held = self._held.get(kernel_id)
            if held is not None and held.owner is owner:
                del self._held[kernel_id]
                self._last_activity = self.clock()

    def orphan(self, kernel_id: str, *, owner: object) -> None:
        """``owner``'s connection ended: keep the kernel for its timeout (0: stop it now)."""
        with self._lock:
            held = self._held.get(kernel_id)
            if held is None or held.owner is not owner:
                return  # another connection took it back already
            held.owner = None
            held.orphaned_at = self.clock()
            stop_now = held.orphan_timeout <= 0
            if stop_now:
                del self._held[kernel_id]
                self._last_activity = self.clock()
        if stop_now:
            held.kernel.stop(now=True)
        else:
            log.info(
                "kernel pid %s orphaned: kept %gs for a reconnect", _pid(held.kernel), held.orphan_timeout
            )

    def reap(self) -> list[str]:
        """Stop the orphans past their timeout and the kernels that exited; their ids."""
        now = self.clock()
        with self._lock:
            gone = [
                kid
                for kid, held in self._held.items()
                if (held.orphaned_at is not None and now - held.orphaned_at >= held.orphan_timeout)
                or (held.owner is None and held.kernel.poll() is not None)
            ]
            stopped = [self._held.pop(kid) for kid in gone]
            if stopped:
                self._last_activity = now
        for held in stopped:
            log.info("kernel pid %s stopped: orphaned past its timeout, or exited", _pid(held.kernel))
            held.kernel.stop(now=True)
        return gone

    def idle_seconds(self) -> float:
        """Seconds since a kernel last ran here: 0 while one runs (an orphan too), else since the
        last one stopped (or the service started). Relative, so the host's clock need not agree."""
        with self._lock:
            if self._held:
                self._last_activity = self.clock()
                return 0.0
            return max(0.0, self.clock() - self._last_activity)

    def status(self) -> dict[str, Any]:
        """The service's part of ``hello``: resident, the pool, the kernels held, idle time."""
        idle = self.idle_seconds()
        with self._lock:
            orphans = sum(1 for h in self._held.values() if h.owner is None)
            kernels = len(self._held)
        return {
            "idle_seconds": round(idle, 1),
            "resident": True,
            "pool": self.pool.status() if self.pool is not None else _NO_POOL,
            "kernels": kernels,
            "orphans": orphans,
            "orphan_timeout": self.orphan_timeout,
        }

    # --- the listener -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Listen until :meth:`shutdown`; each connection is served on its own thread."""
        prepare_socket_dir(self.socket_path)
        self._listener = _bind(self.socket_path)
        if self.pool is not None:
            self.pool.start()
        reaper = threading.Thread(target=self._reap_loop, name="cc-orphan-reaper", daemon=True)
        reaper.start()
        log.info("listening on %s", self.socket_path)
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    break
                uid = peer_uid(conn)
                if uid != os.geteuid():
                    log.warning("refused a connection from uid %d", uid)
                    conn.close()
                    continue
                session = _Session(self)
                threading.Thread(target=session.run, args=(conn,), name="cc-agent-conn", daemon=True).start()
        finally:
            self._close()

    def _reap_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.reap()

    def shutdown(self) -> None:
        """Stop listening; :meth:`serve_forever` then stops every kernel and the pool."""
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()

    def _close(self) -> None:
        self._stop.set()
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for entry in held:
            entry.kernel.stop(now=True)
        if self.pool is not None:
            self.pool.close()
        try:
            self.socket_path.unlink()
        except OSError:
            pass
