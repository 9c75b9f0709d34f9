"""One SSH connection to a confidential VM: host-key checking, the agent channel, port forwards.

Built on paramiko's :class:`~paramiko.Transport` directly so that the cipher order and the
host-key decision are ours:

- AES-GCM ciphers first (paramiko's default AES-CTR with HMAC is much slower for bulk data);
- a host key found in known_hosts must match, or the connection is refused;
- an unknown host key is accepted only *provisionally*: :attr:`SshConnection.host_key_known` is
  False, and the caller must prove with attestation that the TEE holds this very key (its digest
  is bound into REPORT_DATA) before anything of the user's is sent;
- kernel ports are forwarded over this one connection (``direct-tcpip`` channels), with local
  listeners on 127.0.0.1 only and TCP_NODELAY on both sides of the relay; paramiko's transport
  thread writes channel data straight to the local socket when it can (:func:`relay`), reads the
  connection in batches and acknowledges at once, since sshd keeps Nagle's algorithm on for a
  connection without a session (:class:`_ReadAheadSocket`);
- a resident guest agent (``jupyter-cc guest serve``) is reached on its Unix socket through a
  ``direct-streamlocal@openssh.com`` channel (:meth:`SshConnection.open_streamlocal`): no
  session, no shell, no Python started per connection;
- the forwards' local listeners can move to a new connection (:meth:`SshConnection.adopt_forwards`)
  so a kernel client keeps its ports across a reconnect.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from jupyter_cc.errors import CCError, InputError

__all__ = ["STREAMLOCAL", "SshConnection", "SshError", "SshTarget", "relay", "remote_command"]

log = logging.getLogger("jupyter_cc.remote")

PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


#: The OpenSSH channel type that connects to a Unix socket on the server (PROTOCOL, 2.4).
STREAMLOCAL = "direct-streamlocal@openssh.com"


class SshError(CCError):
    """The SSH connection to the confidential VM failed or was refused."""

    check = "ssh"


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect. No secrets here: keys are read from files."""

    host: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    timeout: float = 10.0

    @property
    def login(self) -> str:
        """The user name SSH logs in as (``user``, else the local user name)."""
        return self.user or os.environ.get("USER") or "root"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def remote_command(argv: Sequence[str]) -> str:
    """A command line for the remote shell with every word quoted (no expansion, no injection)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def _load_private_key(path: str) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(path)
        except paramiko.PasswordRequiredException:
            raise InputError(
                f"the identity file {path} is encrypted",
                hint="load it into an ssh-agent, or use a key without a passphrase for the kernel",
            ) from None
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
        except OSError as exc:
            raise InputError(f"cannot read the identity file {path} ({exc.strerror})") from None
    raise InputError(f"the identity file {path} is not an Ed25519, ECDSA or RSA private key")


#: Bytes one relay read asks for (the socket side, and paramiko's channel buffer).
_READ_SIZE = 262144

#: The ``send`` flag that makes one write fail instead of waiting (Linux, macOS, the BSDs).
#: Without it a relay keeps paramiko's buffered path only.
_DONTWAIT: int | None = getattr(socket, "MSG_DONTWAIT", None)

#: The attribute of a paramiko Channel that holds its :class:`_DirectFeed`.
_FEED_ATTR = "_jupyter_cc_direct_feed"

#: Taken by the transport thread for a channel without a direct feed, and by
#: :meth:`_DirectFeed.attach`: a packet is either in the channel's buffer when the feed counts
#: the buffer, or it goes through the feed. Without it a packet could be buffered just after the
#: count and the next one written directly ahead of it.
_ATTACH_LOCK = threading.Lock()


def _pump(
    recv: Callable[[int], bytes],
    send: Callable[[bytes], object],
    stop: threading.Event,
    *,
    size: int = _READ_SIZE,
    written: Callable[[int], None] | None = None,
) -> None:
    """Copy what ``recv`` reads to ``send`` until end of input or ``stop``.

    ``written`` is told the size of each block once ``send`` has returned (or failed), so that a
    :class:`_DirectFeed` knows when the buffered bytes are all out.
    """
    try:
        while not stop.is_set():
            data = recv(size)
            if not data:
                break
            try:
                send(data)
            finally:
                if written is not None:
                    written(len(data))
    except (OSError, EOFError, paramiko.SSHException):
        pass  # either side went away: the relay ends, nothing to report


def _channel_data(chan: Any, m: paramiko.Message) -> None:
    """paramiko's handler for CHANNEL_DATA on a transport where :func:`_direct_feeds` is on.

    Runs on the transport thread: a channel with a :class:`_DirectFeed` gets the data through
    it, any other channel exactly as paramiko's own ``Channel._feed`` would.
    """
    feed: _DirectFeed | None = getattr(chan, _FEED_ATTR, None)
    if feed is None:
        with _ATTACH_LOCK:
            feed = getattr(chan, _FEED_ATTR, None)
            if feed is None:
                paramiko.Channel._feed(chan, m)  # type: ignore[attr-defined]
                return
    feed.feed(m.get_binary())


def _direct_feeds(transport: paramiko.Transport) -> bool:
    """Route this transport's CHANNEL_DATA through :func:`_channel_data`; False if it cannot.

    paramiko dispatches a channel's messages through ``Transport._channel_handler_table``, a
    class attribute mapping message types to Channel functions; a copy on this one transport
    changes the data handler and nothing else. A paramiko whose table does not hold
    ``Channel._feed`` for CHANNEL_DATA is one this was not written for: relays stay buffered.
    """
    t: Any = transport  # the private members are not in paramiko's type stubs
    table = t._channel_handler_table
    handler = table.get(paramiko.common.MSG_CHANNEL_DATA)
    if handler is _channel_data:
        return True
    if handler is not getattr(paramiko.Channel, "_feed", None):
        return False
    t._channel_handler_table = {**table, paramiko.common.MSG_CHANNEL_DATA: _channel_data}
    return True


class _DirectFeed:
    """A channel's data written to the local socket on paramiko's transport thread, where it can.

    paramiko's transport thread reads and decrypts each packet and appends its data to the
    channel's buffer; a relay thread, woken through a Condition, takes it and writes it to the
    socket: a copy in and out of the buffer, a lock handed over and a thread woken per packet,
    roughly a third of this process's CPU per bulk byte. Here the transport thread writes the data
    itself with a send that never waits (``MSG_DONTWAIT``), whenever nothing is queued on the
    buffered path. What the socket does not take at once (a slow reader, a full socket buffer)
    goes to the channel's buffer as before and the relay thread writes it; direct writes resume
    only once the relay thread has written all of it, so the bytes keep their order.

    paramiko re-opens the peer's window as the buffer is read (``Channel.recv``); bytes written
    directly are credited here instead. The WINDOW_ADJUST goes out from the transport thread,
    which must never wait for a key exchange (only it can finish one): during one, data takes the
    buffered path, and a credit that finds one just started waits for the next packet. After
    ``stop`` and once the relay ends, data takes the buffered path too. EOF and close stay
    paramiko's: they close the buffer, the relay thread drains it and ends.
    """

    def __init__(self, sock: socket.socket, channel: paramiko.Channel, stop: threading.Event) -> None:
        self.sock = sock
        self.channel = channel
        self.stop = stop
        self.lock = threading.Lock()
        #: Bytes given to the channel's buffer and not yet written to the socket by the relay.
        self.backlog = 0
        self.open = True
        #: Bytes written on the transport thread, and bytes that took the buffered path.
        self.direct_bytes = 0
        self.buffered_bytes = 0

    def attach(self) -> None:
        """Start taking the channel's data; what it already buffered counts as backlog."""
        with _ATTACH_LOCK:
            self.backlog = self.buffered_bytes = len(self.channel.in_buffer)
            setattr(self.channel, _FEED_ATTR, self)

    def detach(self) -> None:
        """Stop writing to the socket (the relay is ending; the socket is about to close)."""
        with self.lock:
            self.open = False

    def written(self, n: int) -> None:
        """The relay thread wrote ``n`` bytes it had taken from the channel's buffer."""
        with self.lock:
            self.backlog -= n

    def feed(self, data: bytes) -> None:
        """One CHANNEL_DATA packet's data, on the transport thread: write it, or buffer the rest."""
        chan: Any = self.channel
        sent = 0
        with self.lock:
            if (
                self.open
                and self.backlog == 0
                and not self.stop.is_set()
                and chan.transport.clear_to_send.is_set()
            ):
                try:
                    sent = self.sock.send(data, _DONTWAIT or 0)
                except BlockingIOError:
                    pass
                except OSError:
                    self.open = False  # the relay thread meets the error on its own write
            if sent < len(data):
                rest = data[sent:] if sent else data
                self.backlog += len(rest)
                self.buffered_bytes += len(rest)
                chan.in_buffer.feed(rest)
            self.direct_bytes += sent
        if sent:
            self._credit(sent)

    def _credit(self, n: int) -> None:
        """Count ``n`` bytes as consumed, and re-open the peer's window as ``Channel.recv`` does."""
        chan: Any = self.channel
        ack = chan._check_add_window(n)
        if ack <= 0:
            return
        m = paramiko.Message()
        m.add_byte(paramiko.common.cMSG_CHANNEL_WINDOW_ADJUST)
        m.add_int(chan.remote_chanid)
        m.add_int(ack)
        t = chan.transport
        # Transport._send_user_message would wait for a key exchange to end, and only this
        # thread can end it: send now if none is running, else keep the credit for later.
        with t.clear_to_send_lock:
            if t.active and t.clear_to_send.is_set():
                t._send_message(m)
                return
        with chan.lock:
            chan.in_window_sofar += ack


def relay(
    sock: socket.socket,
    channel: paramiko.Channel,
    *,
    stop: threading.Event | None = None,
    name: str = "cc-relay",
) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until either side ends.

    Two blocking pumps rather than select(): Channel.fileno() makes a pipe that paramiko may
    close twice, and a second os.close() can hit a descriptor already reused by another
    connection's socket. ``stop`` ends the relay early (a forward being closed). Closes both.

    On a blocking socket (no timeout), data from the channel is written to the socket by
    paramiko's transport thread whenever the socket takes it at once (:class:`_DirectFeed`),
    and by the downstream pump only when it does not. Upstream, each read is at most one SSH
    packet's payload, so ``Channel.sendall`` sends it without slicing and copying the rest.
    """
    stop = stop or threading.Event()
    done = threading.Event()
    feed: _DirectFeed | None = None
    if _DONTWAIT is not None and sock.gettimeout() is None and _direct_feeds(channel.get_transport()):
        feed = _DirectFeed(sock, channel, stop)
        feed.attach()
    packet = max(1024, int(getattr(channel, "out_max_packet_size", 0) or 32768) - 64)

    def finish() -> None:
        if done.is_set():
            return
        done.set()
        if feed is not None:
            feed.detach()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the transport is already gone

    def upstream() -> None:
        try:
            _pump(sock.recv, channel.sendall, stop, size=packet)
        finally:
            finish()

    up = threading.Thread(target=upstream, name=name, daemon=True)
    up.start()
    try:
        _pump(channel.recv, sock.sendall, stop, written=feed.written if feed is not None else None)
    finally:
        finish()
        up.join(timeout=5)
        sock.close()


#: Linux's "acknowledge now" socket option (None elsewhere); see :class:`_ReadAheadSocket`.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class _ReadAheadSocket:
    """The SSH connection's socket as paramiko's Packetizer reads it, with its reads batched.

    The Packetizer asks for each packet in two recv() calls of exact sizes (the first cipher
    block, then the rest with the MAC); on the socket paramiko gives a 0.1 s timeout each is a
    poll() and a recv(), and each lets go of the GIL and waits to get it back. This takes
    whatever has arrived, up to 256 KiB, in one ``recv_into`` and serves those calls from it: one
    system call for several bulk packets, one instead of two for a small message. Only the
    transport thread reads; everything but ``recv`` goes to the socket unchanged.

    After each read it also asks the kernel to acknowledge at once (``TCP_QUICKACK``, which Linux
    drops again by itself, so it is set per read). OpenSSH's sshd leaves Nagle's algorithm on for
    a connection that only forwards (it turns it off when a session runs a command), so a
    second small write, a kernel's reply after its ``busy`` status, waits for the ACK of the
    first, and a delayed ACK takes 40 ms: every execute round trip through the resident agent's
    connection took ~48 ms instead of ~5 ms on loopback.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(_READ_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes: from what was read ahead, else from one read of the socket."""
        if self._start == self._end:
            got = self._sock.recv_into(self._view)  # socket.timeout passes to paramiko as before
            if not got:
                return b""
            self._start, self._end = 0, got
            if _QUICKACK is not None:
                try:
                    self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    pass  # the connection is going away; the next read says so
        start = self._start
        stop = min(self._end, start + n)
        self._start = stop
        return bytes(self._view[start:stop])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _ProbeFilter(logging.Filter):
    """Drops paramiko's ERROR line for a refused channel that is ours to report, or expected:
    finding no resident agent is the ordinary case of a guest without the service, and a
    forward refused because its kernel has just stopped is the ordinary end of a kernel (its
    clients reconnect for a moment), not errors worth a log line."""

    def __init__(self) -> None:
        super().__init__()
        self.probing: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(text.startswith(f"Secsh channel {chanid} open FAILED") for chanid in self.probing)


_PROBES = _ProbeFilter()
logging.getLogger("paramiko.transport").addFilter(_PROBES)


def _open_channel(
    transport: paramiko.Transport, kind: str, fields: Callable[[paramiko.Message], None], timeout: float
) -> paramiko.Channel:
    """Open a channel of ``kind`` as Transport.open_channel does, its request's own fields
    written by ``fields``, and a refusal raised here rather than logged by paramiko.

    Uses paramiko's channel bookkeeping (the same private members open_channel uses; stable
    since paramiko 2): paramiko's ``open_channel`` writes destination fields only for its own
    TCP kinds and logs every refusal as an ERROR.
    """
    t: Any = transport  # the private members are not in paramiko's type stubs
    if not t.is_active():
        raise paramiko.SSHException("SSH session not active")
    with t.lock:
        window = t._sanitize_window_size(None)
        packet = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = paramiko.Message()
        m.add_byte(paramiko.common.cMSG_CHANNEL_OPEN)
        m.add_string(kind)
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        fields(m)
        chan: Any = paramiko.Channel(chanid)
        t._channels.put(chanid, chan)
        t.channel_events[chanid] = event = threading.Event()
        t.channels_seen[chanid] = True
        chan._set_transport(t)
        chan._set_window(window, packet)
    _PROBES.probing.add(chanid)
    try:
        t._send_user_message(m)
        deadline = time.monotonic() + timeout
        while not event.wait(0.1):
            if not t.is_active():
                raise t.get_exception() or paramiko.SSHException("the SSH connection ended")
            if time.monotonic() > deadline:
                raise paramiko.SSHException("timeout opening the channel")
    finally:
        _PROBES.probing.discard(chanid)
    opened: paramiko.Channel | None = t._channels.get(chanid)
    if opened is None:
        raise t.get_exception() or paramiko.SSHException("the server refused the channel")
    return opened


def _open_streamlocal(transport: paramiko.Transport, path: str, timeout: float) -> paramiko.Channel:
    """A ``direct-streamlocal@openssh.com`` channel: the socket path, then two reserved fields."""

    def fields(m: paramiko.Message) -> None:
        m.add_string(path)
        m.add_string("")  # reserved
        m.add_int(0)  # reserved

    return _open_channel(transport, STREAMLOCAL, fields, timeout)


def _open_direct_tcpip(
    transport: paramiko.Transport, port: int, peer: tuple[str, int], timeout: float
) -> paramiko.Channel:
    """A ``direct-tcpip`` channel to 127.0.0.1:``port`` in the guest (RFC 4254, 7.2)."""

    def fields(m: paramiko.Message) -> None:
        m.add_string("127.0.0.1")
        m.add_int(port)
        m.add_string(peer[0])
        m.add_int(peer[1])

    return _open_channel(transport, "direct-tcpip", fields, timeout)


class _Forward:
    """One local listener relaying each accepted connection to a port inside the guest."""

    def __init__(self, transport: paramiko.Transport, remote_port: int) -> None:
        self.transport = transport
        self.remote_port = remote_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.local_port: int = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"cc-forward-{remote_port}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                channel = _open_direct_tcpip(self.transport, self.remote_port, peer, timeout=10)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # Nothing listens there any more (the kernel stopped, its clients reconnecting):
                # the local connection is closed, as a refused TCP connection would be.
                log.debug("forward to guest port %d refused: %s", self.remote_port, exc)
                sock.close()
                continue
            threading.Thread(target=self._relay, args=(sock, channel), daemon=True).start()

    def _relay(self, sock: socket.socket, channel: paramiko.Channel) -> None:
        relay(sock, channel, stop=self._closed, name=f"cc-up-{self.remote_port}")

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


class SshConnection:
    """An authenticated SSH transport to the guest, and what was learnt of its host key."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.transport: paramiko.Transport | None = None
        self.host_key_known = False
        self._forwards: list[_Forward] = []

    def __repr__(self) -> str:
        return f"SshConnection({self.target.host}:{self.target.port}, known_key={self.host_key_known})"

    @property
    def host_key(self) -> paramiko.PKey:
        assert self.transport is not None
        return self.transport.get_remote_server_key()

    @property
    def host_key_sha256(self) -> bytes:
        return hashlib.sha256(self.host_key.asbytes()).digest()

    def connect(self) -> SshConnection:
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=t.timeout)
        except OSError as exc:
            raise SshError(
                f"cannot reach {t.host}:{t.port} ({exc.strerror or exc})",
                hint="check the host, the port and that sshd runs in the confidential VM",
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(_ReadAheadSocket(sock))  # type: ignore[arg-type]
        self.transport = transport
        options = transport.get_security_options()
        available = [c for c in PREFERRED_CIPHERS if c in options.ciphers]
        options.ciphers = tuple(available + [c for c in options.ciphers if c not in available])
        try:
            transport.start_client(timeout=t.timeout)
            self._check_host_key()
            self._authenticate()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise SshError(f"SSH to {t.host}:{t.port} failed ({exc or type(exc).__name__})") from None
        except BaseException:
            # A refusal (CCError) or anything else: the transport and its socket go with it,
            # never left for the garbage collector once the transport thread ends.
            self.close()
            raise
        transport.set_keepalive(15)
        return self

    def _check_host_key(self) -> None:
        t = self.target
        key = self.host_key
        known = paramiko.HostKeys()
        if t.known_hosts:
            path = Path(t.known_hosts).expanduser()
            if path.exists():
                try:
                    known.load(str(path))
                except (OSError, paramiko.SSHException) as exc:
                    raise InputError(f"cannot read known_hosts file {path} ({exc})") from None
        entries = known.lookup(t.known_hosts_name)
        if entries is None:
            self.host_key_known = False
            log.info("host key of %s is not in known_hosts: attestation must prove the TEE holds it", t.host)
            return
        expected = entries.get(key.get_name())
        if expected is None or expected.asbytes() != key.asbytes():
            raise SshError(
                f"the host key of {t.known_hosts_name} ({key.get_name()} "
                f"SHA256:{hashlib.sha256(key.asbytes()).hexdigest()[:16]}...) is not the one in known_hosts",
                hint="someone may be relaying the connection; do not continue unless the VM was rebuilt",
            )
        self.host_key_known = True

    def _authenticate(self) -> None:
        t = self.target
        assert self.transport is not None
        user = t.login
        if t.identity_file:
            key = _load_private_key(str(Path(t.identity_file).expanduser()))
            try:
                self.transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                raise SshError(
                    f"{user}@{t.host} refused the key in {t.identity_file}",
                    hint="add its public key to the VM's authorized_keys",
                ) from None
            return
        agent = paramiko.Agent()
        try:
            for key in agent.get_keys():
                try:
                    self.transport.auth_publickey(user, key)
                    return
                except paramiko.AuthenticationException:
                    continue
        finally:
            agent.close()
        raise SshError(
            f"no key was accepted for {user}@{t.host}",
            hint="set identity_file, or load a key into ssh-agent",
        )

    def exec(self, argv: Sequence[str]) -> paramiko.Channel:
        """Run ``argv`` (every word quoted) on the guest and return its channel."""
        assert self.transport is not None
        try:
            channel = self.transport.open_session(timeout=self.target.timeout)
            channel.exec_command(remote_command(argv))
        except (paramiko.SSHException, EOFError) as exc:
            raise SshError(f"cannot start the guest agent on {self.target.host} ({exc})") from None
        return channel

    def open_streamlocal(self, path: str, *, timeout: float | None = None) -> paramiko.Channel:
        """A channel to the Unix socket ``path`` on the guest (what ``ssh -W /path`` opens).

        paramiko's ``open_channel`` writes the destination only for TCP kinds, so the request is
        built here with the same steps: channel type, id, window, packet size, then the socket
        path and two reserved fields (OpenSSH PROTOCOL 2.4). sshd connects to the socket as the
        SSH user; ``AllowStreamLocalForwarding no`` on the guest makes this fail.

        Raises:
            SshError: the server refused the channel (no such socket, nothing listening,
                forwarding not allowed) or the connection ended.
        """
        transport = self.transport
        assert transport is not None
        try:
            return _open_streamlocal(transport, path, self.target.timeout if timeout is None else timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshError(f"cannot open the agent socket {path} on {self.target.host} ({exc})") from None

    def adopt_forwards(self, other: SshConnection) -> None:
        """Take over ``other``'s forwards: same local ports, relayed over this connection now.

        A kernel client connected to the old local ports reconnects (ZeroMQ does by itself) and
        reaches the same guest ports through this connection; ``other`` keeps no listener.
        """
        assert self.transport is not None
        for fwd in other._forwards:
            fwd.transport = self.transport
        self._forwards.extend(other._forwards)
        other._forwards.clear()

    def forward(self, remote_port: int) -> int:
        """Listen on a free 127.0.0.1 port and relay it to ``remote_port`` in the guest."""
        assert self.transport is not None
        fwd = _Forward(self.transport, remote_port)
        self._forwards.append(fwd)
        return fwd.local_port

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def close(self) -> None:
        for fwd in self._forwards:
            fwd.close()
        self._forwards.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
