"""The :class:`AttestedSSHSpawner`: ``jupyterhub-singleuser`` in a confidential VM that attested first.

Pattern 1 of docs/jupyterhub.md, the whole server in the TEE. The spawner opens SSH to a CVM, has
the guest agent attest it under the configured policy (the same :class:`GuestTarget` /
:meth:`GuestLink.attest` code as the kernel provisioner), and only then starts
``jupyterhub-singleuser`` on 127.0.0.1 inside the CVM through the agent, its environment (the
Hub API token among it) sent over the agent channel. The server's port is forwarded to the Hub
host over the same SSH connection; the Hub API is forwarded back the other way
(``hub_api_tunnel``), so the CVM needs no route to the Hub.

Hub restarts (``c.JupyterHub.cleanup_servers = False``): the server outlives the agent's SSH
connection (see :mod:`jupyter_cc.guest.server`). :meth:`AttestedSSHSpawner.get_state` keeps the
host, server id, remote pid and port, forwarded ports and the evidence digest; after a restart
the first :meth:`~AttestedSSHSpawner.poll` reconnects, attests again under the current policy,
re-attaches to the server with the agent's ``attach`` request and forwards it anew
(:meth:`~AttestedSSHSpawner.get_url` gives the Hub the new local address). A CVM that cannot be
reached, no longer attests, or no longer runs the server is reported stopped.

Which profile (policy, hosts, TEE) a user gets is :mod:`jupyter_cc.hub.options`.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import paramiko
from jupyterhub.spawner import Spawner  # type: ignore[import-untyped]
from traitlets import Any as AnyTrait
from traitlets import Bool, Integer, List, Unicode, default

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.hub.options import apply_profile, options_form
from jupyter_cc.policy import Policy
from jupyter_cc.remote.attestation import Attestation, PolicyRejectedError
from jupyter_cc.remote.guest import GuestLink, GuestTarget
from jupyter_cc.remote.ssh import relay
from jupyter_cc.remote.target import CvmTargetTraits

__all__ = ["AttestedSSHSpawner", "SpawnRefusedError"]

SERVER_NAME = "jupyterhub-singleuser"


class SpawnRefusedError(CCError):
    """A spawn stopped before the user's server ran, with one sentence JupyterHub shows as is.

    JupyterHub shows ``jupyterhub_message`` (and ``jupyterhub_html_message`` on its pages) to the
    user instead of "Spawn failed" with a traceback in the log.
    """

    check = "spawn"

    def __init__(self, message: str, rules: tuple[str, ...] = ()) -> None:
        text = "\n".join([message, *(f"- {rule}" for rule in rules)])
        super().__init__(text)
        self.rules = rules
        self.jupyterhub_message = text
        self.jupyterhub_html_message = _html_lines(message, rules)

    def __str__(self) -> str:
        return self.message


def _html_lines(sentence: str, rules: tuple[str, ...]) -> str:
    """The sentence, then one list item per failed rule, escaped (the spawn page shows HTML)."""
    items = "".join(f"<li>{html.escape(rule)}</li>" for rule in rules)
    return html.escape(sentence) + (f"<ul>{items}</ul>" if items else "")


def _refusal(exc: CCError, host: str) -> tuple[str, tuple[str, ...]]:
    """A refusal's one sentence and its failed rules (a policy verdict lists them one by one)."""
    if isinstance(exc, PolicyRejectedError):
        rules = tuple(str(r) for r in exc.verdict.reasons)
        return (
            f"The confidential VM {host} was not used: policy '{exc.verdict.policy}' refused "
            f"the {exc.claims.kind} TEE.",
            rules,
        )
    return f"The confidential VM {host} was not used: {exc.sentence()}", ()


def _relay(channel: paramiko.Channel, address: tuple[str, int]) -> None:
    """Relay one reverse-forwarded connection from the guest to ``address`` on the Hub host."""
    try:
        sock = socket.create_connection(address, timeout=10)
    except OSError:
        channel.close()
        return
    sock.settimeout(None)
    relay(sock, channel, name="cc-hub-api-up")


def _hub_api_address(api_url: str) -> tuple[str, int]:
    parts = urlsplit(api_url)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all address names this host
        host = "127.0.0.1"
    return host, parts.port or (443 if parts.scheme == "https" else 80)


class AttestedSSHSpawner(Spawner, CvmTargetTraits):  # type: ignore[misc]
    """``jupyterhub-singleuser`` inside a confidential VM that attested under ``policy`` first.

    The CVM traits shared with the kernel provisioner come from
    :class:`~jupyter_cc.remote.target.CvmTargetTraits`; the SSH user and port are ``ssh_user``
    and ``ssh_port`` because ``Spawner`` already has ``user`` and ``port``.
    """

    remote_hosts = List(Unicode(), config=True, help="CVM addresses to choose from (see choose_remote_host)")
    remote_host_selector = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="callable(spawner, hosts) -> host (may be async); default: one host per user, stable",
    )
    ssh_port = Integer(22, config=True, help="the CVM's sshd port")
    ssh_user = Unicode("{username}", config=True, help="SSH user in the CVM; {username} is the Hub user")
    hub_api_tunnel = Bool(
        True,
        config=True,
        help="reach the Hub API from the CVM through the SSH connection (else set hub_connect_ip)",
    )
    profile_list = AnyTrait(
        [],
        config=True,
        help=(
            "list of {slug, display_name, default, policy, remote_hosts, tee, ...} the user picks "
            "from (user option 'profile'), or callable(spawner) returning one (may be async)"
        ),
    )

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 120

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # The Hub host's PATH or VIRTUAL_ENV mean nothing in the CVM: keep only the locale.
        return ["LANG", "LC_ALL"]

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable[[Any, Mapping[str, Any]], Any]:
        return apply_profile

    @default("options_form")
    def _default_options_form(self) -> Callable[[Any], Any]:
        return options_form

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link: GuestLink | None = None
        self._link_lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._starting = False
        self._abort = False
        self.attestation: Attestation | None = None
        self.attestation_error: str | None = None
        self._profile_applied = False
        self.remote_host = ""
        self.server_id: str | None = None
        self.pid: int | None = None
        self.remote_port: int | None = None
        self.forward_port: int | None = None
        self.hub_api_port: int | None = None
        self.evidence_sha256: str | None = None

    # --- state --------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.server_id:
            state.update(
                host=self.remote_host,
                ssh_port=self.ssh_port,
                server_id=self.server_id,
                pid=self.pid,
                remote_port=self.remote_port,
                forward_port=self.forward_port,
                hub_api_port=self.hub_api_port,
                evidence_sha256=self.evidence_sha256,
                policy=self.policy,
            )
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        if state.get("server_id"):
            self.remote_host = str(state.get("host") or "")
            self.ssh_port = int(state.get("ssh_port") or self.ssh_port)
            self.server_id = str(state["server_id"])
            self.pid = state.get("pid")
            self.remote_port = state.get("remote_port")
            self.forward_port = state.get("forward_port")
            self.hub_api_port = state.get("hub_api_port")
            self.evidence_sha256 = state.get("evidence_sha256")
            if state.get("policy") is not None:
                self.policy = str(state["policy"])

    def clear_state(self) -> None:
        super().clear_state()
        self.remote_host = ""
        self.server_id = self.pid = self.remote_port = None
        self.forward_port = self.hub_api_port = self.evidence_sha256 = None

    def attestation_state(self) -> dict[str, Any]:
        """The verdict for pages and extensions: claims, policy, evidence digest (no secrets)."""
        if self.attestation is not None:
            return self.attestation.to_json()
        return {"confidential": False, "error": self.attestation_error}

    # --- choices ------------------------------------------------------------------------

    def _expand(self, value: str) -> str:
        return value.format(username=self.user.name) if value else value

    async def choose_remote_host(self) -> str:
        """The CVM for this spawn: ``remote_host_selector`` if set, else a stable pick per user."""
        hosts = list(self.remote_hosts)
        if self.remote_host_selector is not None:
            chosen = self.remote_host_selector(self, hosts)
            if asyncio.iscoroutine(chosen):
                chosen = await chosen
            return str(chosen)
        if not hosts:
            raise SpawnRefusedError(
                "No confidential VM is configured: set c.AttestedSSHSpawner.remote_hosts."
            )
        digest = hashlib.sha256(self.user.name.encode()).digest()
        return hosts[int.from_bytes(digest[:4], "big") % len(hosts)]

    def _target(self, host: str) -> GuestTarget:
        return self.guest_target(host=host, port=self.ssh_port, user=self.ssh_user)

    def _policy(self) -> Policy:
        return Policy.load(Path(self.policy).expanduser()) if self.policy else Policy()

    # --- progress -----------------------------------------------------------------------

    def _event(self, progress: int, message: str, *, rules: tuple[str, ...] = ()) -> None:
        event: dict[str, Any] = {"progress": progress, "message": message}
        if rules:  # the pending page shows html_message: the sentence, then the rules as a list
            event["html_message"] = _html_lines(message.split("\n", 1)[0], rules)
            event["rules"] = list(rules)
        self._events.append(event)
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self) -> Any:
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if not self._starting:
                return
            await asyncio.sleep(0.1)

    # --- audit --------------------------------------------------------------------------

    def _audit(self, event: str, **fields: Any) -> None:
        from jupyter_cc import audit

        try:
            audit.record(event, purpose="jupyterhub-server", user=self.user.name, **fields)
        except CCError as exc:
            self.log.warning("%s: this attestation is not in the audit log: %s", self._log_name, exc)

    # --- start --------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        if not self._profile_applied:
            await apply_profile(self, self.user_options or {})
        self._events = []
        self._abort = False
        self.attestation = None
        self.attestation_error = None
        host = await self.choose_remote_host()
        env = self.get_env()
        args = list(self.get_args())
        self._starting = True
        try:
            future = asyncio.ensure_future(asyncio.to_thread(self._start_blocking, host, env, args))
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # The Hub gave up (start_timeout): whatever the thread still starts is torn down.
                self._abort = True
                future.add_done_callback(lambda _: self._teardown(stop_server=True))
                raise
        finally:
            self._starting = False

    def _start_blocking(self, host: str, env: dict[str, str], args: list[str]) -> tuple[str, int]:
        target = self._target(host)
        self._event(10, f"Connecting to the confidential VM {host} over SSH")
        try:
            policy = self._policy()
            link = target.open()
            with self._link_lock:
                self._link = link
            self._event(30, f"Attesting {host}: fresh evidence bound to this SSH connection")
            attestation = link.attest(policy)
        except CCError as exc:
            self.attestation_error = exc.diagnostics()
            self._teardown(stop_server=False)
            self._audit(
                "attest-refused", target=host, policy=self.policy or "default", error=exc.diagnostics()
            )
            sentence, rules = _refusal(exc, host)
            self._event(90, "\n".join([f"Refused: {sentence}", *(f"- {r}" for r in rules)]), rules=rules)
            raise SpawnRefusedError(sentence, rules) from None
        self._record_attestation(host, attestation)
        self._event(60, f"Verified under policy {attestation.verdict.policy}: {_describe(attestation)}")
        try:
            if self.hub_api_tunnel:
                self._tunnel_hub_api(link, env)
            self._event(70, f"Starting {SERVER_NAME} in the confidential VM")
            answer = link.agent.request(
                "start_server",
                argv_name=SERVER_NAME,
                args=args,
                env=env,
                timeout=float(self.start_timeout),
            )
            self.server_id = str(answer["server_id"])
            self.pid = int(answer["pid"])
            self.remote_port = int(answer["port"])
            assert link.ssh is not None
            self.forward_port = link.ssh.forward(self.remote_port)
        except (CCError, KeyError, ValueError, TypeError) as exc:
            self._teardown(stop_server=True)
            reason = exc.sentence() if isinstance(exc, CCError) else "the guest agent answered badly"
            raise SpawnRefusedError(
                f"The server did not start in the confidential VM {host}: {reason}"
            ) from None
        if self._abort:
            self._teardown(stop_server=True)
            raise SpawnRefusedError(f"The spawn was cancelled while the server started in {host}.")
        self._event(90, f"Server running in {host} (pid {self.pid}), forwarded over SSH")
        return "127.0.0.1", self.forward_port

    def _record_attestation(self, host: str, attestation: Attestation) -> None:
        self.remote_host = host
        self.attestation = attestation
        self.evidence_sha256 = attestation.bundle_sha256
        self._audit(
            "attest",
            target=host,
            passed=True,
            policy=attestation.verdict.policy,
            tee=attestation.claims.kind,
            simulated=attestation.claims.simulated,
            evidence_sha256=attestation.bundle_sha256,
        )

    def _tunnel_hub_api(self, link: GuestLink, env: dict[str, str]) -> None:
        """Forward a guest port to the Hub API over this SSH connection; point the env at it."""
        api_url = env.get("JUPYTERHUB_API_URL") or self.hub.api_url
        address = _hub_api_address(api_url)
        assert link.ssh is not None
        assert link.ssh.transport is not None
        transport = link.ssh.transport

        def handler(channel: paramiko.Channel, origin: Any, server: Any) -> None:
            threading.Thread(target=_relay, args=(channel, address), name="cc-hub-api", daemon=True).start()

        wanted = self.hub_api_port or 0
        try:
            port = transport.request_port_forward("127.0.0.1", wanted, handler=handler)
        except paramiko.SSHException:
            if not wanted:
                raise InputError(
                    f"the CVM's sshd refused to forward a port back to the Hub API ({api_url})",
                    hint="allow TCP forwarding in its sshd, or set hub_api_tunnel False and hub_connect_ip",
                ) from None
            self.log.warning(
                "%s: guest port %s for the Hub API is taken; the server cannot reach the Hub",
                self._log_name,
                wanted,
            )
            return
        self.hub_api_port = int(port)
        origin = urlsplit(api_url)
        for name, value in list(env.items()):
            parts = urlsplit(value) if value.startswith(("http://", "https://")) else None
            if parts is not None and parts.netloc == origin.netloc:
                env[name] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))

    # --- running ------------------------------------------------------------------------

    def _teardown(self, *, stop_server: bool) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is None:
            return
        if stop_server:
            try:
                link.agent.request("stop", now=False, timeout=30.0)
            except CCError as exc:
                self.log.warning("%s: %s", self._log_name, exc.diagnostics())
        link.close()  # bye: the agent stops whatever it still manages

    def _reattach_blocking(self) -> bool:
        """After a Hub restart: reconnect, attest again, re-attach to the server, forward it."""
        host, server_id = self.remote_host, self.server_id
        if not host or not server_id:
            return False
        try:
            link = self._target(host).open()
        except CCError as exc:
            self.log.warning("%s: cannot reach %s again: %s", self._log_name, host, exc.diagnostics())
            return False
        try:
            attestation = link.attest(self._policy())
            self._record_attestation(host, attestation)
            answer = link.agent.request("attach", server_id=server_id)
            self.pid = int(answer["pid"])
            self.remote_port = int(answer["port"])
            if self.hub_api_tunnel and self.hub_api_port:
                self._tunnel_hub_api(link, {})
            assert link.ssh is not None
            self.forward_port = link.ssh.forward(self.remote_port)
        except (CCError, KeyError, ValueError, TypeError) as exc:
            reason = exc.diagnostics() if isinstance(exc, CCError) else "the guest agent answered badly"
            self.attestation_error = reason
            self.log.warning("%s: not re-attached to %s: %s", self._log_name, host, reason)
            # Nothing more is asked of it (no bye): the agent exits and leaves the server as it is.
            _drop(link)
            return False
        with self._link_lock:
            self._link = link
        self.log.info("%s: re-attached to server %s in %s", self._log_name, server_id, host)
        return True

    async def poll(self) -> int | None:
        if not self.server_id:
            return 0
        link = self._link
        if link is None or link.agent.closed:
            if self._starting:
                return None
            if link is not None:
                self._teardown(stop_server=False)
            if not await asyncio.to_thread(self._reattach_blocking):
                return 1  # the CVM is lost, no longer attests, or no longer runs the server
            link = self._link
            assert link is not None
        try:
            answer = await asyncio.to_thread(link.agent.request, "poll")
        except CCError as exc:
            self.log.warning("%s: lost the guest agent: %s", self._log_name, exc.diagnostics())
            await asyncio.to_thread(self._teardown, stop_server=False)  # already closed: no bye
            return None if await asyncio.to_thread(self._reattach_blocking) else 1
        code = answer.get("exit_code")
        return None if code is None else int(code)

    async def get_url(self) -> str:
        if self.forward_port:
            return f"http://127.0.0.1:{self.forward_port}{self.server.base_url}"
        return str(await super().get_url())

    async def stop(self, now: bool = False) -> None:
        if self._link is None and self.server_id and not self._starting:
            # After a Hub restart nothing is connected yet: attest again before asking anything.
            await asyncio.to_thread(self._reattach_blocking)
        await asyncio.to_thread(self._teardown, stop_server=True)
        self._profile_applied = False
        self.clear_state()


def _drop(link: GuestLink) -> None:
    """Close a connection to a guest that did not attest without any request (no bye)."""
    link.agent.closed = True
    link.close()


def _describe(attestation: Attestation) -> str:
    claims = attestation.claims
    product = claims.get("product") or claims.get("cpu_product") or claims.get("product_name")
    text = claims.kind + (f" on {product}" if product else "")
    if claims.simulated:
        text += f" ({SIMULATED_BANNER})"
    return text
