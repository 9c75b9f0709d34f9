"""What JupyterLab's kernel error dialog shows when a confidential kernel is refused.

A real Jupyter server starts a kernelspec whose evidence fails the policy; the REST answer that
JupyterLab turns into its "Error Starting Kernel" dialog must carry one sentence naming the
failed check with expected and observed values.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_cc.kernelspec import kernelspec
from jupyter_cc.paths import data_dir

from sshd import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    kernels = tmp_path / "jupyter" / "kernels" / "cc-refused"
    kernels.mkdir(parents=True)
    # The local simulated TEE under the default policy: genuine evidence, refused by policy.
    spec = kernelspec("Refused", {"transport": "local", "tee": "sim", "sim_dir": str(data_dir() / "sim")})
    (kernels / "kernel.json").write_text(json.dumps(spec))
    token = secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_TOKEN": token,
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--no-browser",
            "--allow-root",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
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
                    raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_refused_kernel_error_names_the_failed_check(server: tuple[str, str]) -> None:
    url, token = server
    request = urllib.request.Request(
        f"{url}/api/kernels",
        data=json.dumps({"name": "cc-refused"}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 500
    body = json.loads(info.value.read())
    info.value.close()
    message = body["message"]
    assert "Confidential kernel not started: policy check failed:" in message
    assert "allow_simulated: expected a hardware TEE" in message
    assert "observed SIMULATED evidence" in message
    running = urllib.request.urlopen(
        urllib.request.Request(f"{url}/api/kernels", headers={"Authorization": f"token {token}"}), timeout=10
    )
    assert json.loads(running.read()) == []
    running.close()
