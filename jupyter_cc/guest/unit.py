"""The systemd unit of the resident guest agent, as ``jupyter-cc guest install-service`` writes it.

Two forms:

- a **system unit** (``/etc/systemd/system/jupyter-cc-agent@<user>.service`` style, written as
  ``jupyter-cc-agent-<user>.service``) with ``User=``: systemd creates
  ``/run/jupyter-cc/<user>`` (0700, the user's) under a root-owned parent, which is the path the
  host side uses by default, so a kernelspec needs no setting;
- a **user unit** (``~/.config/systemd/user/jupyter-cc-agent.service``) for a user without root:
  the socket is ``$XDG_RUNTIME_DIR/jupyter-cc/agent.sock`` (``/run/user/<uid>/...``), which the
  kernelspec must name as ``agent_socket``; ``loginctl enable-linger`` keeps it running without
  a login.

Every ExecStart word is quoted for systemd (its rules, not a shell's: ``"``, ``\\``, ``%`` and
``$`` escaped); a word with a newline or NUL is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jupyter_cc.errors import InputError

__all__ = ["UnitFile", "exec_quote", "unit_file"]

_USER = re.compile(r"\A[a-z_][a-z0-9_.-]{0,31}\Z", re.IGNORECASE)


def exec_quote(word: str) -> str:
    """One ExecStart argument quoted for systemd: taken literally, no specifier or variable expanded."""
    if "\n" in word or "\r" in word or "\x00" in word:
        raise InputError(f"a service argument cannot hold a newline or NUL: {word[:40]!r}")
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


@dataclass(frozen=True)
class UnitFile:
    """A unit's file name, text, and the commands that enable it."""

    name: str
    text: str
    enable: tuple[str, ...]
    socket: str


def unit_file(serve_argv: Sequence[str], *, user: str, system: bool, socket: str, uid: int) -> UnitFile:
    """The unit that runs ``serve_argv`` (``... guest serve`` and its options) as ``user``.

    ``socket`` is the path the agent listens on (``--socket`` is added here); for a system unit
    it must be ``/run/jupyter-cc/<user>/agent.sock`` unless the caller chose another path.
    """
    if not _USER.match(user):
        raise InputError(f"{user!r} is not a user name a unit can run as")
    argv = [*serve_argv, "--socket", socket]
    service = [
        "[Service]",
        "Type=simple",
        *([f"User={user}"] if system else []),
        "UMask=0077",
        "NoNewPrivileges=yes",
        *(_runtime_directory(user, system) if _runtime_managed(socket, user, uid, system) else []),
        # The kernels are the service's children: stopping it stops them (KillMode=control-group).
        "KillMode=control-group",
        "Restart=on-failure",
        "RestartSec=2",
        "ExecStart=" + " ".join(exec_quote(word) for word in argv),
    ]
    text = "\n".join(
        [
            "# Written by 'jupyter-cc guest install-service'.",
            "[Unit]",
            f"Description=jupyter-cc resident guest agent for {user}",
            "After=network.target",
            "",
            *service,
            "",
            "[Install]",
            "WantedBy=multi-user.target" if system else "WantedBy=default.target",
            "",
        ]
    )
    if system:
        name = f"jupyter-cc-agent-{user}.service"
        enable: tuple[str, ...] = ("systemctl daemon-reload", f"systemctl enable --now {name}")
    else:
        name = "jupyter-cc-agent.service"
        enable = (
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {name}",
            f"loginctl enable-linger {user}",
        )
    return UnitFile(name=name, text=text, enable=enable, socket=socket)


def _runtime_directory(user: str, system: bool) -> list[str]:
    folder = f"jupyter-cc/{user}" if system else "jupyter-cc"
    return [f"RuntimeDirectory={folder}", "RuntimeDirectoryMode=0700"]


def _runtime_managed(socket: str, user: str, uid: int, system: bool) -> bool:
    """Whether the socket lies in the folder systemd's RuntimeDirectory= creates for this unit."""
    expected = f"/run/jupyter-cc/{user}/agent.sock" if system else f"/run/user/{uid}/jupyter-cc/agent.sock"
    return socket == expected
