"""Surviving a Jupyter server restart: a real server is stopped and started again; the same
kernel id answers over its websocket with the variables intact, after a fresh attestation.

The kernel runs in the resident guest agent behind a real sshd; the records live in the
servers' shared runtime dir.
"""

from __future__ import annotations

import json
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_cc.kernelspec import kernelspec, simulated_policy_path
from tests.integration.test_server_ext import Server
from tests.support import procs
from tests.support.jupyter_server import jupyter_server
from tests.support.resident import resident_agent
from tests.support.sshd import Sshd, sim_guest_traits

pytestmark = pytest.mark.timeout(240)

ARGS = ["--ServerApp.jpserver_extensions={'jupyter_cc': True}"]


async def ws_run(server: Server, kernel_id: str, code: str, timeout: float = 60) -> tuple[str, str]:
    """Execute ``code`` over the kernel's websocket, as JupyterLab does: (status, stdout)."""
    url = server.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {server.token}"})
    conn = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    message = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "t",
            "session": "s",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
        "channel": "shell",
    }
    await conn.write_message(json.dumps(message))
    out: list[str] = []
    status: str | None = None
    idle = False
    deadline = time.monotonic() + timeout
    try:
        while status is None or not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {code!r}")
            raw = await conn.read_message()
            if raw is None:
                raise ConnectionError("the kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "execute_reply":
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    finally:
        conn.close()
    return str(status), "".join(out)


@contextmanager
def server_at(folder: Path) -> Iterator[Server]:
    with jupyter_server(
        folder, args=ARGS, env={"JUPYTER_CC_AUDIT_LOG": str(folder / "audit.jsonl")}
    ) as running:
        yield Server(running.url, running.token, running.log, folder / "audit.jsonl", folder / "unused")


def install(folder: Path, sshd: Sshd, socket: Path, policy: Path, **extra: object) -> str:
    config = {
        "transport": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        **sim_guest_traits(sshd),
        "policy": str(policy),
        "agent_socket": str(socket),
        **extra,
    }
    spec_dir = folder / "jupyter" / "kernels" / "cc-persist"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec("Confidential (persist)", config)))
    return "cc-persist"


def wait_restored(server: Server, kernel_id: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel_id}")
        if status == 200 and (body["confidential"] or body["refusal"]):
            return dict(body)
        time.sleep(0.3)
    raise AssertionError(f"kernel {kernel_id} was not restored: {server.log.read_text()[-3000:]}")


@pytest.mark.parametrize("encryption", ["off", "required"])
async def test_the_same_kernel_id_answers_with_its_variables_after_a_server_restart(
    sshd: Sshd, tmp_path: Path, encryption: str
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(simulated_policy_path().read_text())
    with resident_agent(sshd, tmp_path / "guest") as agent:
        name = install(tmp_path, sshd, agent.socket, policy, transport_encryption=encryption)
        with server_at(tmp_path) as first:
            kernel_id = first.start_kernel(name)
            assert await ws_run(first, kernel_id, "x = 6 * 7") == ("ok", "")
            # The notebook's session, as JupyterLab makes it for an open notebook.
            notebook = {"path": "nb.ipynb", "name": "nb.ipynb", "type": "notebook"}
            body = {**notebook, "kernel": {"id": kernel_id}}
            status, session = first.call("POST", "/api/sessions", body=body)
            assert status == 201 and session["kernel"]["id"] == kernel_id, session
            before = wait_restored(first, kernel_id)
            record = tmp_path / "runtime" / "jupyter-cc-kernels" / f"{kernel_id}.json"
            assert stat.S_IMODE(record.stat().st_mode) == 0o600
            assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
        # The server is gone; the kernel is not.
        assert agent.hello()["kernels"] == 1
        text = record.read_text()
        assert "key" not in json.loads(text) and "signature" not in text
        # With CurveZMQ the record keeps the attested public key (to check the restored kernel
        # against), never its secret.
        assert "curve_secretkey" not in text
        assert bool(json.loads(text)["curve_publickey"]) is (encryption == "required")

        with server_at(tmp_path) as second:
            # The first thing asked, while the kernel is still being re-attested (JupyterLab's
            # first poll): the session is there, with its kernel, not dropped as "kernel gone".
            status, sessions = second.call("GET", "/api/sessions")
            assert status == 200, sessions
            assert [(x["id"], x["path"], x["kernel"]["id"]) for x in sessions] == [
                (session["id"], "nb.ipynb", kernel_id)
            ]
            db = tmp_path / "runtime" / "jupyter-cc-sessions.db"
            assert stat.S_IMODE(db.stat().st_mode) == 0o600
            state = wait_restored(second, kernel_id)
            assert state["confidential"] is True and state["verdict"]["passed"]  # type: ignore[index]
            assert state["evidence_sha256"] != before["evidence_sha256"]  # attested afresh
            assert state["agent"]["restored"] is True  # type: ignore[index]
            assert await ws_run(second, kernel_id, "print(x)") == ("ok", "42\n")
            status, _ = second.call("DELETE", f"/api/kernels/{kernel_id}")
            assert status == 204
        assert not record.exists()
        deadline = time.monotonic() + 15
        while agent.hello()["kernels"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agent.hello()["kernels"] == 0


async def test_a_kernel_whose_reattestation_fails_after_restart_is_not_restored_and_stopped(
    sshd: Sshd, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(simulated_policy_path().read_text())
    with resident_agent(sshd, tmp_path / "guest", orphan_timeout=4) as agent:
        name = install(tmp_path, sshd, agent.socket, policy)
        with server_at(tmp_path) as first:
            kernel_id = first.start_kernel(name)
            wait_restored(first, kernel_id)
            body = {"path": "nb.ipynb", "name": "nb.ipynb", "type": "notebook", "kernel": {"id": kernel_id}}
            assert first.call("POST", "/api/sessions", body=body)[0] == 201
            pid = next(
                p for p in procs.children(agent.process.pid) if procs.alive(p) and p not in agent_pool(agent)
            )
        policy.write_text('name = "tightened"\n')  # acceptance withdrawn while no server ran
        with server_at(tmp_path) as second:
            # Asked at once, the session list waits for the re-attestation: it fails, so the
            # notebook's session goes with its kernel instead of pointing at a refused one.
            assert second.call("GET", "/api/sessions") == (200, [])
            state = wait_restored(second, kernel_id)
            assert state["confidential"] is False
            assert "policy 'tightened' refused" in str(state["error"])
            status, body = second.call("GET", "/jupyter-cc/api/audit?limit=5")
            assert body["entries"][-1]["event"] == "kernel-refused"
            assert body["entries"][-1]["target"] == f"kernel {kernel_id}"
            status, _ = second.call("GET", f"/api/kernels/{kernel_id}")
            assert status == 404
        assert not (tmp_path / "runtime" / "jupyter-cc-kernels" / f"{kernel_id}.json").exists()
        deadline = time.monotonic() + 20
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not procs.alive(pid), "the kernel that failed re-attestation was left running"
        assert agent.hello()["kernels"] == 0


def agent_pool(agent) -> set[int]:  # type: ignore[no-untyped-def]
    """The prepared processes (the pool): no kernel yet, so no kernel.json in their folder."""
    pool = set()
    for pid in procs.children(agent.process.pid):
        from tests.support.resident import open_fds

        logs = [Path(fd).parent for fd in open_fds(pid) if fd.endswith("kernel.log")]
        if logs and not (logs[0] / "kernel.json").exists():
            pool.add(pid)
    return pool


def test_a_runtime_dir_that_cannot_hold_the_sessions_leaves_them_in_memory(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "jupyter-cc-sessions.db").write_text("not a database")
    with server_at(tmp_path) as server:
        status, sessions = server.call("GET", "/api/sessions")
        assert (status, sessions) == (200, [])
        assert "jupyter_cc: sessions stay in memory" in server.log.read_text()
    assert (runtime / "jupyter-cc-sessions.db").read_text() == "not a database"  # left as it was
