"""A real JupyterHub (and its configurable-http-proxy) on loopback, driven over its REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.sshd import free_port

ROOT = Path(__file__).resolve().parents[2]


def find_chp() -> str | None:
    """configurable-http-proxy: $JUPYTER_CC_CHP, PATH, or what `make test` installs in .ci/node."""
    for candidate in (
        os.environ.get("JUPYTER_CC_CHP"),
        shutil.which("configurable-http-proxy"),
        str(ROOT / ".ci" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Hub:
    """One Hub configuration in ``dir``; :meth:`start` and :meth:`stop` may be repeated."""

    dir: Path
    config: str
    token: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        path = self.dir / "jupyterhub_config.py"
        path.write_text(self.config.replace("@PROXY_PORT@", str(self.port)))
        return path

    def start(self, timeout: float = 60) -> Hub:
        config = self.write_config()
        with open(self.dir / "hub.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Hub exited: {self.log_tail()}")
            try:
                if self.request("GET", "/hub/api/").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the Hub did not answer within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it (servers stay up: cleanup_servers is False)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return (self.dir / "hub.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def request(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, timeout: float = 30
    ) -> Answer:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"token {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Answer(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read())

    def events(self, user: str, *, token: str, timeout: float = 120) -> Iterator[dict[str, Any]]:
        """The spawn progress events (server-sent events) until ready or failed."""
        req = urllib.request.Request(f"{self.url}/hub/api/users/{user}/server/progress")
        req.add_header("Authorization", f"token {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                yield event
                if event.get("ready") or event.get("failed"):
                    return


def hub_config(*, work: Path, token: str, spawner: dict[str, Any], chp: str, extra: str = "") -> str:
    """A jupyterhub_config.py for loopback tests (the proxy port is filled in by :class:`Hub`)."""
    lines = [
        "c = get_config()  # noqa",
        'c.JupyterHub.ip = "127.0.0.1"',
        "c.JupyterHub.port = @PROXY_PORT@",
        'c.JupyterHub.hub_ip = "127.0.0.1"',
        f"c.JupyterHub.hub_port = {free_port()}",
        f'c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"',
        f"c.ConfigurableHTTPProxy.command = [{chp!r}]",
        f"c.ConfigurableHTTPProxy.auth_token = {os.urandom(16).hex()!r}",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(work / 'hub.sqlite')!r}",
        f"c.JupyterHub.cookie_secret_file = {str(work / 'cookie_secret')!r}",
        "c.JupyterHub.cleanup_servers = False",
        'c.JupyterHub.authenticator_class = "dummy"',
        'c.Authenticator.allowed_users = {"alice", "bob"}',
        'c.JupyterHub.spawner_class = "jupyter_cc.hub.AttestedSSHSpawner"',
        "c.Spawner.http_timeout = 60",
        "# answer the spawn request at once (202), so the progress events can be read",
        'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}',
        "c.Spawner.start_timeout = 90",
        f'c.JupyterHub.services = [{{"name": "tester", "api_token": {token!r}}}]',
        "c.JupyterHub.load_roles = [{"
        '"name": "tester", "services": ["tester"], '
        '"scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens", "read:users"]}]',
    ]
    lines += [f"c.AttestedSSHSpawner.{name} = {value!r}" for name, value in spawner.items()]
    return "\n".join(lines) + "\n" + extra
