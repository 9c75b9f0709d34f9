"""The pieces under the fast relay path that need no sshd: the read-ahead socket paramiko reads the
SSH connection through, and the CHANNEL_DATA handler swapped on one transport only."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import paramiko
import pytest

from jupyter_cc.remote import ssh as ssh_module
from jupyter_cc.remote.ssh import _channel_data, _direct_feeds, _ReadAheadSocket


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def test_reads_are_served_in_order_across_what_was_read_ahead(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wrapped = _ReadAheadSocket(ours)
    theirs.sendall(b"abcdefgh")
    assert wrapped.recv(3) == b"abc"
    assert wrapped.recv(2) == b"de"
    assert wrapped.recv(100) == b"fgh"  # what is left, not a wait for more
    theirs.sendall(b"ij")
    assert wrapped.recv(5) == b"ij"


def test_a_read_never_returns_more_than_asked_and_returns_bytes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wrapped = _ReadAheadSocket(ours)
    data = bytes(range(251)) * 4000  # more than a socket buffer and than one read ahead
    writer = threading.Thread(target=theirs.sendall, args=(data,))
    writer.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = wrapped.recv(1000)
        assert type(chunk) is bytes
        assert 0 < len(chunk) <= 1000
        got += chunk
    writer.join()
    assert got == data


def test_timeout_and_eof_reach_paramiko_as_from_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    wrapped = _ReadAheadSocket(ours)
    wrapped.settimeout(0.05)  # passed to the socket, as paramiko sets its 0.1 s
    assert ours.gettimeout() == 0.05
    with pytest.raises(socket.timeout):
        wrapped.recv(10)
    theirs.sendall(b"x")
    theirs.shutdown(socket.SHUT_WR)
    assert wrapped.recv(10) == b"x"
    assert wrapped.recv(10) == b""


def test_everything_but_recv_is_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    wrapped = _ReadAheadSocket(ours)
    assert wrapped.fileno() == ours.fileno()
    assert wrapped.send(b"hi") == 2
    assert theirs.recv(2) == b"hi"
    assert wrapped._closed is False  # Transport.close looks at it


def test_the_data_handler_is_swapped_on_one_transport_only(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    transport = paramiko.Transport(ours)
    other = paramiko.Transport(theirs)
    try:
        data = paramiko.common.MSG_CHANNEL_DATA
        assert _direct_feeds(transport)
        assert _direct_feeds(transport)  # a second relay on the same transport: no change
        t: object = transport
        assert vars(t)["_channel_handler_table"][data] is _channel_data
        assert paramiko.Transport._channel_handler_table[data] is paramiko.Channel._feed  # type: ignore[attr-defined]
        assert other._channel_handler_table[data] is paramiko.Channel._feed  # type: ignore[attr-defined]
    finally:
        transport.close()
        other.close()


def test_a_channel_without_a_direct_feed_is_fed_as_paramiko_feeds_it() -> None:
    channel = paramiko.Channel(7)
    m = paramiko.Message()
    m.add_string(b"kernel bytes")
    m.rewind()
    _channel_data(channel, m)
    assert channel.recv_ready()
    assert channel.in_buffer.read(100) == b"kernel bytes"
    assert getattr(channel, ssh_module._FEED_ATTR, None) is None
