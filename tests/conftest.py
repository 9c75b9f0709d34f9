"""Shared fixtures: the real evidence in ../shared/vectors and a pinned verification time."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("JUPYTER_CC_VECTORS", ROOT.parent / "shared" / "vectors"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Shared machines are noisy: no per-example deadline; under CI the examples are derandomized so
# a green main stays green, while local runs keep exploring new inputs.
settings.register_profile(
    "jupyter-cc", deadline=None, derandomize=IN_CI, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("jupyter-cc")


def need_tool(name: str) -> None:
    """Skip a test for a missing tool, except under CI=true, where it is a failure."""
    if IN_CI:
        pytest.fail(f"{name} is required under CI=true but is not available")
    pytest.skip(f"{name} is not available")


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The folder of real evidence; absent outside CI means skip, under CI it means fail."""
    if not VECTORS.is_dir():
        need_tool(f"the evidence folder {VECTORS}")
    return VECTORS


@pytest.fixture(scope="session")
def read_vector(vectors: Path):  # type: ignore[no-untyped-def]
    def read(name: str) -> bytes:
        return (vectors / name).read_bytes()

    return read


# Public sample certificates and collateral expire; verify them as of a fixed time.
SAMPLE_TIME = datetime(2024, 6, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Keep tests out of the user's data dir: the simulated TEE is created in a temp folder."""
    old = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(tmp_path_factory.mktemp("jupyter-data"))
    yield
    if old is None:
        os.environ.pop("JUPYTER_DATA_DIR", None)
    else:
        os.environ["JUPYTER_DATA_DIR"] = old


@pytest.fixture(scope="session")
def sim_tee():  # type: ignore[no-untyped-def]
    from jupyter_cc.attest.sim import SimulatedTee

    return SimulatedTee.load_or_create()
