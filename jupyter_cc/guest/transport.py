"""The ``agent`` transport's server: the guest agent on one TCP port, speaking SSH, with no sshd.

Confidential pods (Confidential ACI, CoCo ``kata-qemu-snp``/``-tdx``) have no sshd, and their
policy blocks ``exec`` and port-forward, so the ``ssh`` transport cannot reach them. Here the guest
agent itself listens on one TCP port of the pod (``jupyter-cc guest serve-transport --port P``)
and speaks the SSH protocol through paramiko's server mode, a maintained protocol rather than a
new one:

- **The transport key is made in the TEE.** An Ed25519 host key is generated in memory when the
  server starts and never written anywhere or sent anywhere but as its public half in the SSH
  handshake. Its digest (SHA-256 of the public key blob) is bound into every evidence bundle as
  the ``transport-key`` label of the REPORT_DATA input (design section 6), while ``ssh-host-key``
  is 32 zero bytes (there is no sshd). The client compares the key it saw in the handshake with
  the bound one, so a relay presenting another key is refused exactly as with the ``ssh`` transport.
- **Clients authenticate by public key only**: the keys allowed are read at start from
  ``--authorized-keys FILE`` or the environment variable ``JUPYTER_CC_AUTHORIZED_KEYS`` (OpenSSH
  ``authorized_keys`` lines). In a pod either comes from the spec or init-data, which the CCE policy
  or the init-data digest covers, so the host cannot add a key unnoticed. Passwords, keyboard
  interactive and "none" are never accepted; with no key configured the server refuses to start.
- **One session channel per agent**: a ``session`` channel asking for the subsystem
  :data:`SUBSYSTEM` runs the agent protocol of :mod:`jupyter_cc.guest.protocol` on it, exactly as
  the per-connection agent does on its stdin over SSH; the kernel stops when the channel ends. No
  shell, no exec, no pty, no environment requests, no reverse forwards.
- **Kernel ports over the one connection**: ``direct-tcpip`` channels are opened only to
  127.0.0.1 ports that a kernel or server started on *this* connection listens on, never to other
  loopback services of the pod (a sidecar, the attestation agent) or another connection's kernel.

Bind address: the pod's port must be reachable by the Hub (``--bind 0.0.0.0`` in a pod, the pod's
network only); the default is 127.0.0.1, which is what the tests use.

>>> from jupyter_cc.guest.transport import parse_authorized_keys
>>> parse_authorized_keys("# no keys yet\\n")
()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from jupyter_cc.attest.binding import host_key_digest
from jupyter_cc.decoding import decode_hex
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.guest.agent import Agent
from jupyter_cc.guest.channel import ChannelStream
from jupyter_cc.guest.results import Collected

__all__ = [
    "AUTHORIZED_KEYS_ENV",
    "SUBSYSTEM",
    "TRANSPORT_KEY_LABEL",
    "AgentSettings",
    "TransportAgent",
    "TransportError",
    "TransportServer",
    "load_authorized_keys",
    "parse_authorized_keys",
]

log = logging.getLogger("jupyter_cc.guest")

#: The SSH subsystem a client asks for on a session channel to talk to the agent.
SUBSYSTEM = "jupyter-cc-agent"
#: The REPORT_DATA label that binds the transport key (jupyter_cc.attest.binding.OPTIONAL_LABELS).
TRANSPORT_KEY_LABEL = "transport-key"
#: Where the pod's spec or init-data puts the client keys allowed (authorized_keys lines).
AUTHORIZED_KEYS_ENV = "JUPYTER_CC_AUTHORIZED_KEYS"
_KEY_TYPES = frozenset(
    (
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-512",
        "ssh-rsa",
    )
)
_MAX_KEYS_TEXT = 64 * 1024
_MAX_CONNECTIONS = 16


class TransportError(CCError):
    """The agent transport cannot start, or refused a client or a channel."""

    check = "agent transport"


# --- client keys -------------------------------------------------------------------------


def parse_authorized_keys(text: str) -> tuple[bytes, ...]:
    """The public key blobs in OpenSSH ``authorized_keys`` text (options before a key refused).

    Raises:
        InputError: a line is not ``TYPE BASE64 [comment]`` with a known key type.
    """
    if len(text) > _MAX_KEYS_TEXT:
        raise InputError(f"the authorized keys are {len(text)} characters, more than {_MAX_KEYS_TEXT}")
    blobs: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] not in _KEY_TYPES or len(fields) < 2:
            raise InputError(
                f"authorized key line {number} is not 'TYPE BASE64 [comment]' with a known key type",
                hint="options before the key (from=, command=) are not supported by the agent transport",
            )
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except ValueError:
            raise InputError(f"authorized key line {number} is not valid base64") from None
        blobs.append(blob)
    return tuple(blobs)


def _read_keys_file(path: Path) -> str:
    """The text of a private, regular authorized-keys file (not writable by group or others)."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise InputError(f"cannot read the authorized keys file {path} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"the authorized keys file {path} is not a regular file")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise InputError(
            f"the authorized keys file {path} may be written by others",
            hint="make it mode 0644 or stricter (a key others can add is a door into the TEE)",
        )
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        raise InputError(f"cannot read the authorized keys file {path}") from None


def load_authorized_keys(path: Path | None, environ: dict[str, str] | None = None) -> tuple[bytes, ...]:
    """The client keys allowed: from ``path`` if given, else from :data:`AUTHORIZED_KEYS_ENV`.

    Raises:
        TransportError: no key at all (the server would let nobody in, or worse: fail closed).
        InputError: the file or the variable is unreadable or malformed.
    """
    env = os.environ if environ is None else environ
    text = _read_keys_file(path) if path is not None else env.get(AUTHORIZED_KEYS_ENV, "")
    keys = parse_authorized_keys(text)
    if not keys:
        raise TransportError(
            "the agent transport has no client key to accept",
            hint=f"pass --authorized-keys FILE or set {AUTHORIZED_KEYS_ENV} in the pod's spec or init-data",
        )
    return keys


def generate_host_key() -> paramiko.PKey:
    """A fresh Ed25519 host key, in memory only (made in the TEE; never written or sent)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode("ascii")))


# --- the agent on a channel --------------------------------------------------------------


class TransportAgent(Agent):
    """The guest agent of one session channel: binds the transport key instead of an sshd's.

    Remembers the loopback ports its kernel or server listens on, which are the only ones the
    connection may reach with ``direct-tcpip``.
    """

    def __init__(self, *, transport_key_sha256: bytes, aa_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport_key_sha256 = transport_key_sha256
        self.aa_url = aa_url
        self.ports: set[int] = set()

    def _cpu_source(self) -> Callable[[bytes], Collected] | None:
        """The pod's Attestation Agent when configured (CoCo), else the sources for ``tee``."""
        if not self.aa_url:
            return None
        from jupyter_cc.guest.coco_aa import collect_coco_aa

        url, allow_sample = self.aa_url, self.tee == "sim"
        return lambda report_data: collect_coco_aa(report_data, url=url, allow_sample=allow_sample)

    def _hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {**super()._hello(msg), "transport": "agent"}

    def _attest(self, msg: dict[str, Any]) -> dict[str, Any]:
        from jupyter_cc.guest.bundle import collect_bundle

        nonce = decode_hex(str(msg.get("nonce", "")), what="the attestation nonce")
        bundle = collect_bundle(
            nonce,
            host_key_digest(None),  # no sshd: the transport key is bound under its own label
            tee=self.tee,
            sim_dir=self.sim_dir,
            clock=self.clock,
            bind={TRANSPORT_KEY_LABEL: self.transport_key_sha256},
            cpu=self._cpu_source(),
        )
        return {"ok": True, "bundle": bundle.decode()}

    def _start(self, msg: dict[str, Any]) -> dict[str, Any]:
        answer = super()._start(msg)
        connection = answer.get("connection") or {}
        self.ports.update(p for p in connection.values() if isinstance(p, int) and not isinstance(p, bool))
        return answer

    def _start_server(self, msg: dict[str, Any]) -> dict[str, Any]:
        answer = super()._start_server(msg)
        if isinstance(answer.get("port"), int):
            self.ports.add(int(answer["port"]))
        return answer

    def _attach(self, msg: dict[str, Any]) -> dict[str, Any]:
        answer = super()._attach(msg)
        if isinstance(answer.get("port"), int):
            self.ports.add(int(answer["port"]))
        return answer


# --- one SSH connection ------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSettings:
    """What each connection's agents are made with (no secrets)."""

    tee: str = "auto"
    sim_dir: Path | None = None
    python: str | None = None
    #: The pod's Attestation Agent REST API (CoCo), e.g. http://127.0.0.1:8006; None: configfs-tsm etc.
    aa_url: str | None = None


class _Connection(paramiko.ServerInterface):
    """paramiko's policy hooks for one client connection: key auth, one subsystem, own ports."""

    def __init__(
        self,
        authorized: Sequence[bytes],
        make_agent: Callable[[], TransportAgent],
        name: str,
    ) -> None:
        self.authorized = tuple(authorized)
        self.make_agent = make_agent
        self.name = name
        self.agents: list[TransportAgent] = []
        self.pending: dict[int, int] = {}  # direct-tcpip channel id -> loopback port
        self.channels: list[paramiko.Channel] = []
        self.lock = threading.Lock()

    # authentication: public key only
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = key.asbytes()
        ok = False
        for allowed in self.authorized:  # every key compared, in constant time each
            ok |= hmac.compare_digest(allowed, blob)
        if not ok:
            log.info("%s: refused a client key SHA256:%s", self.name, hashlib.sha256(blob).hexdigest()[:16])
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    # channels
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        if kind == "direct-tcpip":
            return OPEN_SUCCEEDED  # the destination is checked next
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def allowed_ports(self) -> set[int]:
        with self.lock:
            return set().union(*(a.ports for a in self.agents)) if self.agents else set()

    def check_channel_direct_tcpip_request(self, chanid: int, origin: Any, destination: Any) -> int:
        host, port = destination
        if host not in ("127.0.0.1", "localhost") or port not in self.allowed_ports():
            log.info("%s: refused a forward to %s:%s (not this connection's kernel)", self.name, host, port)
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self.lock:
            self.pending[chanid] = int(port)
        return OPEN_SUCCEEDED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != SUBSYSTEM:
            return False
        agent = self.make_agent()
        with self.lock:
            self.agents.append(agent)
        threading.Thread(
            target=self._serve, args=(agent, channel), name="cc-transport-agent", daemon=True
        ).start()
        return True

    def _serve(self, agent: TransportAgent, channel: paramiko.Channel) -> None:
        stream = ChannelStream(channel, errors_as_eof=True)
        try:
            agent.serve(stream, stream)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client went away: serve's finally already stopped the kernel
        finally:
            try:
                channel.shutdown_write()
                channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return False  # no reverse forwards, no keepalive answers needed


def _forward(channel: paramiko.Channel, port: int) -> None:
    """Relay an accepted ``direct-tcpip`` channel to 127.0.0.1:``port`` in the guest."""
    from jupyter_cc.remote.ssh import relay

    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        channel.close()
        return
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    relay(sock, channel, name=f"cc-transport-{port}")


# --- the listener ------------------------------------------------------------------------


class TransportServer:
    """The listener: one thread per client connection, at most 16 at once.

    ``TransportServer(keys, port=0).start()`` listens on a free loopback port (:attr:`port`);
    :attr:`key_sha256` is what its agents bind as ``transport-key``; :meth:`close` ends it all.
    """

    def __init__(
        self,
        authorized_keys: Sequence[bytes],
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        settings: AgentSettings | None = None,
        handshake_timeout: float = 15.0,
    ) -> None:
        if not authorized_keys:
            raise TransportError("the agent transport has no client key to accept")
        self.authorized = tuple(authorized_keys)
        self.settings = settings or AgentSettings()
        self.handshake_timeout = handshake_timeout
        self._host_key = generate_host_key()
        self.public_key_blob: bytes = self._host_key.asbytes()
        self.key_sha256 = hashlib.sha256(self.public_key_blob).digest()
        self._slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        self._closed = threading.Event()
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        try:
            self.listener = socket.create_server((bind, port), backlog=16)
        except OSError as exc:
            raise TransportError(f"cannot listen on {bind}:{port} ({exc.strerror or exc})") from None
        self.port: int = self.listener.getsockname()[1]
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # the public key digest only; the private key never
        return f"TransportServer(port={self.port}, key=SHA256:{self.key_sha256.hex()[:16]}...)"

    def start(self) -> TransportServer:
        """Accept connections in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="cc-transport", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        log.info("agent transport on port %s, key SHA256:%s", self.port, self.key_sha256.hex())
        while not self._closed.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("agent transport: %s connections already; refused %s", _MAX_CONNECTIONS, peer[0])
                sock.close()
                continue
            threading.Thread(
                target=self._handle, args=(sock, peer), name="cc-transport-conn", daemon=True
            ).start()

    def _make_agent(self) -> TransportAgent:
        s = self.settings
        return TransportAgent(
            transport_key_sha256=self.key_sha256,
            aa_url=s.aa_url,
            tee=s.tee,
            sim_dir=s.sim_dir,
            python=s.python,
        )

    def _handle(self, sock: socket.socket, peer: Any) -> None:
        name = f"client {peer[0]}:{peer[1]}"
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.handshake_timeout = transport.banner_timeout = transport.auth_timeout = (
            self.handshake_timeout
        )
        transport.add_server_key(self._host_key)
        iface = _Connection(self.authorized, self._make_agent, name)
        with self._lock:
            self._transports.add(transport)
        try:
            transport.start_server(server=iface)
            self._channels(transport, iface)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("%s: %s", name, exc.__class__.__name__)
        finally:
            transport.close()
            with self._lock:
                self._transports.discard(transport)
            self._slots.release()

    def _channels(self, transport: paramiko.Transport, iface: _Connection) -> None:
        """Take each opened channel: forwards are relayed, sessions wait for their subsystem."""
        while transport.is_active() and not self._closed.is_set():
            channel = transport.accept(timeout=1.0)
            if channel is None:
                continue
            with iface.lock:
                port = iface.pending.pop(channel.get_id(), None)
            if port is not None:
                threading.Thread(target=_forward, args=(channel, port), daemon=True).start()
            else:  # a session: paramiko holds channels weakly, so keep it until its subsystem ends
                with iface.lock:
                    iface.channels = [c for c in iface.channels if not c.closed] + [channel]

    def close(self) -> None:
        """Stop listening and end every connection (their kernels stop with their channels)."""
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            transports = list(self._transports)
        for t in transports:
            t.close()
