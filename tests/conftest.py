"""Session fixtures: the real evidence in ../shared/vectors, a private data dir, the simulated
TEE and the sshd standing in for a confidential VM.

Tests under ``integration/`` start real parts and are marked ``integration``, so
``pytest -m "not integration"`` (or ``pytest tests/unit``) runs the fast ones alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support import socket_origins
from tests.support.env import IN_CI, VECTORS, need_tool
from tests.support.sshd import Sshd, guest_sshd

# Shared machines are noisy: no per-example deadline; under CI the examples are derandomized so
# a green main stays green, while local runs keep exploring new inputs.
settings.register_profile(
    "jupyter-cc", deadline=None, derandomize=IN_CI, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("jupyter-cc")

# A socket left open fails a later, unrelated test: its warning then says where it was opened.
socket_origins.install()

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The folder of real evidence; absent outside CI means skip, under CI it means fail."""
    if not VECTORS.is_dir():
        need_tool(f"the evidence folder {VECTORS}")
    return VECTORS


@pytest.fixture(scope="session")
def read_vector(vectors: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (vectors / name).read_bytes()

    return read


@pytest.fixture(autouse=True, scope="session")
def _offline() -> Iterator[None]:
    """Tests never reach Intel, AMD or NVIDIA: collateral comes from files, the cache, or a
    loopback fake that a test points at (and turns offline mode off for)."""
    old = os.environ.get("JUPYTER_CC_OFFLINE")
    os.environ["JUPYTER_CC_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("JUPYTER_CC_OFFLINE", None)
    else:
        os.environ["JUPYTER_CC_OFFLINE"] = old


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep tests out of the user's data dir: the simulated TEE is created in a temp folder."""
    old = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(tmp_path_factory.mktemp("jupyter-data"))
    yield
    if old is None:
        os.environ.pop("JUPYTER_DATA_DIR", None)
    else:
        os.environ["JUPYTER_DATA_DIR"] = old


@pytest.fixture(scope="session")
def sim_tee() -> Any:
    from jupyter_cc.attest.sim import SimulatedTee

    return SimulatedTee.load_or_create()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, sim_tee: Any) -> Iterator[Sshd]:
    """One real sshd standing in for the CVM for the whole run, started after the simulated
    TEE exists (``sim_tee``) so no guest session races to create it."""
    server = guest_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
