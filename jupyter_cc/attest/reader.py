"""A bounds-checked cursor over binary evidence (TDX quotes, TPM structures, SPDM reports).

Every read that would run past the end is a :class:`FormatError` saying what was being read,
how many bytes it needed, where, and how many were left, so truncated evidence fails with a
readable sentence instead of a short slice.
"""

from __future__ import annotations

from typing import Literal

from jupyter_cc.errors import FormatError

__all__ = ["Reader"]


class Reader:
    """Reads fields in order from ``data[pos:end]``.

    Args:
        data: the bytes to read.
        ends: the start of the error sentence, completed by the field's name (``"the TDX quote
            ends inside its "``).
        hint: the hint of that error.
        byteorder: of the integers read.
        pos, end: the part of ``data`` to read (default: all of it).
    """

    def __init__(
        self,
        data: bytes,
        *,
        ends: str,
        hint: str,
        byteorder: Literal["little", "big"] = "little",
        pos: int = 0,
        end: int | None = None,
    ) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self._ends = ends
        self._hint = hint
        self._byteorder: Literal["little", "big"] = byteorder

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(
                f"{self._ends}{what} (needs {n} bytes at offset {self.pos}, "
                f"{max(self.end - self.pos, 0)} left)",
                hint=self._hint,
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), self._byteorder)

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return self.uint(2, what)

    def u24(self, what: str) -> int:
        return self.uint(3, what)

    def u32(self, what: str) -> int:
        return self.uint(4, what)

    def u64(self, what: str) -> int:
        return self.uint(8, what)
