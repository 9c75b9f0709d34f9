"""When to deallocate an idle or long-running CVM: pure decisions, the clock passed in.

A profile's ``idle_minutes`` deallocates a CVM no kernel has used for that long; ``max_hours``
deallocates it after that long running whatever it does, with a warning ``warn_minutes`` before.
Deallocated, a CVM costs only its disk; ``jupyter-cc cvm start`` (or ``%cc connect``) brings it
back. 0 switches either rule off.

How long no kernel has run is the resident guest agent's report (:func:`guest_activity`): its
``hello`` answers ``idle_seconds`` (0 while a kernel runs, orphans included; else the seconds since
the last one stopped), asked over the CVM's SSH connection (host key checked against the pinned
known_hosts) and a ``direct-streamlocal`` channel to the agent's socket. Nothing is attested for
it: the report only decides whether to deallocate, and ``max_hours`` applies whatever it says.

>>> decide(now=7200.0, started_at=0.0, last_activity=None, idle_minutes=60, max_hours=12).action
'deallocate'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jupyter_cc.errors import CCError

if TYPE_CHECKING:
    from jupyter_cc.remote.guest import GuestTarget

__all__ = ["CullDecision", "GuestActivity", "decide", "guest_activity"]


@dataclass(frozen=True)
class GuestActivity:
    """What the guest agent said about its kernels: ``last_activity`` (host clock, seconds since
    the epoch; None when unknown), and a sentence for the operator."""

    last_activity: float | None
    sentence: str

    @property
    def known(self) -> bool:
        return self.last_activity is not None


def guest_activity(target: GuestTarget, *, clock: Callable[[], float] = time.time) -> GuestActivity:
    """Ask the CVM's resident guest agent when a kernel last ran (``hello``'s ``idle_seconds``).

    Never raises a :class:`CCError`: a CVM that cannot be reached, or runs no resident agent,
    gives an unknown activity (then only ``max_hours`` applies, so a busy CVM is never taken for
    an idle one).
    """
    from jupyter_cc.remote.agent_client import AgentClient
    from jupyter_cc.remote.ssh import SshConnection

    path = target.socket_path()
    if target.transport != "ssh" or not target.host or not path:
        return GuestActivity(None, "the guest agent is not reachable over SSH, so its idleness is unknown")
    ssh = SshConnection(target.ssh_target())
    try:
        ssh.connect()
        if not ssh.host_key_known:  # accepted only provisionally: not the pinned CVM
            return GuestActivity(
                None, f"the host key of {target.host} is not pinned, so its report is not used"
            )
        agent = AgentClient.over_streamlocal(ssh, path, timeout=target.timeout)
        try:
            hello = agent.request("hello")
        finally:
            agent.close()
    except CCError as exc:
        return GuestActivity(None, f"no resident guest agent answered ({exc.sentence()})")
    finally:
        ssh.close()
    return _activity(hello, clock())


def _activity(hello: dict[str, object], now: float) -> GuestActivity:
    idle = hello.get("idle_seconds")
    if not isinstance(idle, int | float) or isinstance(idle, bool) or idle < 0:
        return GuestActivity(None, "the guest agent does not report idleness (an older jupyter-cc)")
    if idle == 0:
        return GuestActivity(now, f"{hello.get('kernels', 'a')} kernel(s) running in the guest")
    return GuestActivity(now - float(idle), f"no kernel has run in the guest for {idle / 60:.0f} min")


@dataclass(frozen=True)
class CullDecision:
    """``keep``, ``warn`` (max_hours is near) or ``deallocate``, and why in one sentence."""

    action: str
    reason: str


def decide(
    *,
    now: float,
    started_at: float | None,
    last_activity: float | None,
    idle_minutes: int,
    max_hours: int,
    warn_minutes: int = 15,
) -> CullDecision:
    """What to do with a running CVM.

    Args:
        now: the current time (seconds since the epoch).
        started_at: when this session started it (None: unknown, only idleness can be judged
            from ``last_activity``).
        last_activity: when a kernel last ran code on it (None: not since it started).
        idle_minutes, max_hours: the profile's limits (0: no limit).
        warn_minutes: how long before ``max_hours`` to warn.
    """
    if max_hours and started_at is not None:
        running = now - started_at
        limit = max_hours * 3600
        if running >= limit:
            return CullDecision(
                "deallocate", f"it has run {running / 3600:.1f} h, the profile's max_hours is {max_hours}"
            )
        if running >= limit - warn_minutes * 60:
            left = (limit - running) / 60
            return CullDecision("warn", f"it will be deallocated in {left:.0f} min (max_hours {max_hours})")
    since = last_activity if last_activity is not None else started_at
    if idle_minutes and since is not None:
        idle = now - since
        if idle >= idle_minutes * 60:
            return CullDecision(
                "deallocate",
                f"no kernel has run for {idle / 60:.0f} min, the profile's idle_minutes is {idle_minutes}",
            )
    return CullDecision("keep", "within the profile's idle_minutes and max_hours")
