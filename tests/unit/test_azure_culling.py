"""Idle culling: idle_minutes and max_hours decide when a running CVM is deallocated."""

from __future__ import annotations

import pytest

from jupyter_cc.azure.culling import decide

H = 3600.0


@pytest.mark.parametrize(
    ("now", "started", "activity", "action"),
    [
        (10 * 60, 0.0, None, "keep"),  # just started, no kernel yet
        (61 * 60, 0.0, None, "deallocate"),  # an hour with no kernel at all
        (3 * H, 0.0, 3 * H - 120, "keep"),  # a kernel ran two minutes ago
        (3 * H, 0.0, 3 * H - 61 * 60, "deallocate"),  # idle an hour and a minute
        (12 * H - 10 * 60, 0.0, 12 * H - 60, "warn"),  # busy, but max_hours is ten minutes away
        (12 * H, 0.0, 12 * H - 1, "deallocate"),  # max_hours deallocates even a busy CVM
        (5 * H, None, None, "keep"),  # started outside this session, never seen active: no basis
    ],
)
def test_idle_minutes_and_max_hours(
    now: float, started: float | None, activity: float | None, action: str
) -> None:
    decision = decide(now=now, started_at=started, last_activity=activity, idle_minutes=60, max_hours=12)
    assert decision.action == action
    assert decision.reason


def test_zero_switches_a_rule_off() -> None:
    assert (
        decide(now=100 * H, started_at=0.0, last_activity=None, idle_minutes=0, max_hours=0).action == "keep"
    )
    assert (
        decide(now=100 * H, started_at=0.0, last_activity=None, idle_minutes=60, max_hours=0).action
        == "deallocate"
    )


def test_the_reason_names_the_limit() -> None:
    decision = decide(now=13 * H, started_at=0.0, last_activity=13 * H, idle_minutes=60, max_hours=12)
    assert "max_hours is 12" in decision.reason
