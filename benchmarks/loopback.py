"""The loopback parts ``bench_kernel.py`` measures through: sshd, a TCP source, SSH forwards.

A real OpenSSH sshd from ``tests/support/sshd.py`` stands in for the confidential VM; a TCP
source on 127.0.0.1 serves bulk data; :func:`pull` times one transfer through a forward, either
paramiko's (:meth:`SshConnection.forward`) or OpenSSH's ``ssh -L`` (:func:`openssh_forwards`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from jupyter_cc.remote.ssh import SshConnection, SshTarget
from tests.support.sshd import Sshd, free_port

__all__ = [
    "CHUNK",
    "Source",
    "connect",
    "openssh_cipher",
    "openssh_forward",
    "openssh_forwards",
    "pull",
    "start_sshd",
]

CHUNK = 1 << 20


def start_sshd(directory: Path, bare_home: Path | None = None) -> Sshd:
    """The tests' sshd; with ``bare_home``, sessions get HOME there, so no shell rc file runs.

    Debian's bash sources ~/.bashrc for every command sshd runs (``SSH_SOURCE_BASHRC``); the
    second sshd shows what the agent's start costs without the account's rc file.
    """
    server: Sshd = Sshd.create(directory)
    if bare_home is not None:
        bare_home.mkdir(parents=True)
        config = directory / "sshd_config"
        config.write_text(config.read_text() + f"SetEnv HOME={bare_home}\n")
    return server.start()


def connect(server: Sshd) -> SshConnection:
    """An SSH connection to the benchmark sshd, host key checked as the provisioner does."""
    target = SshTarget(
        host="127.0.0.1",
        port=server.port,
        identity_file=str(server.identity_file),
        known_hosts=str(server.known_hosts),
    )
    return SshConnection(target).connect()


class Source:
    """A TCP source on 127.0.0.1: a client sends a byte count (8 bytes), gets that many, then EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._block = bytes(range(256)) * (CHUNK // 256)
        self._thread = threading.Thread(target=self._serve, name="bench-source", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        view = memoryview(self._block)
        try:
            with conn:
                request = b""
                while len(request) < 8:
                    more = conn.recv(8 - len(request))
                    if not more:
                        return
                    request += more
                left = min(int.from_bytes(request, "big"), 1 << 32)
                while left > 0:
                    n = min(left, len(view))
                    conn.sendall(view[:n])
                    left -= n
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the client closes
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def pull(port: int, size: int) -> float:
    """Seconds to ask 127.0.0.1:port for ``size`` bytes and receive them up to EOF."""
    buf = bytearray(CHUNK)
    got = 0
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(size.to_bytes(8, "big"))
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
    elapsed = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"pulled {got} bytes of {size} through port {port}")
    return elapsed


@contextlib.contextmanager
def openssh_forward(server: Sshd, remote_port: int, log: Path, cipher: str | None) -> Iterator[int]:
    """``ssh -N -L`` to the sshd; yields the local port."""
    with openssh_forwards(server, [remote_port], log, cipher) as (local,):
        yield local


@contextlib.contextmanager
def openssh_forwards(
    server: Sshd, remote_ports: Sequence[int], log: Path, cipher: str | None = None, *, session: bool = False
) -> Iterator[list[int]]:
    """One ``ssh`` forwarding each of ``remote_ports``; yields the local ports in the same order.

    Without ``session`` it runs ``-N`` (no command), the bulk case. With it, the connection also
    runs ``cat`` in a session, as ours runs the guest agent: sshd and ssh turn Nagle's algorithm
    off only once a session runs a command, and without that a kernel's second small message
    waits 40 ms for a delayed ACK. ``cat`` reads the pipe this holds, so it ends with ssh.
    """
    local = [free_port() for _ in remote_ports]
    argv = ["ssh", "-F", "/dev/null", "-v"]
    if not session:
        argv.append("-N")
    for here, there in zip(local, remote_ports, strict=True):
        argv += ["-L", f"127.0.0.1:{here}:127.0.0.1:{there}"]
    argv += [
        "-i",
        str(server.identity_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        f"UserKnownHostsFile={server.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        str(server.port),
    ]
    if cipher:
        argv += ["-c", cipher]
    argv.append(f"{server.user}@127.0.0.1")
    if session:
        argv.append("cat")
    stdin = subprocess.PIPE if session else subprocess.DEVNULL
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err)
    try:
        ready = "Sending command: cat" if session else "Entering interactive session"
        deadline = time.monotonic() + 15
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssh -L did not come up: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        yield local
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def openssh_cipher(log: Path) -> str:
    found = re.search(r"kex: server->client cipher: (\S+)", log.read_text(errors="replace"))
    return found.group(1) if found else "unknown"
