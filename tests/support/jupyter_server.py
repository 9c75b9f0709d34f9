"""A real ``jupyter server`` subprocess on a free loopback port, for tests.

The caller gives the folder (kernels under ``<folder>/jupyter``), extra environment and extra
server options; it gets the URL and token while the server runs, and the server's log on failure.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.sshd import free_port


@dataclass(frozen=True)
class RunningServer:
    url: str
    token: str
    log: Path


@contextmanager
def jupyter_server(
    folder: Path, *, env: dict[str, str] | None = None, args: Sequence[str] = (), stop_timeout: float = 15
) -> Iterator[RunningServer]:
    token = secrets.token_hex(16)
    port = free_port()
    log_path = folder / "server.log"
    full_env = {
        **os.environ,
        "JUPYTER_PATH": str(folder / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(folder / "config"),
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
        "JUPYTER_TOKEN": token,
        **(env or {}),
    }
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--no-browser",
        "--allow-root",
        f"--ServerApp.root_dir={folder}",
        *args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log_path.read_text()[-2000:]) from None
                time.sleep(0.2)
        yield RunningServer(url, token, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
