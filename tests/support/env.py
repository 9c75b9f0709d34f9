"""Where the tests run: the repository, the real evidence folder, CI.

Under ``CI=true`` a missing tool or folder is a failure, never a skip (README, design section 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(os.environ.get("JUPYTER_CC_VECTORS", ROOT.parent / "shared" / "vectors"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> None:
    """Skip a test for a missing tool, except under CI=true, where it is a failure."""
    if IN_CI:
        pytest.fail(f"{name} is required under CI=true but is not available")
    pytest.skip(f"{name} is not available")
