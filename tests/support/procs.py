"""This machine's processes as /proc shows them: command lines, environments, states, parents."""

from __future__ import annotations

from pathlib import Path


def pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def cmdline(pid: int) -> bytes:
    """The command line, arguments joined by spaces; empty when the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state, parent, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    try:
        state = _stat(pid)[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def parent(pid: int) -> int:
    """The parent's PID; 0 when the process is gone."""
    try:
        return int(_stat(pid)[1])
    except (OSError, ValueError, IndexError):
        return 0


def children(pid: int) -> list[int]:
    return [p for p in pids() if parent(p) == pid]


def guest_agents(marker: bytes) -> list[int]:
    """PIDs of the guest agents whose command line holds ``marker`` (a test session's sim dir)."""
    return [p for p in pids() if b"jupyter_cc.guest" in cmdline(p) and marker in cmdline(p)]
