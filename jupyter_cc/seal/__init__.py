"""Sealing data under a released key: streaming AES-256-GCM envelopes (docs/sealed-format.md).

Callers: the ``jupyter-cc seal``/``unseal`` commands (:mod:`jupyter_cc.cli.seal`) and the
``%seal``/``%unseal`` magics. An envelope binds its header (key id, chunk size, content type,
creation time) into every chunk and marks the final chunk, so truncation, reordering,
duplication, appended bytes, header edits and bit flips all fail; nothing partial is ever
returned or left on disk. The rooms:

* :mod:`.envelope` — the format: header, chunk cipher, buffers and values in memory, the errors
  (``SealError``, ``UnsealError`` and its leaves), ``seal_bytes``/``unseal_bytes``.
* :mod:`.files` — files and values to and from envelope files in constant memory, ``peek_header``.
* :mod:`.codecs` — how a value becomes bytes and back (pickle only with ``unsafe_pickle=True``).

This package exports the public API of design section 14; everything else is imported from
the module that holds it.

>>> key = bytes(range(32))
>>> unseal_value(seal_value({"rows": 3}, key), key)
{'rows': 3}
"""

from __future__ import annotations

from jupyter_cc.seal.envelope import seal_value, unseal_value
from jupyter_cc.seal.files import seal_file, unseal_file

__all__ = ["seal_file", "seal_value", "unseal_file", "unseal_value"]
