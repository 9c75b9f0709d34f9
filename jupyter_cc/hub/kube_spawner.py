"""The :class:`AttestedKubeSpawner`: single-user servers in confidential pods that attested first.

A :class:`~kubespawner.KubeSpawner` for the pods of :mod:`jupyter_cc.hub.kubernetes`'s profiles
(Confidential ACI and AKS virtual nodes on it, CoCo ``kata-qemu-snp``/``-tdx``). Such pods have no
sshd, and their policy blocks ``exec`` and port-forward, so the pod runs the guest agent's own
transport (``jupyter-cc guest serve-transport``, :mod:`jupyter_cc.guest.transport`) and nothing
else; the user's server starts only once the pod has attested:

1. KubeSpawner creates the pod and waits for it to run (its events are the first progress steps).
   The pod's environment holds no secret: the Hub's *public* key for the agent transport
   (``JUPYTER_CC_AUTHORIZED_KEYS``) and the profile's own values, so a CCE policy generated once
   per profile stays valid for every user and spawn.
2. The Hub connects to the pod's agent port over SSH (its private key, never a password) and asks
   for fresh evidence bound to a nonce and the transport key made in the TEE
   (:func:`~jupyter_cc.remote.agent_transport.attest_transport`), judged under ``attestation_policy``.
3. The deployment must be the one the evidence binds: a pod with a CCE policy annotation must
   report HOST_DATA = SHA-256 of that policy (:func:`~jupyter_cc.attest.pod.check_cce_policy`),
   a CoCo pod HOST_DATA/MRCONFIGID = the digest of its init-data
   (:func:`~jupyter_cc.attest.pod.check_pod_init_data`), both read from the pod as the API
   server stored it. A confidential profile pod with neither is refused.
4. Only then is ``jupyterhub-singleuser`` started through the agent, its environment (the Hub API
   token among it) sent over the attested connection, and its port forwarded to the Hub host over
   the same connection; the Hub routes the user to that local port.

Any refusal deletes the pod and shows the user one sentence and the failed rules (as
:class:`~jupyter_cc.hub.spawner.AttestedSSHSpawner` does); nothing of the user's was sent.

Network: the pod must accept the Hub on ``agent_port`` (a NetworkPolicy may allow only the Hub);
the forwarded server listens on the Hub host's 127.0.0.1, so the proxy must run beside the Hub
(JupyterHub's default), not in another pod.

>>> # c.JupyterHub.spawner_class = "jupyter_cc.hub.AttestedKubeSpawner"
>>> # c.AttestedKubeSpawner.identity_file = "/srv/jupyterhub/agent_ed25519"
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from kubespawner import KubeSpawner  # type: ignore[import-untyped]
from traitlets import Float, Integer, List, Unicode, default

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.hub.kubernetes import ACI_CCE_POLICY, COCO_INITDATA_KEYS, PROFILE_ANNOTATION
from jupyter_cc.hub.spawner import SpawnRefusedError, _describe, _html_lines, _refusal
from jupyter_cc.policy import Policy
from jupyter_cc.remote.attestation import Attestation, PolicyRejectedError
from jupyter_cc.remote.guest import GuestLink, GuestTarget

__all__ = ["AttestedKubeSpawner", "check_deployment"]

SERVER_NAME = "jupyterhub-singleuser"
AUTHORIZED_KEYS_ENV = "JUPYTER_CC_AUTHORIZED_KEYS"  # as jupyter_cc.guest.transport


def check_deployment(attestation: Attestation, annotations: dict[str, str]) -> str:
    """The evidence must bind what the pod was deployed with; returns what was checked.

    Raises:
        BindingError: HOST_DATA (or MRCONFIGID) is not the digest of the pod's CCE policy or
            init-data; the message names both values.
        InputError: a confidential profile's pod carries neither annotation.
    """
    from jupyter_cc.attest.pod import check_cce_policy, check_pod_init_data

    if annotations.get(ACI_CCE_POLICY):
        check_cce_policy(attestation.claims, annotations[ACI_CCE_POLICY].encode())
        return "HOST_DATA is the SHA-256 of the pod's CCE policy"
    for key in COCO_INITDATA_KEYS:
        if annotations.get(key):
            check_pod_init_data(attestation.claims, annotations[key])
            return "the TEE binds the digest of the pod's init-data"
    if annotations.get(PROFILE_ANNOTATION):
        raise InputError(
            "the confidential pod has neither a CCE policy nor init-data to check against the evidence"
        )
    return "no CCE policy or init-data on this pod: only the attestation policy applies"


class AttestedKubeSpawner(KubeSpawner):  # type: ignore[misc]
    """KubeSpawner whose pods run the guest agent transport and attest before the user's server starts."""

    agent_port = Integer(2222, config=True, help="the agent transport's TCP port in the pod")
    identity_file = Unicode(
        "", config=True, help="the Hub's private key for the agent transport (its .pub goes to the pod)"
    )
    authorized_key = Unicode(
        "", config=True, help="the public key line the pod accepts (default: identity_file + '.pub')"
    )
    attestation_policy = Unicode("", config=True, help="TOML policy file (default: the safe default policy)")
    agent_tee = Unicode("auto", config=True, help=f"evidence source in the pod: {', '.join(TEE_CHOICES)}")
    agent_aa_url = Unicode(
        "", config=True, help="CoCo: the pod's Attestation Agent REST API (e.g. http://127.0.0.1:8006)"
    )
    agent_command = List(
        Unicode(),
        ["jupyter-cc", "guest", "serve-transport", "--bind", "0.0.0.0"],  # noqa: S104 - the pod's network
        config=True,
        help="the pod's command: the agent transport; --port, --tee and --aa-url are added",
    )
    connect_timeout = Float(30.0, config=True, help="seconds for the agent connection and each request")
    pod_start_timeout = Float(
        0.0,
        config=True,
        help="seconds the pod may take to run (image pull included); 0: start_timeout less 10 seconds",
    )

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return list(self.agent_command)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link: GuestLink | None = None
        self._link_lock = threading.Lock()
        self._cc_events: list[dict[str, Any]] = []
        self.attestation: Attestation | None = None
        self.attestation_error: str | None = None
        self.forward_port: int | None = None

    # --- what the pod gets: no secret --------------------------------------------------

    def _public_key(self) -> str:
        if self.authorized_key:
            return str(self.authorized_key)
        if not self.identity_file:
            raise InputError(
                "c.AttestedKubeSpawner.identity_file is not set",
                hint="make a key pair for the Hub (ssh-keygen -t ed25519) and point identity_file at it",
            )
        path = Path(self.identity_file + ".pub")
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read the Hub's public key {path} ({exc.strerror})") from None

    def get_args(self) -> list[str]:
        """The agent transport's options (the single-user server's go through the agent)."""
        args = ["--port", str(self.agent_port), "--tee", self.agent_tee]
        return args + (["--aa-url", self.agent_aa_url] if self.agent_aa_url else [])

    def get_env(self) -> dict[str, str]:
        """The pod's environment: the profile's values and the Hub's public key, no token."""
        env = dict(self._expand_env(self.environment))
        env[AUTHORIZED_KEYS_ENV] = self._public_key()
        return env

    def server_env(self) -> dict[str, str]:
        """The single-user server's full environment (API token included): sent through the agent."""
        env: dict[str, str] = KubeSpawner.get_env(self)
        env.pop(AUTHORIZED_KEYS_ENV, None)
        return env

    # --- progress ------------------------------------------------------------------------

    def _event(self, progress: int, message: str, *, rules: tuple[str, ...] = ()) -> None:
        event: dict[str, Any] = {"progress": progress, "message": message}
        if rules:
            event["html_message"] = _html_lines(message.split("\n", 1)[0], rules)
            event["rules"] = list(rules)
        self._cc_events.append(event)
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self) -> Any:
        """The pod's Kubernetes events (up to 60%), then the attestation steps, as they happen."""
        if self.events_enabled:
            await self._start_watching_events()
        kube_sent = cc_sent = 0
        progress = 0.0
        while True:
            future = self._start_future
            done = future is not None and future.done()
            events = list(self.events) if self.events_enabled else []
            for event in events[kube_sent:]:
                progress += (60 - progress) / 3
                stamp = event.get("lastTimestamp") or event.get("eventTime")
                yield {
                    "progress": int(progress),
                    "raw_event": event,
                    "message": f"{stamp} [{event.get('type')}] {event.get('message')}",
                }
            kube_sent = len(events)
            while cc_sent < len(self._cc_events):
                yield self._cc_events[cc_sent]
                cc_sent += 1
            if done:
                return
            await asyncio.sleep(0.2)

    # --- start ---------------------------------------------------------------------------

    def start(self) -> Any:
        """KubeSpawner's start, then attestation, then the server through the agent."""
        self._cc_events = []
        self.attestation = None
        self.attestation_error = None
        self._start_future = asyncio.ensure_future(self._attested_start())
        return self._start_future

    def _pod_timeout(self) -> float:
        if self.pod_start_timeout > 0:
            return float(self.pod_start_timeout)
        return max(float(self.start_timeout) - 10.0, 10.0)

    def _pod_events(self) -> list[dict[str, Any]]:
        try:
            return list(self.events) if self.events_enabled else []
        except Exception:  # the events are a courtesy in the message
            return []

    async def _pod_running(self) -> str:
        """KubeSpawner's ``_start``, watched: a pod that will not run (evicted, an image that cannot
        be pulled, Pending past :meth:`_pod_timeout`) ends it at once with a :class:`PodError`."""
        from jupyter_cc.remote.pod import pending_error, pod_fault

        start = asyncio.ensure_future(self._start())
        timeout = self._pod_timeout()
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while not start.done():
                key = f"{self.namespace}/{self.pod_name}"
                pod = self.pod_reflector.pods.get(key) if self.pod_reflector else None
                fault = pod_fault(pod) if pod else None
                if fault is None and asyncio.get_running_loop().time() > deadline:
                    fault = pending_error(self.pod_name, timeout, self._pod_events())
                if fault is not None:
                    raise fault
                await asyncio.wait({start}, timeout=0.25)
            url: str = start.result()
            return url
        except TimeoutError:  # KubeSpawner's own start_timeout
            raise pending_error(self.pod_name, timeout, self._pod_events()) from None
        finally:
            if not start.done():
                start.cancel()

    async def _pod_refused(self, exc: CCError) -> NoReturn:
        """The pod did not run: delete it, tell the user in one sentence, keep the Hub serving."""
        await self._delete_pod()
        self.attestation_error = exc.diagnostics()
        sentence = exc.diagnostics()
        sentence = sentence[:1].upper() + sentence[1:]
        self._event(60, f"Refused: {sentence}")
        self._audit("pod-failed", target=f"pod {self.pod_name}", error=sentence)
        raise SpawnRefusedError(sentence) from None

    async def _attested_start(self) -> str:
        from jupyter_cc.remote.pod import PodError

        try:
            url = await self._pod_running()  # the pod runs (KubeSpawner's own steps and errors)
        except PodError as exc:
            await self._pod_refused(exc)
        host = urlsplit(url).hostname or ""
        annotations = self._deployed_annotations()
        env, args = self.server_env(), list(KubeSpawner.get_args(self))
        try:
            return await asyncio.to_thread(self._attest_and_start, host, annotations, env, args)
        except SpawnRefusedError:
            await self._delete_pod()
            raise
        except asyncio.CancelledError:
            await asyncio.to_thread(self._teardown)
            await self._delete_pod()
            raise

    def _get_pod_url(self, pod: Any) -> str:
        """Once the server runs, its URL is the forward over the attested connection, never the
        pod's own address (KubeSpawner's poll would otherwise route the user there)."""
        if self.forward_port:
            return f"http://127.0.0.1:{self.forward_port}"
        url: str = super()._get_pod_url(pod)
        return url

    def _deployed_annotations(self) -> dict[str, str]:
        """The pod's annotations as the API server stored them (what was really deployed)."""
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") if self.pod_reflector else None
        stored = ((pod or {}).get("metadata") or {}).get("annotations")
        return dict(stored if stored is not None else self.extra_annotations or {})

    def _target(self, host: str) -> GuestTarget:
        return GuestTarget.from_options(
            transport="agent",
            host=host,
            port=int(self.agent_port),
            identity_file=self.identity_file or None,
            tee=self.agent_tee,
            timeout=self.connect_timeout,
        )

    def _policy(self) -> Policy:
        return (
            Policy.load(Path(self.attestation_policy).expanduser()) if self.attestation_policy else Policy()
        )

    def _attest_and_start(
        self, host: str, annotations: dict[str, str], env: dict[str, str], args: list[str]
    ) -> str:
        what = f"pod {self.pod_name}"
        self._event(65, f"Connecting to the agent transport of {what} ({host}:{self.agent_port})")
        try:
            policy = self._policy()
            link = self._target(host).open()
            with self._link_lock:
                self._link = link
            self._event(70, f"Attesting {what}: fresh evidence bound to this connection's key")
            attestation = link.attest(policy)
            checked = check_deployment(attestation, annotations)
        except CCError as exc:
            self._refuse(what, exc)
        self.attestation = attestation
        self._audit_pass(what, attestation)
        self._event(
            80, f"Verified under policy {attestation.verdict.policy}: {_describe(attestation)}; {checked}"
        )
        try:
            self._event(85, f"Starting {SERVER_NAME} in {what}")
            answer = link.agent.request(
                "start_server", argv_name=SERVER_NAME, args=args, env=env, timeout=float(self.start_timeout)
            )
            self.forward_port = link.ssh.forward(int(answer["port"])) if link.ssh is not None else None
        except (CCError, KeyError, ValueError, TypeError) as exc:
            self._teardown()
            reason = exc.sentence() if isinstance(exc, CCError) else "the guest agent answered badly"
            raise SpawnRefusedError(
                f"The server did not start in the confidential {what}: {reason}"
            ) from None
        self._event(95, f"Server running in {what}, forwarded over the attested connection")
        return f"http://127.0.0.1:{self.forward_port}"

    def _refuse(self, what: str, exc: CCError) -> NoReturn:
        """Record and show a refusal, tear the connection down, raise :class:`SpawnRefusedError`."""
        self.attestation_error = exc.diagnostics()
        self._teardown()
        self._audit(
            "attest-refused",
            target=what,
            policy=self.attestation_policy or "default",
            error=exc.diagnostics(),
        )
        if isinstance(exc, PolicyRejectedError):
            sentence, rules = _refusal(exc, what)
            sentence = sentence.replace("The confidential VM", "The confidential", 1)
        else:  # one failed check (binding, evidence, connection): the sentence names it, the rule says it
            sentence = f"The confidential {what} was not used: its {exc.check} check failed."
            rules = (exc.diagnostics().rstrip("."),)
        self._event(90, "\n".join([f"Refused: {sentence}", *(f"- {r}" for r in rules)]), rules=rules)
        raise SpawnRefusedError(sentence, rules) from None

    # --- audit ---------------------------------------------------------------------------

    def _audit(self, event: str, **fields: Any) -> None:
        from jupyter_cc import audit

        try:
            audit.record(event, purpose="jupyterhub-server", user=self.user.name, **fields)
        except CCError as exc:
            self.log.warning("%s: this attestation is not in the audit log: %s", self._log_name, exc)

    def _audit_pass(self, what: str, attestation: Attestation) -> None:
        self._audit(
            "attest",
            target=what,
            passed=True,
            policy=attestation.verdict.policy,
            tee=attestation.claims.kind,
            simulated=attestation.claims.simulated,
            evidence_sha256=attestation.bundle_sha256,
        )

    # --- running and stopping ------------------------------------------------------------

    def attestation_state(self) -> dict[str, Any]:
        """The verdict for pages and extensions: claims, policy, evidence digest (no secrets)."""
        if self.attestation is not None:
            return self.attestation.to_json()
        return {"confidential": False, "error": self.attestation_error}

    def _teardown(self) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()  # bye: the agent stops the server it manages
        self.forward_port = None

    async def _delete_pod(self) -> None:
        try:
            await KubeSpawner.stop(self, now=True)
        except Exception as exc:
            self.log.warning("%s: the refused pod could not be deleted: %s", self._log_name, exc)

    async def poll(self) -> int | None:
        """Stopped when the pod is, or when the attested connection is gone (no re-attach yet)."""
        status: int | None = await super().poll()
        if status is not None:
            return status
        with self._link_lock:
            link = self._link
        return None if link is not None and link.alive else 0

    async def stop(self, now: bool = False) -> None:
        await asyncio.to_thread(self._teardown)
        await KubeSpawner.stop(self, now=now)
