"""binder/: repo2docker accepts the configuration, its install steps work in a fresh venv, and
its start script seals the demo data, starts the broker and hands over with the demo's env."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sshd import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import run_demo  # noqa: E402

pytestmark = pytest.mark.timeout(900)


def test_repo2docker_reads_the_binder_folder() -> None:
    r2d = shutil.which("jupyter-repo2docker", path=str(Path(sys.executable).parent)) or shutil.which(
        "jupyter-repo2docker"
    )
    if r2d is None:
        from tests.support.env import need_tool

        need_tool("jupyter-repo2docker")
    done = subprocess.run(
        [r2d, "--no-build", "--no-run", str(ROOT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = done.stdout
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "RUN ./binder/postBuild" in dockerfile
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in dockerfile
    assert "py-3.11" in dockerfile or "py-2d3-2e11" in dockerfile  # runtime.txt's Python (name escaped)


def test_install_steps_and_start_script_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "-r", str(ROOT / "binder" / "requirements.txt")], env=env, check=True, timeout=600
    )
    subprocess.run([str(ROOT / "binder" / "postBuild")], env=env, cwd=ROOT, check=True, timeout=600)
    specs = subprocess.run(
        [str(venv / "bin" / "jupyter"), "kernelspec", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "python3-confidential-sim" in specs

    port = free_port()
    demo = tmp_path / "demo"
    start_env = {**env, "JUPYTER_CC_DEMO_DIR": str(demo), "JUPYTER_CC_DEMO_PORT": str(port)}
    probe = (
        "import os; print(os.environ['JUPYTER_CC_DEMO_KBS'], os.environ['JUPYTER_CC_DEMO_DATA'], "
        "os.environ['JUPYTER_CC_DEMO_KBS_PIN'])"
    )
    done = subprocess.run(
        [str(ROOT / "binder" / "start"), str(venv / "bin" / "python"), "-c", probe],
        env=start_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    pid = int((demo / "kbs.pid").read_text()) if (demo / "kbs.pid").exists() else None
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        kbs, data, pin = done.stdout.split()
        assert kbs == f"kbs://127.0.0.1:{port}"
        assert pin == run_demo.broker_pin(demo)  # the notebook pins the broker's own certificate
        assert Path(data).read_bytes().startswith(b"\x89JCCSEAL")
        assert run_demo.wait_for_port(port, 30), (demo / "kbs.log").read_text()[-1000:]
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
