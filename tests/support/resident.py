"""A real resident guest agent (``jupyter-cc guest serve``) behind a test sshd, on this machine.

It runs as this user with the simulated TEE and binds the sshd's host key, like the
per-connection agent the other tests start through sshd; the host side reaches it over the
sshd's ``direct-streamlocal`` channels.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jupyter_cc.paths import data_dir
from tests.support.sshd import Sshd


@dataclass
class Resident:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def hello(self) -> dict[str, object]:
        """``hello`` straight on the socket (what ``jupyter-cc attest`` reports)."""
        import json

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(b'{"op":"hello"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return dict(json.loads(data))

    def wait_pool(self, ready: int = 1, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            pool = self.hello()["pool"]
            assert isinstance(pool, dict)
            if pool["ready"] >= ready or time.monotonic() > deadline:
                return pool
            time.sleep(0.1)


@contextmanager
def resident_agent(
    sshd: Sshd, folder: Path, *, pool: int = 1, orphan_timeout: float = 600, wait_pool: bool = True
) -> Iterator[Resident]:
    """Start ``guest serve`` on ``folder/run/agent.sock``; stopped (SIGTERM) on exit."""
    sock = folder / "run" / "agent.sock"
    log = folder / "resident.log"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "jupyter_cc.cli.guest",
        "serve",
        "--socket",
        str(sock),
        "--tee",
        "sim",
        "--sim-dir",
        str(data_dir() / "sim"),
        "--host-key-file",
        str(sshd.host_pub),
        "--pool",
        str(pool),
        "--orphan-timeout",
        str(orphan_timeout),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guest serve did not start: {log.read_text()[-1500:]}")
            time.sleep(0.05)
        agent = Resident(proc, sock, log)
        if wait_pool and pool:
            agent.wait_pool(pool)
        yield agent
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children...)."""
    from tests.support import procs

    found: set[int] = set()
    frontier = [pid]
    while frontier:
        kids = procs.children(frontier.pop())
        found.update(kids)
        frontier.extend(kids)
    return found


def open_fds(pid: int) -> list[str]:
    """Where the process's descriptors point (files, pipes, sockets)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:
            continue
    return out
