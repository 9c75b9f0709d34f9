"""``jupyter-cc attest HOST`` and ``jupyter-cc kernelspec install|install-sim``: reach a CVM.

Both describe a CVM the same way (transport, sshd, the Python with jupyter-cc in the guest,
the TEE to collect, the policy); :func:`_add_target_options` declares those options once and
:func:`_guest_target` turns them into the :class:`~jupyter_cc.remote.guest.GuestTarget` that
``attest`` opens. ``kernelspec install`` writes the same fields into a kernelspec for the
confidential provisioner.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jupyter_cc.attest.kinds import SIMULATED_BANNER, TEE_CHOICES
from jupyter_cc.cli.output import failure_line, summary
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.policy import Policy

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``attest`` and ``kernelspec install|install-sim`` to the CLI's subparsers."""
    attest_p = sub.add_parser("attest", help="attest a CVM through its guest agent and print the verdict")
    attest_p.add_argument("host", metavar="HOST", help="the CVM's address, or 'local' for this machine")
    _add_target_options(attest_p)
    attest_p.add_argument("--sim-dir", metavar="PATH_ON_CVM", help=argparse.SUPPRESS)
    attest_p.add_argument(
        "--agent-socket",
        metavar="PATH_ON_CVM",
        help="the resident agent's socket ({user}: the SSH user; '' to start one per connection)",
    )
    attest_p.add_argument("--json", action="store_true", help="print one JSON object")
    attest_p.set_defaults(func=_cmd_attest)

    ks = sub.add_parser("kernelspec", help="install confidential kernelspecs")
    ks_sub = ks.add_subparsers(dest="ks_command", required=True, parser_class=parser_class)
    inst = ks_sub.add_parser("install", help="install a kernelspec that uses confidential-provisioner")
    inst.add_argument("name", metavar="NAME")
    inst.add_argument("--display-name", metavar="TEXT")
    inst.add_argument("--host", metavar="HOST")
    _add_target_options(inst)
    inst.add_argument("--sim-dir", metavar="PATH_ON_CVM", help=argparse.SUPPRESS)
    _add_install_location(inst)
    inst.set_defaults(func=_cmd_kernelspec_install)
    inst_sim = ks_sub.add_parser(
        "install-sim", help=f"install the local simulated kernel ({SIMULATED_BANNER})"
    )
    inst_sim.add_argument("name", metavar="NAME", nargs="?", default="python3-confidential-sim")
    _add_install_location(inst_sim)
    inst_sim.set_defaults(func=_cmd_kernelspec_install_sim)
    from jupyter_cc.cli.pod_kernelspec import add_install_pod

    add_install_pod(ks_sub, _add_install_location)


def _add_target_options(p: argparse.ArgumentParser, *, transport: bool = True) -> None:
    if transport:
        p.add_argument("--transport", choices=("ssh", "local"), default="ssh")
    p.add_argument("--port", type=int, default=22, help="sshd port of the CVM")
    p.add_argument("--ssh-user", metavar="USER")
    p.add_argument("--identity-file", metavar="PATH")
    p.add_argument("--known-hosts", metavar="PATH", default=None)
    p.add_argument(
        "--host-key-file", metavar="PATH_ON_CVM", help="sshd public key to bind (default /etc/ssh)"
    )
    p.add_argument("--python", metavar="PATH_ON_CVM", help="Python with jupyter-cc in the CVM")
    p.add_argument("--tee", choices=TEE_CHOICES, default="auto")
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: valid, no debug, no simulated)")


def _add_install_location(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (a venv)")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")


def _guest_target(args: argparse.Namespace) -> Any:
    """The :class:`~jupyter_cc.remote.guest.GuestTarget` the options name, built the way a
    profile's is (:meth:`GuestTarget.from_options`); without ``--known-hosts`` no file is read."""
    from jupyter_cc.remote.guest import GuestTarget

    return GuestTarget.from_options(
        transport=args.transport,
        host=args.host,
        port=args.port,
        user=args.ssh_user,
        identity_file=args.identity_file,
        known_hosts=args.known_hosts,
        host_key_file=args.host_key_file,
        python=args.python,
        tee=args.tee,
        sim_dir=getattr(args, "sim_dir", None),
        agent_socket=getattr(args, "agent_socket", None),
    )


def agent_report(link: Any) -> dict[str, Any]:
    """What the guest agent says of itself: resident or per connection, its warm pool."""
    try:
        hello = link.agent.request("hello")
    except CCError:
        return {"resident": bool(getattr(link, "resident", False)), "pool": None}
    pool = hello.get("pool")
    return {"resident": hello.get("resident") is True, "pool": pool if isinstance(pool, dict) else None}


def _agent_line(agent: dict[str, Any]) -> str:
    if not agent["resident"]:
        return "guest agent: started for this connection (no resident agent)"
    pool = agent["pool"] or {}
    idle_mb = int(pool.get("idle_rss_bytes") or 0) / 1e6
    return (
        f"guest agent: resident, warm pool {pool.get('ready', 0)} of {pool.get('size', 0)} ready"
        f" ({idle_mb:.1f} MB idle)"
    )


def _cmd_attest(args: argparse.Namespace) -> int:
    from jupyter_cc.remote.attestation import PolicyRejectedError

    if args.host == "local":
        args.transport = "local"
    policy = Policy.load(args.policy) if args.policy else Policy()
    target = _guest_target(args)
    out: dict[str, Any] = {"host": args.host, "verified": False, "passed": False, "claims": {}, "reasons": []}
    link = None
    try:
        link = target.open()
        result = link.attest(policy)
        agent = agent_report(link)
    except PolicyRejectedError as exc:
        out.update(verified=True, claims=exc.claims.to_json(), reasons=[str(r) for r in exc.verdict.reasons])
        out["errors"] = []
        if args.json:
            print(json.dumps(out, indent=2))
        print(failure_line(exc), file=sys.stderr)
        return 1
    except CCError as exc:
        out["errors"] = [exc.diagnostics()]
        if args.json:
            print(json.dumps(out, indent=2))
        print(failure_line(exc), file=sys.stderr)
        return exc.exit_status
    finally:
        if link is not None:
            link.close()
    state = result.to_json()
    out.update(verified=True, passed=True, claims=state["claims"], reasons=[], errors=[], attestation=state)
    out["agent"] = agent
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        label = f"{result.claims.kind} TEE at {args.host}"
        if result.claims.simulated:
            label += f" ({SIMULATED_BANNER})"
        print(f"{label}: VERIFIED (evidence from {result.source})")
        print("\n".join(summary(result.claims)))
        for note in result.notes:
            print(f"  note: {note}")
        print(f"policy {result.verdict.policy}: PASSED")
        print(_agent_line(agent))
    return 0


def _cmd_kernelspec_install(args: argparse.Namespace) -> int:
    from jupyter_cc.kernelspec import install, kernelspec, provisioner_config

    config = provisioner_config(
        args.transport,
        args.tee,
        host=args.host,
        port=args.port if args.port != 22 else None,
        user=args.ssh_user,
        identity_file=args.identity_file,
        known_hosts=args.known_hosts,
        host_key_file=args.host_key_file,
        policy=args.policy,
        remote_python=args.python,
        sim_dir=args.sim_dir,
    )
    if args.transport == "ssh" and not args.host:
        raise InputError(
            "--transport ssh needs --host", hint="pass the CVM's address, or use --transport local"
        )
    if args.tee == "sim" and not args.policy:
        raise InputError(
            "--tee sim needs a --policy with allow_simulated = true",
            hint="use 'jupyter-cc kernelspec install-sim' for the simulated demo kernel",
        )
    display = args.display_name or f"Python 3 (Confidential {args.host or 'local'})"
    where = install(args.name, kernelspec(display, config), user=args.user, prefix=_prefix(args))
    print(f"installed kernelspec {args.name} in {where}")
    return 0


def _cmd_kernelspec_install_sim(args: argparse.Namespace) -> int:
    from jupyter_cc.kernelspec import install, kernelspec, simulated_policy_path

    config = {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())}
    display = "Confidential Python (simulated)"
    where = install(args.name, kernelspec(display, config), user=args.user, prefix=_prefix(args))
    print(f"installed kernelspec {args.name} in {where} ({SIMULATED_BANNER})")
    return 0


def _prefix(args: argparse.Namespace) -> str | None:
    if args.sys_prefix:
        return sys.prefix
    return str(args.prefix) if args.prefix else None
