"""The attested kernel over a real sshd on loopback, with the simulated TEE behind it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.cli import main
from jupyter_cc.kernelspec import kernelspec, simulated_policy_path
from jupyter_cc.paths import data_dir
from jupyter_cc.provisioner import KernelRefusedError
from tests.support import procs
from tests.support.sshd import Sshd, guest_sshd, keygen, sim_guest_options, sim_guest_traits

pytestmark = pytest.mark.timeout(120)


def provisioner_config(sshd: Sshd, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "transport": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        **sim_guest_traits(sshd),
    }
    config.update(overrides)
    return config


@pytest.fixture
def kernel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    (tmp_path / "jupyter" / "kernels").mkdir(parents=True)
    return tmp_path / "jupyter" / "kernels"


def install_spec(
    kernel_dir: Path, name: str, config: dict[str, object], env: dict[str, str] | None = None
) -> str:
    spec = kernelspec(f"Confidential {name}", config)
    if env:
        spec["env"] = env
    (kernel_dir / name).mkdir()
    (kernel_dir / name / "kernel.json").write_text(json.dumps(spec))
    return name


def guest_processes() -> list[int]:
    """PIDs of this test session's guest agents (marked by its sim dir) and their kernels."""
    agents = set(procs.guest_agents(str(data_dir() / "sim").encode()))
    kernels = {pid for pid in procs.pids() if procs.parent(pid) in agents}
    return sorted(agents | kernels)


def runtime_dir_of(kernel_pid: int) -> Path:
    """The guest kernel's private runtime folder: where its output log is (same machine here)."""
    for fd in Path(f"/proc/{kernel_pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.name == "kernel.log" and target.parent.name.startswith("jupyter-cc-kernel-"):
            return target.parent
    raise AssertionError("the guest kernel has no runtime folder open")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def execute(km: AsyncKernelManager, code: str, timeout: float = 30) -> dict[str, object]:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=timeout)
        reply = await kc.execute_interactive(code, timeout=timeout, store_history=False)
        return dict(reply["content"])
    finally:
        kc.stop_channels()


# --- attestation alone ---------------------------------------------------------------------


def attest_argv(sshd: Sshd, *extra: str) -> list[str]:
    return ["attest", "127.0.0.1", *sim_guest_options(sshd), *extra]


def test_attest_over_ssh_passes_only_under_a_policy_allowing_simulation(sshd: Sshd, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(attest_argv(sshd, "--policy", str(simulated_policy_path()), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True
    assert doc["claims"]["simulated"] is True
    assert doc["attestation"]["evidence_kind"] == "sim-snp"
    assert main(attest_argv(sshd)) == 1
    err = capsys.readouterr().err
    assert "allow_simulated" in err


def test_a_relay_with_another_host_key_is_refused(sshd: Sshd, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # The guest binds the key its own sshd holds; the client sees another one in the handshake.
    keygen(tmp_path / "other")
    argv = attest_argv(sshd, "--policy", str(simulated_policy_path()))
    argv[argv.index("--host-key-file") + 1] = str(tmp_path / "other.pub")
    assert main(argv) == 1
    assert "binding check failed: the bound SSH host key digest" in capsys.readouterr().err


def test_known_hosts_with_another_key_is_refused_before_anything_runs(
    sshd: Sshd, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    keygen(tmp_path / "other")
    key_type, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    (tmp_path / "known").write_text(f"[127.0.0.1]:{sshd.port} {key_type} {b64}\n")
    argv = attest_argv(sshd, "--policy", str(simulated_policy_path()))
    argv[argv.index("--known-hosts") + 1] = str(tmp_path / "known")
    assert main(argv) == 1
    assert "is not the one in known_hosts" in capsys.readouterr().err


def test_unknown_host_key_is_accepted_once_attestation_binds_it(sshd: Sshd, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = attest_argv(sshd, "--policy", str(simulated_policy_path()))
    argv[argv.index("--known-hosts") + 1] = str(tmp_path / "absent")
    assert main(argv) == 0


def test_hostile_paths_are_quoted_not_executed(sshd: Sshd, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    argv = attest_argv(sshd, "--policy", str(simulated_policy_path()))
    argv[argv.index("--host-key-file") + 1] = f"x; touch {marker}; $(touch {marker}) `touch {marker}`"
    assert main(argv) in (1, 2)
    assert not marker.exists()


# --- kernels ---------------------------------------------------------------------------------


async def test_kernel_runs_in_the_guest_interrupts_restarts_and_leaves_nothing(
    sshd: Sshd, kernel_dir: Path
) -> None:
    name = install_spec(kernel_dir, "cc-sim", provisioner_config(sshd))
    before = set(guest_processes())
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        prov = km.provisioner
        state = prov.attestation_state()
        assert state["confidential"] and state["simulated"]
        assert state["verdict"]["passed"] and state["verdict"]["policy"] == "simulated-demo"
        # The agent's TEE choice reaches the prepared process (started before the agent read
        # its options) with the start request.
        code = (
            "import os\n"
            "assert os.environ['JUPYTER_CC_CONFIDENTIAL'] == '1'\n"
            "assert os.environ['JUPYTER_CC_TEE'] == 'sim'\n"
            f"assert os.environ['JUPYTER_CC_SIM_DIR'] == {str(data_dir() / 'sim')!r}"
        )
        reply = await execute(km, code)
        assert reply["status"] == "ok", reply
        ports = [
            km.get_connection_info()[p]
            for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        ]
        runtime = runtime_dir_of(prov._pid)
        assert (runtime / "kernel.json").stat().st_mode & 0o777 == 0o600
        assert all(listening(p) for p in ports)

        # Interrupt during time.sleep travels as a message and raises KeyboardInterrupt.
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        msg_id = kc.execute("import time; time.sleep(30)")
        time.sleep(1.0)
        await km.interrupt_kernel()
        while True:
            msg = await kc.get_shell_msg(timeout=20)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["status"] == "error"
        assert msg["content"]["ename"] == "KeyboardInterrupt"
        kc.stop_channels()

        # Restart attests again and clears state.
        first = prov.attestation.attested_at
        await execute(km, "y = 42")
        await km.restart_kernel()
        assert prov.attestation is not None and prov.attestation.attested_at >= first
        reply = await execute(km, "y")
        assert reply["status"] == "error" and reply["ename"] == "NameError"
    finally:
        await km.shutdown_kernel()
    deadline = time.monotonic() + 10
    while set(guest_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (set(guest_processes()) - before), "guest processes left behind"
    assert not any(listening(p) for p in ports)
    assert not runtime.exists(), "the connection file outlived the kernel"


async def test_kernel_whose_evidence_fails_policy_never_starts(sshd: Sshd, kernel_dir: Path) -> None:
    config = provisioner_config(sshd)
    del config["policy"]  # the default policy refuses the simulated TEE
    name = install_spec(kernel_dir, "cc-refused", config)
    before = set(guest_processes())
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(KernelRefusedError) as info:
        await km.start_kernel()
    message = str(info.value)
    first, *rules = message.split("\n")
    assert first == "Confidential kernel not started: policy 'default' refused the sim-snp TEE."
    assert rules[0].startswith("- allow_simulated: expected a hardware TEE")
    assert [f"- {r}" for r in info.value.rules] == rules
    assert km.provisioner.attestation is None
    time.sleep(0.5)
    assert not (set(guest_processes()) - before)


async def test_env_values_cannot_execute_anything(sshd: Sshd, kernel_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = {
        "A": f"$(touch {marker})",
        "B": f"`touch {marker}`",
        "C": f"x; touch {marker}",
        "D": f"x\ntouch {marker}",
    }
    name = install_spec(kernel_dir, "cc-env", provisioner_config(sshd), env=hostile)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        code = "import os, json; print(json.dumps({k: os.environ[k] for k in 'ABCD'}))"
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        outputs: list[str] = []
        await kc.execute_interactive(
            code, timeout=30, output_hook=lambda m: outputs.append(m["content"].get("text", ""))
        )
        kc.stop_channels()
        assert json.loads("".join(outputs)) == hostile
    finally:
        await km.shutdown_kernel()
    assert not marker.exists()


async def test_server_environment_does_not_reach_the_guest(
    sshd: Sshd, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_CC_TEST_SECRET", "do-not-send")
    name = install_spec(kernel_dir, "cc-noenv", provisioner_config(sshd))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        reply = await execute(km, "import os; assert 'JUPYTER_CC_TEST_SECRET' not in os.environ")
        assert reply["status"] == "ok"
    finally:
        await km.shutdown_kernel()


async def test_a_lost_guest_kernel_shows_as_dead_and_restart_attests_again(
    sshd: Sshd, kernel_dir: Path
) -> None:
    name = install_spec(kernel_dir, "cc-dead", provisioner_config(sshd))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        pid = km.provisioner._pid
        assert pid
        os.kill(pid, 9)  # the guest kernel dies (same machine in this test)
        deadline = time.monotonic() + 10
        while await km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not await km.is_alive()
        first = km.provisioner.attestation
        await km.restart_kernel(now=True)
        assert await km.is_alive()
        assert km.provisioner.attestation is not None and km.provisioner.attestation is not first
    finally:
        await km.shutdown_kernel(now=True)


def test_kernelspec_install_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    prefix = tmp_path / "prefix"
    assert (
        main(
            [
                "kernelspec",
                "install",
                "cc-prod",
                "--host",
                "cvm.example",
                "--policy",
                str(simulated_policy_path()),
                "--prefix",
                str(prefix),
            ]
        )
        == 0
    )
    spec = json.loads((prefix / "share/jupyter/kernels/cc-prod/kernel.json").read_text())
    assert spec["interrupt_mode"] == "message"
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "confidential-provisioner"
    assert prov["config"]["host"] == "cvm.example"
    assert main(["kernelspec", "install-sim", "--prefix", str(prefix)]) == 0
    sim = json.loads((prefix / "share/jupyter/kernels/python3-confidential-sim/kernel.json").read_text())
    assert sim["metadata"]["kernel_provisioner"]["config"]["tee"] == "sim"
    assert sim["display_name"] == "Confidential Python (simulated)"
    assert main(["kernelspec", "install", "bad name", "--host", "h", "--prefix", str(prefix)]) == 2
    assert main(["kernelspec", "install", "cc-x", "--prefix", str(prefix)]) == 2
    assert (
        main(["kernelspec", "install", "cc-y", "--host", "h", "--tee", "sim", "--prefix", str(prefix)]) == 2
    )


# --- the local transport (the server itself in the TEE; the simulated demo) -------------------


async def test_local_transport_kernel_binds_no_host_key(kernel_dir: Path) -> None:
    config = {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())}
    name = install_spec(kernel_dir, "cc-local", config)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        att = km.provisioner.attestation
        assert att is not None
        assert att.host_key_sha256 == bytes(32)
        assert att.claims.simulated
        reply = await execute(km, "import os; assert os.environ['JUPYTER_CC_CONFIDENTIAL'] == '1'")
        assert reply["status"] == "ok"
    finally:
        await km.shutdown_kernel()


# --- a lost connection ---------------------------------------------------------------------


async def test_killing_sshd_mid_session_shows_the_kernel_dead_and_leaves_nothing(
    tmp_path: Path, kernel_dir: Path
) -> None:
    server = guest_sshd(tmp_path / "sshd")
    try:
        name = install_spec(kernel_dir, "cc-cut", provisioner_config(server))
        before = set(guest_processes())
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        assert server.process is not None
        for pid in procs.children(server.process.pid):  # the session processes of our connection
            os.kill(pid, 9)
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 20
        while await km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not await km.is_alive()
        await km.shutdown_kernel(now=True)
        # The agent saw its stream end and stopped the kernel: nothing is left in the guest.
        deadline = time.monotonic() + 10
        while set(guest_processes()) - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (set(guest_processes()) - before)
    finally:
        server.stop()


async def test_interpreter_variables_get_a_cold_started_kernel(sshd: Sshd, kernel_dir: Path) -> None:
    # PYTHON* variables act while the interpreter starts, so the prepared process cannot take
    # them: the agent starts a fresh one instead, and the value is in effect.
    name = install_spec(kernel_dir, "cc-cold", provisioner_config(sshd), env={"PYTHONHASHSEED": "123"})
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        seeded = subprocess.run(
            [sys.executable, "-c", "print(hash('jupyter-cc'))"],
            env={**os.environ, "PYTHONHASHSEED": "123"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        reply = await execute(km, f"assert hash('jupyter-cc') == {seeded}")
        assert reply["status"] == "ok"
        reply = await execute(km, "import os; assert os.environ['PYTHONHASHSEED'] == '123'")
        assert reply["status"] == "ok"
    finally:
        await km.shutdown_kernel()


async def test_reattestation_refreshes_the_verdict_while_running(sshd: Sshd, kernel_dir: Path) -> None:
    name = install_spec(kernel_dir, "cc-reattest", provisioner_config(sshd, reattest_interval=0.5))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        first = km.provisioner.attestation
        assert first is not None
        await asyncio.sleep(2.0)
        later = km.provisioner.attestation
        assert later is not None and later.bundle_sha256 != first.bundle_sha256  # fresh nonce
        reply = await execute(km, "1 + 1")
        assert reply["status"] == "ok"
    finally:
        await km.shutdown_kernel()


async def test_a_failed_reattestation_stops_the_kernel(sshd: Sshd, kernel_dir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(simulated_policy_path().read_text())
    name = install_spec(
        kernel_dir, "cc-revoked", provisioner_config(sshd, policy=str(policy), reattest_interval=0.5)
    )
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        assert await km.is_alive()
        policy.write_text('name = "tightened"\n')  # the operator withdraws acceptance of the TEE
        deadline = time.monotonic() + 10
        while await km.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not await km.is_alive()
        assert km.provisioner.attestation is None
        assert "policy 'tightened' refused" in (km.provisioner.attestation_error or "")
    finally:
        await km.shutdown_kernel(now=True)
