"""The kernel inside the guest: HMAC key made here, ipykernel on 127.0.0.1, clean removal.

The connection file (key included) lives in a private runtime folder (0700) with mode 0600 while
the kernel runs, and is removed with the folder when it stops. The kernel runs in its own
process group so signals reach its children too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_cc.errors import CCError, InputError
from jupyter_cc.files import write_private
from jupyter_cc.guest import warmkernel

__all__ = ["GuestKernel", "KernelError", "exit_cause"]

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


class KernelError(CCError):
    """The kernel could not be started or managed inside the guest."""

    check = "kernel"


# A Jupyter (traitlets/tornado) log record: "[E 2026-12-01 22:32:56.767 ServerApp] message".
_LOG_RECORD = re.compile(r"\A\[([DIWEC]) [0-9][^\]]*?(?: (\S+))?\] ?(.*)\Z")
_CAUSE_LINES, _CAUSE_CHARS = 2, 300


def _records(text: str) -> list[tuple[str, str]]:
    """(level, text) per log record; indented continuation lines (tracebacks) join their record."""
    records: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _LOG_RECORD.match(line)
        if match:
            level, app, message = match.groups()
            records.append((level, f"{app}: {message}" if app else message))
        elif line[:1].isspace() and records:
            level, joined = records[-1]
            records[-1] = (level, f"{joined}\n{line.strip()}")
        else:
            records.append(("", line.strip()))
    return records


def _one_line(record: str) -> str:
    """A record's first line, plus the last line of a traceback in it (the exception raised)."""
    lines = record.split("\n")
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return text if len(text) <= _CAUSE_CHARS else text[: _CAUSE_CHARS - 1] + "…"


def exit_cause(output: str) -> str:
    """The lines of a process's output that explain why it exited: the last error-level ones.

    The last (at most two) error or critical records of a Jupyter log, e.g. jupyter_server's
    "Running as root is not recommended. Use --allow-root to bypass."; without leveled
    records, the last line that is not indented (a traceback's exception); else "no output".
    Later info lines (an extension's "Skipped non-installed server(s): ...") are not the cause.
    """
    records = _records(output)
    errors = [text for level, text in records if level in ("E", "C")]
    if errors:
        return "; ".join(_one_line(text) for text in errors[-_CAUSE_LINES:])
    plain = [text.split("\n", 1)[0] for level, text in records if not level]
    if plain:
        return _one_line(plain[-1])
    return _one_line(records[-1][1].split("\n", 1)[0]) if records else "no output"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _checked_env(env: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InputError(f"kernel environment variable name {name!r} is not a valid name")
        if not isinstance(value, str) or "\x00" in value:
            raise InputError(f"kernel environment variable {name} must be a string without NUL bytes")
        out[name] = value
    return out


def _needs_cold_start(env: Mapping[str, str]) -> bool:
    # Variables read while the interpreter starts cannot be applied to a process already running.
    return any(name.startswith(("PYTHON", "LD_", "MALLOC_")) for name in env)


class GuestKernel:
    """One ipykernel process managed by the agent."""

    # How start-up failures are worded and raised, and how often its ports are tried.
    noun = "kernel"
    error: type[CCError] = KernelError
    listen_retry_s = 0.005

    def __init__(self, python: str = sys.executable, *, base_env: Mapping[str, str] | None = None) -> None:
        self.python = python
        # What the kernel needs to collect fresh evidence itself (%attest, key release): the
        # agent's TEE choice, never anything secret.
        self.base_env = {"JUPYTER_CC_CONFIDENTIAL": "1", **(base_env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.runtime_dir: Path | None = None
        self._warm: subprocess.Popen[bytes] | None = None
        self._warm_dir: Path | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"GuestKernel(pid={pid})"

    @property
    def connection_file(self) -> Path | None:
        return self.runtime_dir / "kernel.json" if self.runtime_dir else None

    def _spawn(
        self, argv: list[str], runtime_dir: Path, env: Mapping[str, str], cwd: str | None
    ) -> subprocess.Popen[bytes]:
        with open(runtime_dir / "kernel.log", "ab") as log:
            try:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise KernelError(f"cannot start {self.python} in the guest ({exc.strerror})") from None

    def prewarm(self) -> None:
        """Start a kernel process that imports ipykernel and waits (see warmkernel)."""
        if self._warm is not None or self.process is not None:
            return
        try:
            self._warm, folder = warmkernel.spawn(self.python, {**os.environ, **self.base_env})
            self._warm_dir = Path(folder)
        except OSError:
            self._warm = self._warm_dir = None  # the kernel starts cold; start() reports a failure

    def take_warm(self) -> tuple[subprocess.Popen[bytes], Path] | None:
        """Hand over the prepared process and its folder (for the resident agent's pool)."""
        if self._warm is None or self._warm_dir is None:
            return None
        warm, folder = self._warm, self._warm_dir
        self._warm = self._warm_dir = None
        return warm, folder

    def adopt_warm(self, warm: subprocess.Popen[bytes], folder: Path) -> None:
        """Use a prepared process from the pool for the next :meth:`start` (once: it is ours now)."""
        self._discard_warm()
        self._warm, self._warm_dir = warm, folder

    def _discard_warm(self) -> None:
        if self._warm is not None:
            if self._warm.stdin:
                self._warm.stdin.close()  # it exits on end of input without running anything
            try:
                self._warm.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._warm.kill()
                self._warm.wait()
        if self._warm_dir is not None:
            shutil.rmtree(self._warm_dir, ignore_errors=True)
        self._warm = self._warm_dir = None

    def start(
        self, env: Mapping[str, Any], cwd: str | None = None, *, curve: tuple[bytes, bytes] | None = None
    ) -> dict[str, Any]:
        """Start ipykernel; return its connection info (the key included) for the client.

        ``curve``: the kernel's CurveZMQ (public, secret) key pair in Z85, made in the TEE and
        bound into the evidence the client judged (:meth:`Agent._attest`); it goes into the 0600
        connection file, so ipykernel's sockets act as CURVE servers with it.
        """
        if self.process is not None and self.process.poll() is None:
            raise KernelError("a kernel is already running in this agent")
        self.cleanup()
        extra_env = _checked_env(env)
        if cwd is not None and not Path(cwd).is_dir():
            raise InputError(f"the kernel working directory {cwd} does not exist in the guest")
        warm = self._warm if self._warm is not None and self._warm.poll() is None else None
        if warm is not None and not _needs_cold_start(extra_env):
            assert self._warm_dir is not None
            self.runtime_dir, self._warm, self._warm_dir = self._warm_dir, None, None
        else:
            self._discard_warm()
            warm = None
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="jupyter-cc-kernel-"))
        info: dict[str, Any] = dict(
            zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True),
            ip="127.0.0.1",
            key=secrets.token_hex(32),
            transport="tcp",
            signature_scheme="hmac-sha256",
            kernel_name="",
        )
        if curve is not None:
            info["curve_publickey"], info["curve_secretkey"] = curve[0].decode(), curve[1].decode()
        assert self.connection_file is not None
        write_private(self.connection_file, json.dumps(info).encode())
        if warm is not None:
            assert warm.stdin is not None
            # base_env again: a process the agent started before it read its options lacks it.
            env = {**extra_env, **self.base_env}
            request = {"connection_file": str(self.connection_file), "env": env, "cwd": cwd}
            try:
                warm.stdin.write(json.dumps(request).encode() + b"\n")
                warm.stdin.close()
            except OSError:
                warm.kill()
                warm.wait()
                self.cleanup()
                raise KernelError("the prepared kernel process died before it was started") from None
            self.process = warm
        else:
            child_env = {**os.environ, **extra_env, **self.base_env}
            argv = [
                self.python,
                "-m",
                "ipykernel_launcher",
                "-f",
                str(self.connection_file),
                "--ext=jupyter_cc",
            ]
            try:
                self.process = self._spawn(argv, self.runtime_dir, child_env, cwd)
            except KernelError:
                self.cleanup()
                raise
        self._wait_listening([info[name] for name in PORT_NAMES])
        return {"pid": self.process.pid, "connection": info}

    def _wait_listening(self, ports: list[int], timeout: float = 60.0) -> None:
        """Return once the process listens on every port, so clients never race its start.

        Raises:
            KernelError (``error``): it exited, or did not listen within ``timeout``; it is
                stopped first.
        """
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            code = self.poll()
            if code is not None:
                cause = exit_cause(self.log_tail(16000))
                self.stop()
                raise self.error(f"the {self.noun} exited with status {code} while starting ({cause})")
            if time.monotonic() > deadline:
                self.stop(now=True)
                where = f"port {ports[0]}" if len(ports) == 1 else "its ports"
                raise self.error(f"the {self.noun} did not listen on {where} within {timeout:g} seconds")
            try:
                socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5).close()
                pending.pop(0)
            except OSError:
                time.sleep(self.listen_retry_s)

    def poll(self) -> int | None:
        if self.process is None:
            return 0
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def wait_exit(self, seconds: float) -> bool:
        """Poll until the process has exited or ``seconds`` have passed; True when it exited."""
        deadline = time.monotonic() + seconds
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.poll() is not None

    def terminate(self, *, now: bool, timeout: float) -> None:
        """SIGTERM (SIGKILL when ``now``), then SIGKILL if it still runs after ``timeout``."""
        self.signal(signal.SIGKILL if now else signal.SIGTERM)
        if not self.wait_exit(0 if now else timeout):
            self.signal(signal.SIGKILL)

    def stop(self, *, now: bool = False, timeout: float = 5.0) -> int | None:
        """Stop the kernel (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        self._discard_warm()
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.terminate(now=now, timeout=timeout)
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            # Children the kernel left in its group go too: nothing of it may outlive it.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.cleanup()
        return code

    def log_tail(self, limit: int = 2000) -> str:
        if self.runtime_dir is None:
            return ""
        try:
            return (self.runtime_dir / "kernel.log").read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        if self.process is not None and self.process.poll() is not None:
            self.process = None
