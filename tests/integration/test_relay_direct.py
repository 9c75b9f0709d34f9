"""The kernel port relay over a real OpenSSH sshd: bytes exact and in order, both ways, on every path.

``relay()`` writes channel data to the local socket on paramiko's transport thread when the
socket takes it at once, and falls back to the channel's buffer and the relay thread when it does
not (``_DirectFeed``). These tests make each path happen (a reader that stops, then resumes;
data buffered before the relay starts; a socket with a timeout, which keeps the buffered path)
and compare every byte, then check EOF both ways, ``stop``, and that closing the connection ends
the relays.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import paramiko
import pytest

from jupyter_cc.remote import ssh as ssh_module
from jupyter_cc.remote.ssh import SshConnection, SshTarget, relay
from tests.support.sshd import Sshd

pytestmark = pytest.mark.timeout(120)


def pattern(n: int, seed: bytes = b"relay") -> bytes:
    """``n`` bytes that repeat nowhere: a lost, doubled or moved block changes what arrives."""
    return hashlib.shake_256(seed).digest(n)


class Peer:
    """A TCP server on 127.0.0.1 (what the guest's kernel would be) running ``handle`` per connection."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.handled = threading.Event()
        self._handle = handle
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            with conn:
                conn.settimeout(60)
                self._handle(conn)
        except BaseException as exc:  # reported by the test through self.errors
            self.errors.append(exc)
        finally:
            self.handled.set()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(timeout=10)


@pytest.fixture
def conn(sshd: Sshd) -> Iterator[SshConnection]:
    target = SshTarget(
        host="127.0.0.1",
        port=sshd.port,
        identity_file=str(sshd.identity_file),
        known_hosts=str(sshd.known_hosts),
    )
    connection = SshConnection(target).connect()
    yield connection
    connection.close()


@pytest.fixture
def feeds(monkeypatch: pytest.MonkeyPatch) -> list[ssh_module._DirectFeed]:
    """Every direct feed a relay attaches during the test."""
    made: list[ssh_module._DirectFeed] = []
    attach = ssh_module._DirectFeed.attach

    def recording(self: ssh_module._DirectFeed) -> None:
        made.append(self)
        attach(self)

    monkeypatch.setattr(ssh_module._DirectFeed, "attach", recording)
    return made


def read_to_eof(sock: socket.socket, *, size: int = 65536) -> bytes:
    chunks = []
    while True:
        data = sock.recv(size)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def send_then_drain(data: bytes) -> Callable[[socket.socket], None]:
    """A guest side that sends ``data``, half-closes, and waits for the client to close."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        read_to_eof(conn)

    return handle


def test_a_large_pull_through_a_reader_that_stalls_arrives_exactly(
    conn: SshConnection, feeds: list[ssh_module._DirectFeed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct writes, then the buffered path while the reader stalls, then direct writes again."""
    data = pattern(24 * 1024 * 1024)
    kinds: list[str] = []
    feed = ssh_module._DirectFeed.feed

    def recording(self: ssh_module._DirectFeed, chunk: bytes) -> None:
        direct, buffered = self.direct_bytes, self.buffered_bytes
        feed(self, chunk)
        kind = "buffered" if self.buffered_bytes > buffered else "direct"
        if self.direct_bytes > direct and kind == "buffered":
            kind = "split"  # the socket took the start of the packet only
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)

    monkeypatch.setattr(ssh_module._DirectFeed, "feed", recording)
    peer = Peer(send_then_drain(data))
    try:
        port = conn.forward(peer.port)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # fills sooner
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            first = sock.recv(4096)  # direct writes have started
            time.sleep(1.0)  # the reader stalls: the socket buffers fill, the relay must buffer
            got = first + read_to_eof(sock)
        assert peer.handled.wait(30)
    finally:
        peer.close()
    assert not peer.errors
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    [used] = feeds
    assert used.direct_bytes > 0
    assert used.buffered_bytes > 0
    assert used.direct_bytes + used.buffered_bytes == len(data)
    # Direct writes, then the buffered path (the packet split or not), then direct writes again
    # once the backlog was out. (The first packets may be buffered: data can reach the channel
    # before the relay attaches.)
    direct = kinds.index("direct")
    fallback = next(i for i in range(direct, len(kinds)) if kinds[i] != "direct")
    assert "direct" in kinds[fallback:], kinds


def test_a_large_push_and_its_echo_arrive_exactly(conn: SshConnection) -> None:
    """16 MB up through the relay to an echo server and back down, read while it is sent."""
    data = pattern(16 * 1024 * 1024, b"push")

    def echo(conn_: socket.socket) -> None:
        while chunk := conn_.recv(65536):
            conn_.sendall(chunk)

    peer = Peer(echo)
    try:
        port = conn.forward(peer.port)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            got = bytearray()

            def reader() -> None:
                while len(got) < len(data):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)

            t = threading.Thread(target=reader)
            t.start()
            view = memoryview(data)
            for i in range(0, len(data), 100_000):  # odd sizes: not aligned with SSH packets
                sock.sendall(view[i : i + 100_000])
            t.join(timeout=60)
            assert not t.is_alive()
    finally:
        peer.close()
    assert not peer.errors
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_eof_from_the_guest_arrives_after_every_byte(conn: SshConnection) -> None:
    data = pattern(300_000, b"eof-down")
    peer = Peer(lambda c: c.sendall(data))  # then the guest side closes
    try:
        port = conn.forward(peer.port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert read_to_eof(sock) == data
    finally:
        peer.close()
    assert not peer.errors


def test_eof_from_the_local_side_reaches_the_guest_after_every_byte(conn: SshConnection) -> None:
    data = pattern(1_000_000, b"eof-up")
    received: list[bytes] = []
    peer = Peer(lambda c: received.append(read_to_eof(c)))
    try:
        port = conn.forward(peer.port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            assert peer.handled.wait(30)
            assert read_to_eof(sock) == b""  # the relay ends both ways once one side has ended
    finally:
        peer.close()
    assert not peer.errors
    assert received == [data]


def open_direct(conn: SshConnection, port: int) -> paramiko.Channel:
    assert conn.transport is not None
    return conn.transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)


def start_relay(local: socket.socket, channel: paramiko.Channel, **kwargs: object) -> threading.Thread:
    t = threading.Thread(target=relay, args=(local, channel), kwargs=kwargs, daemon=True)
    t.start()
    return t


def read_relayed(relay_thread: threading.Thread, theirs: socket.socket) -> bytes:
    """All the relay delivered to ``theirs`` up to EOF (which closes it); the relay must end."""
    with theirs:
        theirs.settimeout(30)
        got = read_to_eof(theirs)
    relay_thread.join(timeout=30)
    assert not relay_thread.is_alive()
    return got


def test_data_buffered_before_the_relay_starts_stays_first(
    conn: SshConnection, feeds: list[ssh_module._DirectFeed]
) -> None:
    """What the channel holds when the relay attaches is written before anything that follows."""
    head = pattern(200_000, b"head")
    tail = pattern(5_000_000, b"tail")
    go = threading.Event()

    def handle(c: socket.socket) -> None:
        c.sendall(head)
        assert go.wait(30)
        c.sendall(tail)

    peer = Peer(handle)
    ours, theirs = socket.socketpair()
    try:
        channel = open_direct(conn, peer.port)
        deadline = time.monotonic() + 30
        while len(channel.in_buffer) < len(head):
            assert time.monotonic() < deadline, "the head never reached the channel"
            time.sleep(0.01)
        t = start_relay(ours, channel)
        theirs.settimeout(30)
        got = b""
        while len(got) < len(head):  # the buffered head first, then the guest sends the tail:
            chunk = theirs.recv(len(head) - len(got))  # direct writes can resume once it is out
            assert chunk, "the relay ended before the head was out"
            got += chunk
        go.set()
        got += read_relayed(t, theirs)
    finally:
        peer.close()
        ours.close()
    assert not peer.errors
    assert got == head + tail
    [used] = feeds
    assert used.buffered_bytes >= len(head)
    assert used.direct_bytes > 0


def test_a_socket_with_a_timeout_keeps_the_buffered_path(
    conn: SshConnection, feeds: list[ssh_module._DirectFeed]
) -> None:
    """A send on a socket with a timeout may wait: the transport thread must never write to one."""
    data = pattern(3_000_000, b"timeout")
    peer = Peer(send_then_drain(data))
    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    try:
        channel = open_direct(conn, peer.port)
        got = read_relayed(start_relay(ours, channel), theirs)
    finally:
        peer.close()
        ours.close()
    assert not peer.errors
    assert got == data
    assert feeds == []
    assert getattr(channel, ssh_module._FEED_ATTR, None) is None


def test_stop_ends_the_relay(conn: SshConnection) -> None:
    """With ``stop`` set the relay ends at the latest when data next arrives, closing both sides."""
    stop = threading.Event()
    go = threading.Event()
    sent = pattern(100_000, b"stop")
    peer = Peer(lambda c: (go.wait(30), c.sendall(sent), read_to_eof(c)))
    ours, theirs = socket.socketpair()
    try:
        channel = open_direct(conn, peer.port)
        t = start_relay(ours, channel, stop=stop)
        stop.set()
        go.set()
        got = read_relayed(t, theirs)
        assert channel.closed
        assert peer.handled.wait(30)
    finally:
        peer.close()
        ours.close()
    assert not peer.errors
    assert sent.startswith(got)  # nothing out of order, nothing after stop but what was in hand


def relay_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("cc-up-") or t.name.endswith("(_relay)")}


def test_closing_the_connection_ends_its_relays(sshd: Sshd) -> None:
    before = relay_threads()
    target = SshTarget(
        host="127.0.0.1",
        port=sshd.port,
        identity_file=str(sshd.identity_file),
        known_hosts=str(sshd.known_hosts),
    )
    connection = SshConnection(target).connect()
    peer = Peer(lambda c: (c.sendall(b"hello"), read_to_eof(c)))
    try:
        port = connection.forward(peer.port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert sock.recv(5) == b"hello"
            connection.close()
            try:
                assert read_to_eof(sock) == b""
            except ConnectionResetError:
                pass  # closed with nothing more to say: a reset is an end too
        deadline = time.monotonic() + 10
        while relay_threads() - before:
            assert time.monotonic() < deadline, f"relay threads outlived their connection: {relay_threads()}"
            time.sleep(0.05)
    finally:
        connection.close()
        peer.close()


def test_a_reply_in_two_writes_is_not_held_for_a_delayed_ack(conn: SshConnection) -> None:
    """sshd leaves Nagle on for a connection that runs no session (the resident agent's): its
    second small write waits for our ACK of the first, 40 ms if that ACK is delayed. A kernel's
    reply comes in several writes (``busy``, the reply, ``idle``), so the client acknowledges at
    once; without that each exchange here takes more than 40 ms."""

    def handle(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while c.recv(64):
            c.sendall(b"first part")
            time.sleep(0.002)  # sshd forwards the first part before the second arrives
            c.sendall(b"second part")

    peer = Peer(handle)
    try:
        port = conn.forward(peer.port)
        times = []
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(30):
                t0 = time.perf_counter()
                sock.sendall(b"ping")
                got = b""
                while len(got) < len(b"first partsecond part"):
                    got += sock.recv(64)
                times.append(time.perf_counter() - t0)
        times.sort()
        assert times[len(times) // 2] < 0.025, f"median exchange {times[len(times) // 2] * 1000:.1f} ms"
    finally:
        peer.close()
    assert not peer.errors


def test_a_forward_to_a_closed_guest_port_closes_the_local_connection_quietly(
    conn: SshConnection, caplog: pytest.LogCaptureFixture
) -> None:
    """A kernel that stopped leaves its clients reconnecting to the forwards for a moment: each
    such connection is closed, as a refused TCP connection would be, with no ERROR line."""
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    local = conn.forward(port)
    caplog.set_level("DEBUG")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", local), timeout=10) as sock:
            assert read_to_eof(sock) == b""
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert errors == [], [r.getMessage() for r in errors]
    refused = [r for r in caplog.records if f"forward to guest port {port} refused" in r.getMessage()]
    assert len(refused) == 3
    # The forward still works for a port that listens: its channels open as before.
    peer = Peer(send_then_drain(b"still here"))
    try:
        there = conn.forward(peer.port)
        with socket.create_connection(("127.0.0.1", there), timeout=10) as sock:
            assert read_to_eof(sock) == b"still here"
    finally:
        peer.close()
