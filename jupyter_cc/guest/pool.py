"""The resident agent's warm kernel pool: kernel processes started ahead, each used once.

A pool process is :mod:`jupyter_cc.guest.warmkernel`: the interpreter has started and imported
ipykernel, and it waits on stdin. It holds no HMAC key, no connection file and none of the
user's environment: those reach it only when :meth:`KernelPool.take` hands it to a kernel start,
which happens after the client accepted the attestation. A process taken from the pool is never
put back (a stopped kernel's process exits); the pool starts a replacement in the background,
so the next kernel start finds one ready. The replacement waits ``refill_delay`` seconds after a
take: on a small VM, an interpreter starting beside the kernel just handed out would slow that
kernel's own start and its client's first round trips.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_cc.guest.kernel import GuestKernel

__all__ = ["KernelPool", "rss_bytes"]


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` in bytes (0 when it is gone), from /proc/PID/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class KernelPool:
    """``size`` prepared kernel processes, refilled in the background after each :meth:`take`."""

    def __init__(
        self,
        python: str,
        *,
        base_env: Mapping[str, str] | None = None,
        size: int = 1,
        refill_delay: float = 1.0,
    ) -> None:
        if size < 0:
            raise ValueError("the pool size must be 0 or more")
        self.python = python
        self.base_env = dict(base_env or {})
        self.size = size
        self.refill_delay = refill_delay
        self._taken_at = float("-inf")
        self._ready: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self.handed_out = 0
        self._thread = threading.Thread(target=self._refill_loop, name="cc-kernel-pool", daemon=True)

    def __repr__(self) -> str:
        return f"KernelPool(size={self.size}, ready={len(self._ready)})"

    def start(self) -> KernelPool:
        """Start filling the pool (in the background: the agent answers meanwhile)."""
        self._thread.start()
        return self

    def _prepare(self) -> tuple[subprocess.Popen[bytes], Path] | None:
        kernel = GuestKernel(self.python, base_env=self.base_env)
        kernel.prewarm()
        return kernel.take_warm()

    def _refill_loop(self) -> None:
        """Keep ``size`` live processes ready; one at a time, so a refill never starves a start."""
        while True:
            with self._lock:
                self._drop_dead()
                while not self._closed and len(self._ready) >= self.size:
                    self._wake.wait(timeout=5)  # also notices a prepared process that died
                    self._drop_dead()
                if self._closed:
                    return
                if not self._after_delay():
                    continue
            prepared = self._prepare()
            if prepared is None:  # the Python cannot start: do not spin
                with self._lock:
                    self._wake.wait(timeout=5)
                continue
            if not self._keep(prepared):
                return

    def _keep(self, prepared: tuple[subprocess.Popen[bytes], Path]) -> bool:
        """Add a prepared process to the pool; False (and it is ended) when the pool closed meanwhile."""
        with self._lock:
            if not self._closed:
                self._ready.append(prepared)
                return True
        _discard(prepared)
        return False

    def _after_delay(self) -> bool:
        """(Lock held.) Wait out ``refill_delay`` since the last take; False if woken before."""
        left = self._taken_at + self.refill_delay - time.monotonic()
        if left <= 0:
            return True
        self._wake.wait(timeout=left)
        return False

    def _drop_dead(self) -> None:
        alive = [(p, d) for p, d in self._ready if p.poll() is None]
        for entry in self._ready:
            if entry not in alive:
                _discard(entry)
        self._ready = alive

    def take(self) -> tuple[subprocess.Popen[bytes], Path] | None:
        """A prepared process and its folder, removed from the pool for good; None if none is ready."""
        with self._lock:
            self._drop_dead()
            taken = self._ready.pop(0) if self._ready else None
            if taken is not None:
                self.handed_out += 1
                self._taken_at = time.monotonic()
            self._wake.notify_all()
        return taken

    def pids(self) -> list[int]:
        """The PIDs of the processes ready now (for tests and the status report)."""
        with self._lock:
            return [p.pid for p, _ in self._ready if p.poll() is None]

    def status(self) -> dict[str, Any]:
        """What ``hello`` reports: configured size, ready processes, their memory, starts served."""
        pids = self.pids()
        return {
            "size": self.size,
            "ready": len(pids),
            "idle_rss_bytes": sum(rss_bytes(pid) for pid in pids),
            "handed_out": self.handed_out,
        }

    def close(self) -> None:
        """Stop the refills and end every process still waiting (none of them ran anything)."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            self._wake.notify_all()
        for entry in ready:
            _discard(entry)
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def _discard(entry: tuple[subprocess.Popen[bytes], Path]) -> None:
    """End a waiting process (end of input: it exits without running anything) and its folder."""
    kernel = GuestKernel()
    kernel.adopt_warm(*entry)
    kernel.stop(now=True)
