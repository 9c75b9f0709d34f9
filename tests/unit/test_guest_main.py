"""``python -m jupyter_cc.guest``: the prepared kernel process it starts before reading its options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_cc.paths import data_dir
from tests.support import procs


def _warm_kernels(marker: Path) -> list[int]:
    """Live prepared kernel processes started with ``TMPDIR=marker``."""
    tag = f"TMPDIR={marker}".encode()
    return [
        pid
        for pid in procs.pids()
        if b"jupyter_cc.guest.warmkernel" in procs.cmdline(pid)
        and tag in procs.environ(pid).split(b"\0")
        and procs.alive(pid)
    ]


def _agent(tmp_path: Path, *options: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "jupyter_cc.guest", *options],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "options",
    [
        ("--no-such-option",),
        ("--tee", "no-such-tee"),
    ],
    ids=["unknown option", "unknown tee"],
)
def test_wrong_options_leave_no_prepared_kernel_and_no_folder(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    result = _agent(tmp_path, *options)
    assert result.returncode == 2, result.stderr
    assert b"Traceback" not in result.stderr
    assert not _warm_kernels(tmp_path), "a prepared kernel process outlived the agent"
    assert not list(tmp_path.iterdir()), "the prepared kernel's folder was left behind"


def test_an_agent_that_ends_before_a_kernel_leaves_nothing(tmp_path: Path) -> None:
    # End of input at once, as when the client refused the evidence or went away.
    result = _agent(tmp_path, "--tee", "sim", "--sim-dir", str(data_dir() / "sim"))
    assert result.returncode == 0, result.stderr
    assert not _warm_kernels(tmp_path)
    assert not list(tmp_path.iterdir())
