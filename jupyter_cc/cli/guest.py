"""``jupyter-cc guest serve`` and ``jupyter-cc guest install-service``: the resident guest agent.

Run inside the CVM. ``serve`` runs :class:`~jupyter_cc.guest.resident.ResidentAgent` in the
foreground (what the systemd unit starts); ``install-service`` writes that unit and prints the
file it wrote and the commands that enable it (it runs no ``systemctl`` itself). Nothing secret
is accepted on either command line.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.cli.serve_transport import add_serve_transport
from jupyter_cc.errors import InputError

__all__ = ["add_commands"]


def _this_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``guest serve`` and ``guest install-service`` to the CLI's subparsers."""
    guest = sub.add_parser("guest", help="the resident guest agent (run inside the CVM)")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True, parser_class=parser_class)
    serve = guest_sub.add_parser("serve", help="run the resident guest agent on a Unix socket")
    _add_serve_options(serve)
    serve.set_defaults(func=_cmd_serve)
    add_serve_transport(guest_sub)
    inst = guest_sub.add_parser("install-service", help="write a systemd unit that runs 'guest serve'")
    _add_serve_options(inst)
    kind = inst.add_mutually_exclusive_group()
    kind.add_argument("--system", action="store_true", help="a system unit with User= (needs root)")
    kind.add_argument("--user-unit", action="store_true", help="a systemd user unit (default without root)")
    inst.add_argument("--run-as", metavar="USER", help="the system unit's User= (default: this user)")
    inst.add_argument("--unit-dir", metavar="DIR", type=Path, help="where to write the unit file")
    inst.set_defaults(func=_cmd_install_service)


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", help="default /run/jupyter-cc/USER/agent.sock")
    p.add_argument("--tee", choices=TEE_CHOICES, default=os.environ.get("JUPYTER_CC_TEE", "auto"))
    p.add_argument("--host-key-file", type=Path, help="the sshd public host key to bind (default /etc/ssh)")
    p.add_argument("--sim-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--python", help="the Python that runs ipykernel (default: this one)")
    p.add_argument("--pool", type=int, default=1, metavar="N", help="kernel processes kept ready (default 1)")
    p.add_argument(
        "--orphan-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a kernel whose connection vanished is kept for a reconnect (default 600; 0: stop)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from jupyter_cc.guest.resident import ResidentAgent, default_socket_path

    if args.pool < 0 or args.orphan_timeout < 0:
        raise InputError("--pool and --orphan-timeout must be 0 or more")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="jupyter-cc guest: %(message)s")
    agent = ResidentAgent(
        Path(args.socket or default_socket_path(_this_user())),
        tee=args.tee,
        host_key_file=args.host_key_file,
        sim_dir=args.sim_dir,
        python=args.python,
        pool_size=args.pool,
        orphan_timeout=args.orphan_timeout,
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: agent.shutdown())
    agent.serve_forever()
    return 0


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """``python -m jupyter_cc.cli.guest serve`` with the options given (``--socket`` is added
    later): this module alone, so the service starts without importing every CLI group."""
    argv = [sys.executable, "-m", "jupyter_cc.cli.guest", "serve", "--tee", args.tee]
    argv += ["--pool", str(args.pool), "--orphan-timeout", f"{args.orphan_timeout:g}"]
    if args.host_key_file:
        argv += ["--host-key-file", str(args.host_key_file)]
    if args.sim_dir:
        argv += ["--sim-dir", str(args.sim_dir)]
    if args.python:
        argv += ["--python", args.python]
    return argv


def _cmd_install_service(args: argparse.Namespace) -> int:
    from jupyter_cc.guest.resident import default_socket_path
    from jupyter_cc.guest.unit import unit_file

    system = args.system or (not args.user_unit and os.geteuid() == 0)
    user = args.run_as or _this_user()
    if args.run_as and not system:
        raise InputError("--run-as names the User= of a system unit", hint="add --system")
    uid = os.geteuid()
    default = default_socket_path(user) if system else f"/run/user/{uid}/jupyter-cc/agent.sock"
    unit = unit_file(_serve_argv(args), user=user, system=system, socket=args.socket or default, uid=uid)
    folder = args.unit_dir or (
        Path("/etc/systemd/system") if system else Path.home() / ".config" / "systemd" / "user"
    )
    path = folder / unit.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(unit.text)
        os.chmod(path, 0o644)
    except OSError as exc:
        raise InputError(
            f"cannot write {path} ({exc.strerror})",
            hint="run as root for a system unit, or use --user-unit or --unit-dir",
        ) from None
    print(f"wrote {path} ({'system unit, User=' + user if system else 'user unit'})")
    print(f"the agent will listen on {unit.socket} (socket 0600, folder 0700)")
    print("enable and start it with:")
    for command in unit.enable:
        print(f"  {command}")
    if unit.socket != default_socket_path(user):
        print(f'set "agent_socket": "{unit.socket}" in the kernelspec\'s provisioner config')
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jupyter_cc.cli.guest serve|install-service ...`` (what the unit runs)."""
    from jupyter_cc.cli import _Parser
    from jupyter_cc.cli.output import failure_line
    from jupyter_cc.errors import CCError

    parser = _Parser(prog="jupyter-cc", description="The jupyter-cc resident guest agent.")
    add_commands(parser.add_subparsers(dest="command", required=True, parser_class=_Parser), _Parser)
    args = parser.parse_args(["guest", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except CCError as exc:
        print(failure_line(exc), file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
