"""The client side of the guest agent protocol, over an SSH channel or local pipes.

One agent connection carries every request of a kernel's life (attest, start, poll, signal,
stop): ``poll`` never opens a new SSH session. Requests are serialised by a lock, so the
restarter's poll and a user's interrupt can come from different threads.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import paramiko

from jupyter_cc.errors import CCError
from jupyter_cc.guest.channel import ChannelStream
from jupyter_cc.guest.protocol import AgentError, Reader, Writer, read_message, write_message
from jupyter_cc.remote.ssh import SshConnection

__all__ = ["AgentClient", "agent_argv"]

log = logging.getLogger("jupyter_cc.remote")


def agent_argv(
    python: str,
    *,
    tee: str,
    host_key_file: str | None = None,
    sim_dir: str | None = None,
    kernel_python: str | None = None,
) -> list[str]:
    """The guest agent's command line: options only, never a secret."""
    argv = [python, "-m", "jupyter_cc.guest", "--tee", tee]
    if host_key_file:
        argv += ["--host-key-file", host_key_file]
    if sim_dir:
        argv += ["--sim-dir", sim_dir]
    if kernel_python:
        argv += ["--python", kernel_python]
    return argv


def _drain_stderr(channel: paramiko.Channel) -> None:
    """Read the agent's stderr so its unread lines never fill the SSH window and block it."""
    while True:
        try:
            data = channel.recv_stderr(4096)
        except TimeoutError:
            if channel.closed:
                return
            continue
        except (OSError, EOFError, paramiko.SSHException):
            return
        if not data:
            return
        for line in data.decode("utf-8", "replace").splitlines():
            log.debug("guest agent: %s", line)


class AgentClient:
    """Requests to one running guest agent."""

    def __init__(
        self,
        reader: Reader,
        writer: Writer,
        *,
        closer: Any,
        what: str,
        set_timeout: Any = None,
        timeout: float | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._closer = closer
        self._set_timeout = set_timeout
        self.timeout = timeout
        self._lock = threading.Lock()
        self.what = what
        self.closed = False

    def __repr__(self) -> str:
        return f"AgentClient({self.what}, closed={self.closed})"

    @classmethod
    def over_ssh(cls, connection: SshConnection, argv: Sequence[str], *, timeout: float) -> AgentClient:
        """Start the per-connection agent (``argv``, every word quoted) in an SSH session."""
        channel: paramiko.Channel = connection.exec(argv)
        threading.Thread(target=_drain_stderr, args=(channel,), name="cc-agent-stderr", daemon=True).start()
        return cls._on_channel(connection, channel, timeout=timeout, what="guest agent")

    @classmethod
    def over_streamlocal(cls, connection: SshConnection, path: str, *, timeout: float) -> AgentClient:
        """Reach the resident agent on its Unix socket ``path`` (no session, shell or Python started).

        Raises:
            SshError: no agent listens there (the caller falls back to :meth:`over_ssh`).
        """
        channel = connection.open_streamlocal(path, timeout=timeout)
        return cls._on_channel(connection, channel, timeout=timeout, what="resident guest agent")

    @classmethod
    def _on_channel(
        cls, connection: SshConnection, channel: paramiko.Channel, *, timeout: float, what: str
    ) -> AgentClient:
        channel.settimeout(timeout)
        stream = ChannelStream(channel)
        reader = writer = stream

        def close() -> None:
            channel.close()

        return cls(
            reader,
            writer,
            closer=close,
            what=f"{what} on {connection.target.host}",
            set_timeout=channel.settimeout,
            timeout=timeout,
        )

    @classmethod
    def local(cls, argv: Sequence[str], *, env: dict[str, str] | None = None) -> AgentClient:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            env=env,
            start_new_session=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None

        def close() -> None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

        return cls(proc.stdout, proc.stdin, closer=close, what="local guest agent")

    def request(self, op: str, *, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the agent's successful answer.

        ``timeout`` (seconds, SSH only) replaces the default for this request, for slow ones such
        as starting the kernel. A request that times out closes the client: its answer could
        still arrive later and would be taken for the next one's.

        Raises:
            AgentError: the agent is gone, broke the protocol, or answered ``ok: false``.
        """
        with self._lock:
            if self.closed:
                raise AgentError(f"the {self.what} is no longer connected")
            if self._set_timeout is not None:
                self._set_timeout(timeout if timeout is not None else self.timeout)
            try:
                write_message(self._writer, {"op": op, **fields})
                answer = read_message(self._reader, what=self.what)
            except CCError:
                self.closed = True
                raise
            except TimeoutError:
                self.closed = True
                raise AgentError(f"the {self.what} did not answer '{op}' in time") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self.closed = True
                raise AgentError(f"lost the {self.what} ({exc.__class__.__name__})") from None
        if answer.get("ok") is not True:
            error = str(answer.get("error") or "the agent refused the request without a reason")
            exc_ = AgentError(error.rstrip("."))
            exc_.check = str(answer.get("check") or "guest agent")
            raise exc_
        return answer

    def abandon(self) -> None:
        """Close the stream without ``bye``: a resident agent keeps the kernel as an orphan."""
        self.closed = True
        try:
            self._closer()
        except (OSError, paramiko.SSHException):
            pass

    def close(self) -> None:
        """Say goodbye (the agent stops its kernel), then close the stream."""
        if not self.closed:
            try:
                self.request("bye")
            except CCError:
                pass
        self.closed = True
        try:
            self._closer()
        except (OSError, paramiko.SSHException):
            pass
