"""A dropped connection on the Jupyter server's event bus, as JupyterLab subscribes to it.

A real server runs a kernel in the resident guest agent behind a real sshd; the sshd child
serving the connection is killed while the listener is stopped (the CVM unreachable for a
while), then the listener goes on. The server's ``/api/events/subscribe`` websocket says
``reconnecting`` while the kernel's state says so too, then ``reconnected``; the kernel keeps
its variables. A reconnect that cannot attest says ``lost``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.provisioner import ConfidentialProvisioner, on_connection_state
from jupyter_cc.server.events import CONNECTION_SCHEMA_ID as SCHEMA_ID
from tests.integration.test_persist import install, server_at, ws_run
from tests.integration.test_server_ext import Server
from tests.support import procs
from tests.support.resident import resident_agent
from tests.support.sshd import Sshd, guest_sshd

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Sshd]:
    server = guest_sshd(tmp_path / "sshd")
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)  # never leave a stopped listener behind
    server.stop()


async def subscribe(server: Server) -> WebSocketClientConnection:
    url = server.url.replace("http://", "ws://") + "/api/events/subscribe"
    return await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {server.token}"}))


async def next_event(conn: WebSocketClientConnection, timeout: float) -> dict[str, Any]:
    """The next jupyter-cc event on the stream (other schemas' events are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no jupyter-cc event")
        raw = await asyncio.wait_for(conn.read_message(), timeout=left)
        if raw is None:
            raise ConnectionError("the event stream closed")
        event = json.loads(raw)
        if event.get("schema_id") == SCHEMA_ID:
            return dict(event)


def agent_state(server: Server, kernel_id: str) -> dict[str, Any]:
    status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel_id}")
    assert status == 200, body
    return dict(body["agent"] or {})


async def test_a_drop_and_its_reconnect_are_events_as_they_happen(guest: Sshd, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(simulated_policy_path().read_text())
    assert guest.process is not None
    listener = guest.process.pid
    with resident_agent(guest, tmp_path / "guest") as agent:
        name = install(tmp_path, guest, agent.socket, policy)
        with server_at(tmp_path) as server:
            kernel_id = server.start_kernel(name)
            assert await ws_run(server, kernel_id, "x = 41") == ("ok", "")
            events = await subscribe(server)
            try:
                # The CVM unreachable: its sshd takes no new connection, the open one is cut.
                os.kill(listener, signal.SIGSTOP)
                children = procs.children(listener)
                assert children, "no sshd child serves the server's connection"
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                event = await next_event(events, timeout=20)  # the restarter polls every 3 s
                assert event == {"schema_id": SCHEMA_ID, "kernel_id": kernel_id, "state": "reconnecting"}
                assert agent_state(server, kernel_id)["reconnecting"] is True
                os.kill(listener, signal.SIGCONT)
                event = await next_event(events, timeout=60)
                assert event == {"schema_id": SCHEMA_ID, "kernel_id": kernel_id, "state": "reconnected"}
                state = agent_state(server, kernel_id)
                assert state["reconnecting"] is False and state["reconnects"] == 1
            finally:
                os.kill(listener, signal.SIGCONT)
                events.close()
            assert await ws_run(server, kernel_id, "print(x + 1)") == ("ok", "42\n")


@pytest.mark.parametrize(
    ("outcome", "state"), [("ok", "reconnected"), ("refused", "lost"), ("raised", "lost")]
)
async def test_each_reconnect_ends_in_one_event(outcome: str, state: str) -> None:
    seen: list[tuple[str, str]] = []
    undo = on_connection_state(lambda kernel_id, what: seen.append((kernel_id, what)))
    prov = ConfidentialProvisioner(kernel_id="k1", kernel_spec=None, parent=None)

    def reconnect() -> bool:
        if outcome == "raised":
            raise RuntimeError("the reconnect broke")
        return outcome == "ok"

    prov._reconnect_blocking = reconnect  # type: ignore[method-assign]
    try:
        prov._start_reconnect()
        assert seen == [("k1", "reconnecting")]
        assert prov._reconnect is not None
        await asyncio.wait([prov._reconnect])
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert seen == [("k1", "reconnecting"), ("k1", state)]
    finally:
        undo()
    prov._start_reconnect()  # no listener now: nothing is told
    assert prov._reconnect is not None
    await asyncio.wait([prov._reconnect])
    assert len(seen) == 2
    if outcome == "raised":
        with pytest.raises(RuntimeError):
            prov._reconnect.result()


async def test_a_failing_listener_does_not_stop_the_others() -> None:
    seen: list[str] = []

    def broken(kernel_id: str, state: str) -> None:
        raise ValueError("broken listener")

    undo = [on_connection_state(broken), on_connection_state(lambda k, s: seen.append(s))]
    prov = ConfidentialProvisioner(kernel_id="k2", kernel_spec=None, parent=None)
    prov._reconnect_blocking = lambda: True  # type: ignore[method-assign]
    try:
        prov._start_reconnect()
        assert prov._reconnect is not None
        await asyncio.wait([prov._reconnect])
        await asyncio.sleep(0)
    finally:
        for u in undo:
            u()
    assert seen == ["reconnecting", "reconnected"]


def test_the_labextension_listens_for_the_schema_the_server_emits() -> None:
    state_ts = Path(__file__).resolve().parents[2] / "labextension" / "src" / "state.ts"
    assert f"export const CONNECTION_SCHEMA = '{SCHEMA_ID}';" in state_ts.read_text()


async def test_start_steps_are_events_of_their_own_schema_and_nothing_else() -> None:
    from types import SimpleNamespace

    from jupyter_events import EventLogger

    from jupyter_cc.provisioner import _start_listeners
    from jupyter_cc.server import events as cc_events

    logger = EventLogger()
    got: list[tuple[str, dict[str, Any]]] = []

    async def listen(logger: EventLogger, schema_id: str, data: dict[str, Any]) -> None:
        got.append((schema_id, data))

    stop = cc_events.install(SimpleNamespace(event_logger=logger, root_dir="/srv/notes"))
    try:
        logger.add_listener(schema_id=cc_events.START_SCHEMA_ID, listener=listen)
        # JPY_SESSION_NAME, as jupyter_server sets it: the notebook's path on disk.
        _start_listeners.tell("k3", "cc-lab", "/srv/notes/work/lab.ipynb", "starting the CVM lab")
        _start_listeners.tell("k3", "cc-lab", "/elsewhere/lab.ipynb", "outside the root")
        _start_listeners.tell("k3", "cc-lab", "", "no notebook")
        await asyncio.sleep(0.05)
    finally:
        stop()
    _start_listeners.tell("k3", "cc-lab", "/srv/notes/work/lab.ipynb", "after the stop: not emitted")
    await asyncio.sleep(0.05)
    expected = {"kernel_id": "k3", "kernel_name": "cc-lab"}
    assert got == [
        (cc_events.START_SCHEMA_ID, {**expected, "path": "work/lab.ipynb", "step": "starting the CVM lab"}),
        (cc_events.START_SCHEMA_ID, {**expected, "path": "", "step": "outside the root"}),
        (cc_events.START_SCHEMA_ID, {**expected, "path": "", "step": "no notebook"}),
    ]


@pytest.mark.parametrize(
    ("session_name", "root", "path"),
    [
        ("/srv/notes/lab.ipynb", "/srv/notes", "lab.ipynb"),
        ("/srv/notes/a/b/lab.ipynb", "/srv/notes/", "a/b/lab.ipynb"),
        ("/srv/notes/../secrets/x.ipynb", "/srv/notes", ""),
        ("/srv/notes-other/lab.ipynb", "/srv/notes", ""),
        ("/srv/notes", "/srv/notes", ""),
        ("lab.ipynb", "/srv/notes", ""),  # not a path on disk: nothing to match
        ("/srv/notes/lab.ipynb", "", ""),
    ],
)
def test_the_event_names_the_notebook_as_jupyterlab_does(session_name: str, root: str, path: str) -> None:
    from jupyter_cc.server.state import notebook_path

    assert (notebook_path(session_name, root) or "") == path


def test_the_labextension_listens_for_the_start_schema_too() -> None:
    from jupyter_cc.server.events import START_SCHEMA_ID

    state_ts = Path(__file__).resolve().parents[2] / "labextension" / "src" / "state.ts"
    assert f"export const START_SCHEMA = '{START_SCHEMA_ID}';" in state_ts.read_text()
