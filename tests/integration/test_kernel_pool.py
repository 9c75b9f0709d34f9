"""The resident agent's warm kernel pool: prepared processes, each used once, holding no secret."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.guest.kernel import GuestKernel
from jupyter_cc.guest.pool import KernelPool
from tests.integration.test_remote_kernel import execute, install_spec, kernel_dir, provisioner_config
from tests.support import procs
from tests.support.resident import Resident, open_fds, resident_agent
from tests.support.sshd import Sshd

__all__ = ["kernel_dir"]

pytestmark = pytest.mark.timeout(150)

SPEC_SECRET = "spec-value-7f3a9c"


def pool_pids(agent: Resident, kernels: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """The service's prepared kernel processes: warmkernel children that are no running kernel."""
    return {
        pid
        for pid in procs.children(agent.process.pid)
        if b"jupyter_cc.guest.warmkernel" in procs.cmdline(pid) and pid not in kernels and procs.alive(pid)
    }


def wait_pool(agent: Resident, kernels: set[int], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = pool_pids(agent, kernels)
        if ready and agent.hello()["pool"]["ready"] == 1:  # type: ignore[index]
            return ready.pop()
        time.sleep(0.1)
    raise AssertionError("the pool did not refill")


def assert_holds_no_secret(pid: int, secrets_: list[str]) -> None:
    """Nothing of the user's in the process: environment, command line, open files, its folder."""
    environ = procs.environ(pid)
    cmdline = procs.cmdline(pid)
    for secret in secrets_:
        assert secret.encode() not in environ, "a pool process holds a secret in its environment"
        assert secret.encode() not in cmdline
    names = {entry.split("=", 1)[0] for entry in environ.decode("utf-8", "replace").split("\0") if entry}
    assert not names & {"SPEC_SECRET", "JPY_SESSION_NAME", "JUPYTER_CC_TEST_SECRET"}
    fds = open_fds(pid)
    assert not any(fd.endswith("kernel.json") for fd in fds), fds
    folders = {Path(fd).parent for fd in fds if fd.endswith("kernel.log")}
    assert len(folders) == 1
    assert [p.name for p in folders.pop().iterdir()] == ["kernel.log"]


async def test_the_pool_hands_each_process_out_once_and_it_holds_no_secret_before(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(sshd, tmp_path) as agent:
        config = provisioner_config(sshd, agent_socket=str(agent.socket))
        name = install_spec(kernel_dir, "cc-pool", config, env={"SPEC_SECRET": SPEC_SECRET})
        first = wait_pool(agent, set())
        assert_holds_no_secret(first, [SPEC_SECRET])

        km_a = AsyncKernelManager(kernel_name=name)
        await km_a.start_kernel()
        try:
            kernel_a = km_a.provisioner._pid
            assert kernel_a == first  # the prepared process became the kernel
            key_a = km_a.get_connection_info()["key"].decode()
            reply = await execute(km_a, f"import os; assert os.environ['SPEC_SECRET'] == {SPEC_SECRET!r}")
            assert reply["status"] == "ok"
            # The refill is a new process, and it holds neither A's key nor the spec's values.
            second = wait_pool(agent, {kernel_a})
            assert second != first
            assert_holds_no_secret(second, [SPEC_SECRET, key_a])
        finally:
            await km_a.shutdown_kernel()
        deadline = time.monotonic() + 10
        while procs.alive(first) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not procs.alive(first), "a used pool process outlived its kernel"
        assert pool_pids(agent) == {second}  # not put back

        km_b = AsyncKernelManager(kernel_name=name)
        await km_b.start_kernel()
        try:
            kernel_b = km_b.provisioner._pid
            assert kernel_b == second and kernel_b != kernel_a
            assert km_b.get_connection_info()["key"].decode() != key_a
            reply = await execute(km_b, "import os; print(os.getpid())")
            assert reply["status"] == "ok"
        finally:
            await km_b.shutdown_kernel()
        assert agent.hello()["pool"]["handed_out"] == 2  # type: ignore[index]


async def test_interpreter_variables_skip_the_pool_and_the_process_is_not_reused(
    sshd: Sshd, kernel_dir: Path, tmp_path: Path
) -> None:
    with resident_agent(sshd, tmp_path) as agent:
        config = provisioner_config(sshd, agent_socket=str(agent.socket))
        name = install_spec(kernel_dir, "cc-pool-cold", config, env={"PYTHONHASHSEED": "7"})
        prepared = wait_pool(agent, set())
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            assert km.provisioner._pid != prepared
            assert km.provisioner.attestation_state()["agent"]["warm"] is False
            assert (await execute(km, "import os; assert os.environ['PYTHONHASHSEED'] == '7'"))[
                "status"
            ] == "ok"
            deadline = time.monotonic() + 10
            while procs.alive(prepared) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not procs.alive(prepared), "a prepared process was kept after it was passed over"
            assert wait_pool(agent, {km.provisioner._pid}) != prepared
        finally:
            await km.shutdown_kernel()


def test_pool_status_reports_size_and_idle_memory_and_close_leaves_nothing() -> None:
    pool = KernelPool(sys.executable, base_env={"JUPYTER_CC_CONFIDENTIAL": "1"}, size=2).start()
    taken = None
    try:
        deadline = time.monotonic() + 60
        while pool.status()["ready"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = pool.status()
        assert status["size"] == 2 and status["ready"] == 2
        assert status["idle_rss_bytes"] > 2_000_000
        pids = pool.pids()
        folders = {Path(fd).parent for pid in pids for fd in open_fds(pid) if fd.endswith("kernel.log")}
        taken = pool.take()
        assert taken is not None and taken[0].pid in pids
        assert taken[0].pid not in pool.pids()
    finally:
        pool.close()
        if taken is not None:  # what a kernel start does with it: ours now, ended by us
            kernel = GuestKernel()
            kernel.adopt_warm(*taken)
            kernel.stop(now=True)
    deadline = time.monotonic() + 10
    while any(procs.alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(procs.alive(p) for p in pids)
    assert len(folders) == 2 and not any(f.exists() for f in folders)
    assert json.loads(json.dumps(status)) == status  # what hello sends: plain JSON
