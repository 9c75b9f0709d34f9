"""Issue 4 end to end: a confidential kernel (simulated TEE) releases a key from a running
``jupyter-cc kbs serve``, seals a DataFrame and a 1 GiB file and unseals them bit-exact; a
policy that rejects the evidence gets 403 and no key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.kernelspec import kernelspec, simulated_policy_path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import run_demo  # noqa: E402

pytestmark = pytest.mark.timeout(300)

GIB = 1 << 30


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_cc", *argv], capture_output=True, text=True, check=False
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """``jupyter-cc kbs serve`` with one key the simulated TEE may have and one it may not."""
    db = str(tmp_path / "kbs" / "kbs.sqlite")
    (tmp_path / "kbs").mkdir()
    (tmp_path / "deny.toml").write_text('name = "hardware-only"\n')
    resources = (
        ("demo/key/patients", str(simulated_policy_path())),
        ("demo/key/denied", str(tmp_path / "deny.toml")),
    )
    for resource, policy in resources:
        done = cli("kbs", "add-key", resource, "--generate", "32", "--policy", policy, "--db", db)
        assert done.returncode == 0, done.stderr
    with run_demo.broker(tmp_path) as url:
        yield url  # key URIs under it are pinned with pinned()


async def run(kc, code: str) -> tuple[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    out: list[str] = []

    def hook(msg: dict) -> None:  # type: ignore[type-arg]
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = await kc.execute_interactive(code, timeout=240, output_hook=hook)
    return "".join(out), reply["content"]


async def test_kernel_releases_seals_and_unseals(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels = tmp_path / "jupyter" / "kernels" / "cc-keys"
    kernels.mkdir(parents=True)
    spec = kernelspec("keys", {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())})
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    big = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(big, "wb") as fh:
        for i in range(GIB >> 20):
            fh.write(block[:16] + i.to_bytes(8, "little") + block[24:])
    digest = hashlib.sha256(big.read_bytes()).hexdigest()

    km = AsyncKernelManager(kernel_name="cc-keys")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        pin = run_demo.broker_pin(tmp_path)  # HTTPS: the TEE pins the broker's certificate
        out, reply = await run(kc, f"%release_key {broker}/demo/key/patients?cert-sha256={pin} --as patients")
        assert reply["status"] == "ok", out
        assert "released key 'patients'" in out
        assert "allowed by simulated-demo" in out

        code = (
            "import pandas as pd\n"
            "df = pd.DataFrame({'patient': ['a', 'b', 'c'], 'age': [34, 51, 68], 'hba1c': [5.4, 7.9, 6.1]})\n"
            f"%seal df --key patients --to {tmp_path / 'df.sealed'}\n"
            f"%unseal {tmp_path / 'df.sealed'} --key patients --as df2\n"
            "assert df.equals(df2)\n"
            f"%seal --file {big} --key patients --to {tmp_path / 'big.sealed'}\n"
            f"%unseal {tmp_path / 'big.sealed'} --key patients --to {tmp_path / 'big.out'}\n"
        )
        out, reply = await run(kc, code)
        assert reply["status"] == "ok", out
        assert b"hba1c" not in (tmp_path / "df.sealed").read_bytes()
        assert hashlib.sha256((tmp_path / "big.out").read_bytes()).hexdigest() == digest

        out, reply = await run(
            kc,
            f"%release_key {broker}/demo/key/denied?cert-sha256={pin} --as denied",
        )
        assert reply["status"] == "error"
        assert "403" in out and "allow_simulated" in out
        out, reply = await run(kc, "%seal df --key denied")
        assert reply["status"] == "error"
        assert "no released key named 'denied'" in out

        # Keys never show in reprs: only key ids and fingerprints.
        code = (
            "m = get_ipython().magics_manager.registry['KeyMagics']\n"
            "k = m.keys.get('patients')\n"
            "shown = repr(m.keys) + str(k) + repr(k)\n"
            "assert len(k.material) == 32 and k.material.hex() not in shown and k.fingerprint in shown\n"
        )
        out, reply = await run(kc, code)
        assert reply["status"] == "ok", out
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
        for name in ("big.bin", "big.sealed", "big.out"):
            (tmp_path / name).unlink(missing_ok=True)
