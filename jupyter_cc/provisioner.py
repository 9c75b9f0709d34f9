"""``confidential-provisioner``: start ipykernel in a confidential VM, only after it attested.

A :class:`~jupyter_client.provisioning.KernelProvisionerBase` that KernelManager drives like any
other (design section 6). ``launch_kernel``:

1. opens SSH to the CVM (transport ``ssh``; host key checked against known_hosts, an unknown key
   accepted only provisionally) or starts the agent as a local process (transport ``local``,
   when the Jupyter server itself runs in the TEE);
2. starts the guest agent and asks it for evidence bound to a fresh nonce and the host key seen
   in this handshake;
3. verifies and appraises it under the configured policy; any failure stops here, and nothing
   is started: a policy verdict as one short sentence then each failed rule on its own line
   (:func:`refusal_message`), any other failed check as its one sentence. The refusal is kept
   (:func:`recent_refusals`) for the server extension, since no kernel exists to ask later;
4. has the agent create the HMAC key and start ipykernel on 127.0.0.1 inside the guest, and
   forwards the five ports over the same SSH connection.

``poll`` asks the agent over its open channel (no new SSH session), interrupts travel as
messages (``interrupt_mode: message``), and ``cleanup`` leaves no remote process, connection file
or local listener behind.

When a resident guest agent listens on ``agent_socket`` (``jupyter-cc guest serve``), step 2
opens a channel to it instead of starting Python, and the kernel outlives the connection: if the
connection drops, ``poll`` keeps answering "running" while it reconnects with backoff, attests
again with a fresh nonce, takes the kernel back (``reattach``) and moves the local forwards'
listeners to the new connection, so the kernel's clients keep their ports and the notebook its
variables. The guest keeps the orphan for ``orphan_timeout`` seconds; past that, or if the new
attestation fails, the kernel is reported dead. Configure it in kernel.json::

    "metadata": {"kernel_provisioner": {"provisioner_name": "confidential-provisioner",
                  "config": {"host": "cvm.example", "policy": "/etc/jupyter-cc/prod.toml"}}}
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from tornado.web import HTTPError
from traitlets import Bool, CaselessStrEnum, Enum, Float, Integer, Unicode

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.errors import CCError
from jupyter_cc.guest.kernel import PORT_NAMES
from jupyter_cc.guest.protocol import AgentError
from jupyter_cc.policy import Policy, Reason
from jupyter_cc.remote import curve, records
from jupyter_cc.remote.attestation import Attestation, PolicyRejectedError
from jupyter_cc.remote.guest import GuestLink, GuestTarget
from jupyter_cc.remote.ssh import SshError
from jupyter_cc.remote.target import CvmTargetTraits

__all__ = [
    "REFUSALS_KEPT",
    "ConfidentialProvisioner",
    "KernelRefusedError",
    "Refusal",
    "detach_all",
    "recent_refusals",
    "refusal_message",
]

NOT_STARTED = "Confidential kernel not started"

#: How many refusals this process keeps for the server extension (the oldest go first).
REFUSALS_KEPT = 50


class _DialogText(str):
    """A refusal's text whose ``repr`` keeps its newlines.

    jupyter_server quotes the error of a kernel *change* (``PATCH /api/sessions/<id>``) as
    ``repr(str(error))``, which would show the failed rules as one line joined by literal
    ``\\n``; quoting without escaping keeps one rule per line in the dialog on that path too.
    """

    def __repr__(self) -> str:
        return f'"{str.__str__(self)}"'


def refusal_message(exc: CCError) -> tuple[str, tuple[Reason, ...]]:
    """The dialog text of a refused confidential kernel, and the failed rules it lists.

    A policy verdict is a short first sentence naming the policy and the TEE, then each failed
    rule on its own line (name, expected, observed), so JupyterLab's dialog shows them all::

        Confidential kernel not started: policy 'default' refused the sim-snp TEE.
        - allow_simulated: expected a hardware TEE (...), observed SIMULATED evidence (...)

    Any other failed check keeps its one sentence (:meth:`CCError.sentence`).
    """
    if isinstance(exc, PolicyRejectedError):
        rules = tuple(exc.verdict.reasons)
        first = f"{NOT_STARTED}: policy '{exc.verdict.policy}' refused the {exc.claims.kind} TEE."
        return "\n".join([first, *(f"- {rule}" for rule in rules)]), rules
    return f"{NOT_STARTED}: {exc.sentence()}", ()


@dataclass(frozen=True)
class Refusal:
    """A confidential kernel that was refused at start: kept although no kernel exists.

    ``message`` is the dialog's text, ``sentence`` its first line; ``rules`` the failed policy
    rules (empty when the failure was not a policy verdict). Nothing here is secret: the
    kernel's environment is never kept, only the notebook path jupyter_server gave it.
    """

    kernel_id: str
    kernel_name: str
    display_name: str
    refused_at: datetime
    check: str
    message: str
    rules: tuple[Reason, ...] = ()
    policy: str | None = None
    evidence_kind: str | None = None
    simulated: bool = False
    claims: dict[str, Any] | None = None
    #: The session's file (``JPY_SESSION_NAME``, a filesystem path), if jupyter_server gave one.
    session_path: str | None = field(default=None, compare=False)

    @property
    def sentence(self) -> str:
        return self.message.split("\n", 1)[0]

    def to_json(self) -> dict[str, Any]:
        """The REST API's view (``session_path`` is left to the caller, who knows the root)."""
        return {
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "display_name": self.display_name,
            "refused_at": self.refused_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "check": self.check,
            "sentence": self.sentence,
            "message": self.message,
            "rules": [{"rule": r.rule, "expected": r.expected, "observed": r.observed} for r in self.rules],
            "policy": self.policy,
            "evidence_kind": self.evidence_kind,
            "simulated": self.simulated,
            "claims": self.claims,
        }


_refusals: deque[Refusal] = deque(maxlen=REFUSALS_KEPT)
_refusals_lock = threading.Lock()


#: The running provisioners with a record, which a server that exits leaves running (detach_all).
_live: weakref.WeakSet[ConfidentialProvisioner] = weakref.WeakSet()


def detach_all() -> int:
    """The Jupyter server is exiting: detach every recorded kernel instead of stopping it (the
    server extension calls this before jupyter_server shuts the kernels down). Returns how many."""
    kept = list(_live)
    for provisioner in kept:
        provisioner.detach()
    _live.clear()
    return len(kept)


class _Listeners:
    """Callables told of a kernel's changes, for the server extension's events; one that fails
    is logged and never reaches the kernel."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: list[Callable[..., None]] = []

    def add(self, listener: Callable[..., None]) -> Callable[[], None]:
        self._items.append(listener)

        def remove() -> None:
            if listener in self._items:
                self._items.remove(listener)

        return remove

    def tell(self, *args: str) -> None:
        for listener in list(self._items):
            try:
                listener(*args)
            except Exception:  # a listener's failure must not touch the kernel
                logging.getLogger("jupyter_cc").exception("%s listener failed for %s", self.what, args[0])


_connection_listeners = _Listeners("connection")
_start_listeners = _Listeners("start step")


def on_connection_state(listener: Callable[[str, str], None]) -> Callable[[], None]:
    """Call ``listener(kernel_id, state)`` on the event loop at each change of a kernel's
    connection to its CVM: ``reconnecting`` (it dropped), then ``reconnected`` (re-attested,
    taken back) or ``lost``. Returns the undo.

    The server extension puts these on jupyter_server's event bus, so JupyterLab shows a drop
    when it happens rather than at its next poll.
    """
    return _connection_listeners.add(listener)


def on_start_step(listener: Callable[[str, str, str, str], None]) -> Callable[[], None]:
    """Call ``listener(kernel_id, kernel_name, session_name, step)`` on the event loop at each
    step of reaching a kernel's CVM before it attests (an Azure CVM started from deallocated
    takes minutes); ``session_name`` is the kernel's ``JPY_SESSION_NAME`` (the notebook's path on
    disk, "" without one), by which JupyterLab, which learns the kernel id only once the start
    is over, finds its kernel. Returns the undo.
    """
    return _start_listeners.add(listener)


def recent_refusals() -> list[Refusal]:
    """The refusals of this process (the Jupyter server's), newest first."""
    with _refusals_lock:
        return list(reversed(_refusals))


def _keep(refusal: Refusal) -> None:
    with _refusals_lock:
        _refusals.append(refusal)


def _retryable(exc: CCError) -> bool:
    """Whether a reconnect failure is the network's (try again) rather than the guest's answer."""
    if isinstance(exc, SshError):
        return True
    text = exc.message
    return exc.check == "guest agent" and (
        "closed the connection" in text
        or "lost the" in text
        or "no resident" in text
        or "did not answer" in text
    )


class KernelRefusedError(HTTPError, CCError):
    """A confidential kernel that was not started, with the text saying why.

    A :class:`~jupyter_cc.errors.CCError` like every refusal, and also a tornado ``HTTPError``:
    jupyter_server passes an HTTPError's message through to JupyterLab's "Error Starting Kernel"
    dialog (any other exception becomes "Unhandled error"), so the refusal is raised as one.
    The message is :func:`refusal_message`'s: one sentence, then any failed rule on its own line.
    """

    check = "kernel"

    def __init__(self, message: str, rules: tuple[Reason, ...] = ()) -> None:
        text = _DialogText(message)
        CCError.__init__(self, text)
        self.rules = rules
        # HTTPError's own init last: it sets ``args`` to () so tornado never %-formats the message.
        HTTPError.__init__(self, 500, log_message=text, reason=NOT_STARTED)

    def __str__(self) -> str:
        return self.message


# KernelProvisionerMeta derives from MetaHasTraits at run time (via type(LoggingConfigurable)), which
# mypy cannot see.
class ConfidentialProvisioner(KernelProvisionerBase, CvmTargetTraits):  # type: ignore[metaclass]
    """Kernels in attested confidential VMs. Every kernel.json ``config`` key is a traitlet.

    The traits shared with the Hub spawner (key files, policy, TEE choice...) come from
    :class:`~jupyter_cc.remote.target.CvmTargetTraits`; ``host``, ``port`` and ``user`` are
    declared here under the kernel.json names installed kernelspecs use.
    """

    transport = Enum(
        ["ssh", "agent", "local"],
        default_value="ssh",
        config=True,
        help="ssh to a CVM, agent (the guest agent's own SSH port in a pod, no sshd), or local (in the TEE)",
    )
    host = Unicode("", config=True, help="the CVM's address (transport ssh)")
    port = Integer(22, config=True, help="its sshd port")
    user = Unicode("", config=True, help="the SSH user (default: the local user name)")
    kernel_python = Unicode(
        "", config=True, help="Python on the CVM that runs ipykernel (default: remote_python)"
    )
    launch_timeout = Float(
        60.0, config=True, help="seconds for connect, attestation and kernel start together"
    )
    reattest_interval = Float(0.0, config=True, help="seconds between re-attestations while running (0: off)")
    cwd_in_guest = Bool(False, config=True, help="pass the notebook's working directory to the guest kernel")
    azure_profile = Unicode(
        "", config=True, help="a profile whose Azure CVM is started first if deallocated (docs/azure.md)"
    )
    persist = Bool(
        True,
        config=True,
        help="record the kernel so a restarted Jupyter server takes it back (resident agent only)",
    )
    orphan_timeout = Float(
        600.0,
        config=True,
        help="seconds a resident agent keeps the kernel after its connection drops, to reconnect (0: stop)",
    )
    transport_encryption = CaselessStrEnum(
        list(curve.MODES),
        default_value="off",
        config=True,
        help="CurveZMQ on the kernel's ports with its server key made in the TEE and bound into the "
        "evidence: off, auto (when guest and server support it) or required (refuse the kernel otherwise)",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link: GuestLink | None = None
        self._pid: int | None = None
        self._exit_code: int | None = None
        self._restart_requested = False
        self._reattest_task: asyncio.Task[None] | None = None
        self._guest_kernel_id: str | None = None
        self._detached = False
        self._orphan_timeout = 0.0  # what the guest agreed to keep an orphan for
        self._agent: dict[str, Any] | None = None
        self._reconnect: asyncio.Future[bool] | None = None
        self._curve_bound: bytes | None = None  # the CurveZMQ public key the kernel must present
        self.reconnects = 0
        self.attestation: Attestation | None = None
        self.attestation_error: str | None = None

    # --- what other parts read ------------------------------------------------------------

    def attestation_state(self) -> dict[str, Any]:
        """The verdict and claims for the server extension and magics (design section 6.6)."""
        if self.attestation is not None:
            reconnecting = self._reconnect is not None and not self._reconnect.done()
            agent = (
                {
                    **self._agent,
                    "reconnects": self.reconnects,
                    "reconnecting": reconnecting,
                    "curve": self._curve_bound is not None,  # CurveZMQ with the attested key
                }
                if self._agent
                else None
            )
            return {**self.attestation.to_json(), "agent": agent}
        return {"confidential": False, "error": self.attestation_error}

    async def reattest(self) -> Attestation:
        """Re-attest the running kernel now (fresh nonce, same link) and keep the result.

        For the server extension's "re-attest" button. It fails closed like the periodic
        re-attestation: if the TEE no longer attests, ``attestation`` is cleared,
        ``attestation_error`` holds the sentence and the kernel is stopped before this raises.

        Raises:
            CCError: the kernel is not running (nothing is changed), or the re-attestation
                failed (the kernel was stopped).
        """
        if self._link is None or self._pid is None:
            raise CCError("the confidential kernel is not running, so it cannot be re-attested")
        try:
            attestation = await asyncio.to_thread(self._attest_now)
        except Exception as exc:
            failure = (
                exc
                if isinstance(exc, CCError)
                else CCError(f"re-attestation failed: unexpected {exc.__class__.__name__} ({exc})")
            )
            self.attestation = None
            self.attestation_error = failure.diagnostics()
            self.log.error("re-attestation failed, stopping the kernel: %s", failure.diagnostics())
            await self.kill()
            if failure is exc:
                raise
            raise failure from exc
        self.attestation = attestation
        self.attestation_error = None
        return attestation

    # --- KernelProvisionerBase ------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._pid is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is not None:
            # Ports and key come from the guest: nothing is picked or written locally first.
            km.cache_ports = False
        kwargs = await super().pre_launch(**kwargs)
        kwargs.setdefault("cmd", ["jupyter-cc-guest-kernel"])
        if self.azure_profile:  # outside launch_timeout: starting a deallocated CVM takes minutes
            loop = asyncio.get_running_loop()
            kernel_id, kernel_name = str(self.kernel_id), str(getattr(km, "kernel_name", "") or "")
            session_name = str((kwargs.get("env") or {}).get("JPY_SESSION_NAME", ""))

            def step(line: str) -> None:  # on the worker thread; listeners run on the loop
                self.log.info("confidential kernel %s: %s", kernel_id, line)
                loop.call_soon_threadsafe(_start_listeners.tell, kernel_id, kernel_name, session_name, line)

            await asyncio.to_thread(self._reach_azure_cvm, step)
        return kwargs

    def _reach_azure_cvm(self, step: Callable[[str], None]) -> None:
        """Start the profile's Azure CVM if it is stopped or deallocated, and aim at its address,
        pinned known_hosts and guest Python; attestation then runs as for any CVM. ``step`` is
        told each step of the start."""
        from jupyter_cc.azure.connect import running_profile
        from jupyter_cc.profiles import get_profile

        try:
            profile = running_profile(get_profile(self.azure_profile), progress=step)
        except CCError as exc:
            raise KernelRefusedError(f"{NOT_STARTED}: {exc.diagnostics()}") from None
        self.host = profile.host or self.host
        self.known_hosts = profile.known_hosts or self.known_hosts
        self.remote_python = profile.python or self.remote_python

    def _kernel_env(self, env: dict[str, str]) -> dict[str, str]:
        # Only the kernelspec's own variables go to the guest: the server's environment (tokens,
        # cloud credentials) never leaves this machine.
        spec_env = dict(self.kernel_spec.env or {}) if self.kernel_spec else {}
        return {name: str(env.get(name, value)) for name, value in spec_env.items()}

    def _target(self) -> GuestTarget:
        return self.guest_target(
            transport=self.transport,
            host=self.host,
            port=self.port,
            user=self.user,
            kernel_python=self.kernel_python,
        )

    def _attest_now(self) -> Attestation:
        assert self._link is not None
        return self._link.attest(Policy.load(self.policy) if self.policy else Policy())

    def _launch_blocking(self, env: dict[str, str], cwd: str | None) -> KernelConnectionInfo:
        record = records.load(str(self.kernel_id)) if self.persist and self.kernel_id else None
        if record is not None:
            return self._restore_blocking(record)
        self._link = self._target().open()
        self._link.curve = curve.wanted(self.transport_encryption)
        self.attestation = self._attest_now()
        self._link.curve = False  # re-attestations bind no new kernel key
        self._curve_bound = self.attestation.curve_server_key
        curve.require_bound(self.transport_encryption, self._curve_bound)  # before any start
        self.log.info(
            "confidential kernel %s: %s verified under policy %s%s",
            self.kernel_id,
            self.attestation.claims.kind,
            self.attestation.verdict.policy,
            f" ({SIMULATED_BANNER})" if self.attestation.claims.simulated else "",
        )
        extra = {"orphan_timeout": self.orphan_timeout} if self._link.resident else {}
        answer = self._link.agent.request(
            "start", env=self._kernel_env(env), cwd=cwd, timeout=self.launch_timeout, **extra
        )
        kernel_id = answer.get("kernel_id")
        self._guest_kernel_id = kernel_id if isinstance(kernel_id, str) and self._link.resident else None
        kept = answer.get("orphan_timeout")
        self._orphan_timeout = float(kept) if isinstance(kept, int | float) else 0.0
        pool = answer.get("pool")
        self._agent = {
            "resident": self._link.resident,
            "pool": pool if isinstance(pool, dict) else None,
            "warm": bool(answer.get("warm")),
        }
        info = self._forwarded(answer)
        self._save_record()
        return info

    def _restore_blocking(self, record: records.KernelRecord) -> KernelConnectionInfo:
        """Take back a kernel a previous Jupyter server left running (``persist``): connect,
        attest afresh, ``reattach`` by the guest's id, forward its ports anew."""
        records.forget(record.kernel_id)  # kept again below only if the kernel is back
        self._link = self._target().open()
        if not self._link.resident:
            raise CCError("no resident guest agent answers on the CVM, so the kernel cannot be taken back")
        self.attestation = self._attest_now()
        answer = self._link.agent.request("reattach", kernel_id=record.guest_kernel_id)
        self.log.info("confidential kernel %s re-attached after a server restart", self.kernel_id)
        self._guest_kernel_id = record.guest_kernel_id
        self._orphan_timeout = record.orphan_timeout
        self._curve_bound = curve.z85_bytes(record.curve_publickey)
        self._agent = {"resident": True, "pool": None, "warm": False, "restored": True}
        info = self._forwarded(answer)
        self._save_record()
        return info

    def _save_record(self) -> None:
        """Record the kernel for a restarted server (resident agent and ``persist`` only)."""
        if not (self.persist and self._guest_kernel_id and self._orphan_timeout > 0 and self.kernel_id):
            return
        kernel_name = str(getattr(self.parent, "kernel_name", "") or "")
        record = records.KernelRecord(
            str(self.kernel_id),
            kernel_name,
            self._guest_kernel_id,
            self._orphan_timeout,
            curve_publickey=curve.z85_public(self._curve_bound),
        )
        try:
            records.save(record)
        except (OSError, CCError) as exc:
            self.log.warning(
                "confidential kernel %s will not survive a server restart (%s)", self.kernel_id, exc
            )
            return
        _live.add(self)

    def detach(self) -> None:
        """The Jupyter server is exiting: leave the kernel running in the guest (an orphan for its
        timeout), keep its record, close the connection without ``bye`` and report it gone, so
        the shutdown that follows sends nothing to the guest."""
        link, self._link = self._link, None
        self._detached = True
        if link is not None:
            link.abandon()
            if link.ssh is not None:
                link.ssh.close()
        self._pid = None
        self._exit_code = 0

    def _forwarded(self, answer: dict[str, Any]) -> KernelConnectionInfo:
        """The kernel's connection info for the client, its five ports forwarded over SSH."""
        assert self._link is not None
        remote = answer.get("connection") or {}
        ports: dict[str, int] = {}
        for name in PORT_NAMES:
            port = remote.get(name)
            if not isinstance(port, int):
                raise CCError(f"the guest agent returned no {name}")
            ports[name] = self._link.ssh.forward(port) if self._link.ssh is not None else port
        info: KernelConnectionInfo = {
            "ip": "127.0.0.1",
            "transport": "tcp",
            # KernelManager compares keys as bytes (LocalProvisioner returns bytes too).
            "key": str(remote.get("key", "")).encode(),  # type: ignore[typeddict-item]
            "signature_scheme": str(remote.get("signature_scheme", "hmac-sha256")),
            "kernel_name": self.kernel_spec.display_name if self.kernel_spec else "",
            "shell_port": ports["shell_port"],
            "iopub_port": ports["iopub_port"],
            "stdin_port": ports["stdin_port"],
            "control_port": ports["control_port"],
            "hb_port": ports["hb_port"],
        }
        # Only a key pair whose public key the accepted evidence bound (design section 6).
        info.update(curve.client_keys(self.transport_encryption, bound=self._curve_bound, remote=remote))  # type: ignore[typeddict-item]
        self._pid = int(answer.get("pid", 0)) or None
        return info

    def _refused(self, check: str, message: str, env: dict[str, str], exc: CCError | None = None) -> None:
        """Keep the refusal for the server extension (no kernel exists to ask later) and record
        it in the audit log with the failed rules, so the attestation panel can say why."""
        km = self.parent
        rejected = exc if isinstance(exc, PolicyRejectedError) else None
        session = env.get("JPY_SESSION_NAME")
        refusal = Refusal(
            kernel_id=str(self.kernel_id or ""),
            kernel_name=str(getattr(km, "kernel_name", "") or ""),
            display_name=self.kernel_spec.display_name if self.kernel_spec else "",
            refused_at=datetime.now(timezone.utc),
            check=check,
            message=message,
            rules=tuple(rejected.verdict.reasons) if rejected else (),
            policy=rejected.verdict.policy if rejected else None,
            evidence_kind=rejected.claims.kind if rejected else None,
            simulated=rejected.claims.simulated if rejected else False,
            claims=rejected.claims.to_json() if rejected else None,
            session_path=session if isinstance(session, str) and session else None,
        )
        _keep(refusal)
        self._audit_refusal(refusal)

    def _audit_refusal(self, refusal: Refusal) -> None:
        """One ``kernel-refused`` audit entry; a log that cannot be written is a warning only."""
        from jupyter_cc.audit import record

        claims = refusal.claims or {}
        try:
            record(
                "kernel-refused",
                target=f"kernel {refusal.kernel_id}",
                via="jupyter-server",
                passed=False,
                kernel_name=refusal.kernel_name,
                check=refusal.check,
                policy=refusal.policy,
                tee=claims.get("tee"),
                evidence_kind=refusal.evidence_kind,
                simulated=refusal.simulated,
                error=refusal.sentence,
                rules=[
                    {"rule": r.rule, "expected": r.expected, "observed": r.observed} for r in refusal.rules
                ],
            )
        except CCError as exc:
            self.log.warning("jupyter_cc: refusal not in the audit log: %s", exc.diagnostics())

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = kwargs.get("env") or {}
        cwd = kwargs.get("cwd") if self.cwd_in_guest else None
        self.attestation = None
        self.attestation_error = None
        self._exit_code = None
        try:
            info = await asyncio.wait_for(
                asyncio.to_thread(self._launch_blocking, env, cwd), timeout=self.launch_timeout
            )
        except asyncio.TimeoutError:
            self._teardown()
            message = (
                f"{NOT_STARTED}: connect, attest and start took more than "
                f"{self.launch_timeout:g} seconds; raise launch_timeout or check the CVM."
            )
            self.attestation_error = message
            self._refused("timeout", message, env)
            raise KernelRefusedError(message) from None
        except CCError as exc:
            self.attestation_error = exc.diagnostics()
            self._teardown()
            self.log.error("confidential kernel refused: %s", exc.diagnostics())
            message, rules = refusal_message(exc)
            self._refused(exc.check, message, env, exc)
            raise KernelRefusedError(message, rules) from None
        except Exception as exc:
            self._teardown()
            message = f"{NOT_STARTED}: unexpected {exc.__class__.__name__} ({exc})"
            self._refused("kernel", message, env)
            raise KernelRefusedError(message) from exc
        self.connection_info = info
        if self.reattest_interval > 0:
            self._reattest_task = asyncio.ensure_future(self._reattest_loop())
        return info

    async def _reattest_loop(self) -> None:
        while self._pid is not None:
            await asyncio.sleep(self.reattest_interval)
            if self._link is None or self._pid is None:
                return
            try:
                await self.reattest()
            except CCError:
                return  # reattest() already stopped the kernel: a TEE that no longer attests is not trusted

    async def _request(self, op: str, **fields: Any) -> dict[str, Any] | None:
        agent = self._link.agent if self._link is not None else None
        if agent is None or agent.closed:
            return None
        try:
            return await asyncio.to_thread(agent.request, op, **fields)
        except CCError as exc:
            self.log.warning("confidential kernel %s: %s", self.kernel_id, exc.diagnostics())
            return None

    def _can_reconnect(self) -> bool:
        return self._guest_kernel_id is not None and self._orphan_timeout > 0

    def _reconnect_pending(self) -> bool | None:
        """None: no reconnect under way; True: one is (the kernel counts as running); False: it
        failed (the kernel is lost)."""
        if self._reconnect is None:
            return None
        if not self._reconnect.done():
            return True
        ok = self._reconnect.result()
        self._reconnect = None
        return bool(ok)

    def _start_reconnect(self) -> None:
        self.log.warning("confidential kernel %s: connection lost; reconnecting", self.kernel_id)
        kernel_id = str(self.kernel_id)
        self._reconnect = asyncio.ensure_future(asyncio.to_thread(self._reconnect_blocking))

        def done(future: asyncio.Future[bool]) -> None:
            ok = not future.cancelled() and future.exception() is None and future.result()
            _connection_listeners.tell(kernel_id, "reconnected" if ok else "lost")

        self._reconnect.add_done_callback(done)
        _connection_listeners.tell(kernel_id, "reconnecting")

    async def poll(self) -> int | None:
        if self._pid is None:
            return self._exit_code if self._exit_code is not None else 0
        pending = self._reconnect_pending()
        if pending is False:
            return self._lost()
        if self._reconnect is not None:
            return None  # reconnecting: JupyterLab keeps the kernel, its clients wait
        if self._link is not None and not self._link.alive and self._can_reconnect():
            self._start_reconnect()
            return None
        answer = await self._request("poll")
        if answer is None:
            if self._can_reconnect() and self._pid is not None:
                self._start_reconnect()
                return None
            return self._lost()
        code = answer.get("exit_code")
        if code is not None:
            self._exit_code = int(code)
            self._pid = None
            return int(code)
        return None

    def _lost(self) -> int:
        """The agent or the connection is gone for good: the kernel is unreachable, so dead."""
        self._exit_code = 1
        self._pid = None
        return 1

    def _reconnect_blocking(self) -> bool:
        """Reconnect to the resident agent with backoff, re-attest, reattach, re-forward.

        Tries until the guest would have stopped the orphan (``orphan_timeout`` after the loss).
        Connection failures are retried; a failed attestation or a kernel the guest no longer
        holds ends it (fail closed: ``attestation`` is cleared and ``attestation_error`` says why).
        """
        old = self._link
        if old is None:
            return False
        old.abandon()
        deadline = time.monotonic() + self._orphan_timeout
        delay = 0.25
        while self._pid is not None:
            try:
                self._reattach(old)
                return True
            except (SshError, AgentError) as exc:
                if not _retryable(exc):
                    return self._reconnect_failed(exc)
                self.log.info(
                    "confidential kernel %s: reconnect failed (%s)", self.kernel_id, exc.diagnostics()
                )
            except CCError as exc:
                return self._reconnect_failed(exc)
            if time.monotonic() + delay > deadline:
                return self._reconnect_failed(
                    CCError("the CVM could not be reached again before the kernel's orphan timeout")
                )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        return False

    def _reattach(self, old: GuestLink) -> None:
        """One reconnect attempt: open, attest afresh (policy re-read), take the kernel back."""
        link = self._target().open()
        try:
            if not link.resident:
                raise AgentError("no resident guest agent answers on the CVM any more")
            attestation = link.attest(Policy.load(self.policy) if self.policy else Policy())
            link.agent.request("reattach", kernel_id=self._guest_kernel_id)
        except BaseException:
            if link.resident:
                link.abandon()  # never 'bye' to an agent that did not attest: it may not be ours
            else:
                link.close()
            raise
        if link.ssh is not None and old.ssh is not None:
            link.ssh.adopt_forwards(old.ssh)
        self._link = link
        self.attestation = attestation
        self.attestation_error = None
        self.reconnects += 1
        self.log.info("confidential kernel %s: reconnected and re-attested", self.kernel_id)

    def _reconnect_failed(self, exc: CCError) -> bool:
        self.attestation = None
        self.attestation_error = exc.diagnostics()
        self.log.error("confidential kernel %s lost: %s", self.kernel_id, exc.diagnostics())
        return False

    async def wait(self) -> int | None:
        while await self.poll() is None:
            await asyncio.sleep(0.1)
        return self._exit_code

    async def send_signal(self, signum: int) -> None:
        await self._request("signal", signum=int(signum))

    async def kill(self, restart: bool = False) -> None:
        answer = await self._request("stop", now=True)
        self._finish(answer)

    async def terminate(self, restart: bool = False) -> None:
        answer = await self._request("stop", now=False)
        self._finish(answer)

    def _finish(self, answer: dict[str, Any] | None) -> None:
        code = answer.get("exit_code") if answer else None
        self._exit_code = int(code) if isinstance(code, int) else -int(signal.SIGKILL)
        self._pid = None

    async def shutdown_requested(self, restart: bool = False) -> None:
        # jupyter_client does not pass `restart` to terminate()/kill(); remember it here.
        self._restart_requested = restart

    async def cleanup(self, restart: bool = False) -> None:
        if not self._detached and self.kernel_id:
            records.forget(str(self.kernel_id))  # shut down (or restarted: a new kernel follows)
            _live.discard(self)
        restart = restart or self._restart_requested
        self._restart_requested = False
        if self._reattest_task is not None:
            self._reattest_task.cancel()
            self._reattest_task = None
        await asyncio.to_thread(self._teardown)
        if not restart:
            self.attestation = None

    def _teardown(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
            if link.ssh is not None:
                link.ssh.close()  # forwards adopted from a lost connection go too
        self._pid = None
        self._guest_kernel_id = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.launch_timeout)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(
            transport=self.transport,
            host=self.host,
            port=self.port,
            pid=self._pid,
            attestation=self.attestation.to_json() if self.attestation else None,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.transport = provisioner_info.get("transport", self.transport)
        self.host = provisioner_info.get("host", self.host)
        self.port = int(provisioner_info.get("port", self.port))
