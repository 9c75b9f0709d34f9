"""The notebook face: the IPython extension that ``%load_ext jupyter_cc`` loads.

``%attest`` and its attestation card (:mod:`.attest_magic`, :mod:`.card`), key release and
sealing magics (:mod:`.key_magics`), the confidential session with ``%cc``, ``%%confidential``
and ``%declassify`` (:mod:`.session_magics`, :mod:`.session`, :mod:`.transfer`,
:mod:`.declassify`), and the argument parsing they share (:mod:`.args`). Everything here calls
the layers below; nothing here verifies or decides on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["register"]


def register(ipython: Any) -> None:
    """Register every jupyter-cc magic with ``ipython``."""
    from jupyter_cc.notebook.attest_magic import register as register_attest
    from jupyter_cc.notebook.key_magics import KeyMagics
    from jupyter_cc.notebook.session_magics import SessionMagics

    ipython.register_magics(KeyMagics)
    ipython.register_magics(SessionMagics)
    register_attest(ipython)
