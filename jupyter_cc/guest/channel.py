"""The agent protocol's line stream on a paramiko channel, for both ends of one SSH connection.

The host's agent client (:mod:`jupyter_cc.remote.agent_client`) and the guest's transport
server (:mod:`jupyter_cc.guest.transport`) read and write JSON lines on a channel. paramiko's
own file objects flush again when garbage-collected, which fails noisily once the channel is
closed; the protocol needs only ``readline``, ``write`` and ``flush``.
"""

from __future__ import annotations

import paramiko

__all__ = ["ChannelStream"]


class ChannelStream:
    """``readline``/``write``/``flush`` straight on a paramiko channel.

    Args:
        errors_as_eof: a failed ``recv`` reads as the end of the stream (the guest's request
            loop then ends), instead of raising to the caller (the host, which reconnects).
    """

    def __init__(self, channel: paramiko.Channel, *, errors_as_eof: bool = False) -> None:
        self._channel = channel
        self._buffer = bytearray()
        self._errors_as_eof = errors_as_eof

    def readline(self, size: int = -1, /) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (size < 0 or end < size):
                return self._take(end + 1)
            if 0 <= size <= len(self._buffer):
                return self._take(size)
            chunk = self._recv()
            if not chunk:
                return self._take(len(self._buffer))
            self._buffer += chunk

    def _take(self, count: int) -> bytes:
        line = bytes(self._buffer[:count])
        del self._buffer[:count]
        return line

    def _recv(self) -> bytes:
        if not self._errors_as_eof:
            return bytes(self._channel.recv(65536))
        try:
            return bytes(self._channel.recv(65536))
        except (OSError, EOFError, paramiko.SSHException):
            return b""

    def write(self, data: bytes, /) -> int:
        self._channel.sendall(data)
        return len(data)

    def flush(self) -> None:
        return None
