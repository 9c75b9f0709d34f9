"""What JupyterLab's kernel error dialog shows when a confidential kernel is refused.

A real Jupyter server starts a kernelspec whose evidence fails the policy; the REST answer that
JupyterLab turns into its "Error Starting Kernel" dialog must carry one sentence naming the
failed check with expected and observed values.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_cc.kernelspec import kernelspec
from jupyter_cc.paths import data_dir
from tests.support.jupyter_server import jupyter_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    kernels = tmp_path / "jupyter" / "kernels" / "cc-refused"
    kernels.mkdir(parents=True)
    # The local simulated TEE under the default policy: genuine evidence, refused by policy.
    spec = kernelspec("Refused", {"transport": "local", "tee": "sim", "sim_dir": str(data_dir() / "sim")})
    (kernels / "kernel.json").write_text(json.dumps(spec))
    with jupyter_server(tmp_path) as running:
        yield running.url, running.token


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
