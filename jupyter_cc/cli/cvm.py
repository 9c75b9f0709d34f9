"""``jupyter-cc cvm create|start|stop|deallocate|delete|list|show NAME``: a profile's Azure CVM.

Each command acts on the confidential VM of profile NAME's ``[profiles.NAME.azure]`` table
(:mod:`jupyter_cc.azure.lifecycle`). ``--dry-run`` prints the exact ARM requests (method, resource
path, JSON body) it would send, and needs neither the network nor a credential nor the Azure
SDK::

    jupyter-cc cvm create lab --dry-run       # the checked VM, NIC, VNet (NSG, public IP) requests
    jupyter-cc cvm create lab                 # create, attest, pin the host key
    jupyter-cc cvm deallocate lab             # stop paying for compute
    jupyter-cc cvm start lab                  # start again and attest
    jupyter-cc cvm list lab                   # power state, size, hours running
    jupyter-cc cvm delete lab
    jupyter-cc cvm kernelspec lab --user      # a launcher kernel that starts the CVM if deallocated
    jupyter-cc cvm cull lab                   # (from cron) deallocate after max_hours, warn before;
                                              # idle_minutes after the guest agent's last kernel

``JUPYTER_CC_ARM_ENDPOINT`` names another Resource Manager (a sovereign cloud, a private
endpoint); ``REQUESTS_CA_BUNDLE`` the CA that signs its certificate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jupyter_cc.errors import InputError
from jupyter_cc.profiles import get_profile

if TYPE_CHECKING:
    from jupyter_cc.azure.lifecycle import Cvm, CvmInfo, Progress

__all__ = ["add_commands"]

_ACTIONS = ("create", "start", "stop", "deallocate", "delete", "list", "show")
_HELP = {
    "create": "create the profile's CVM, attest it and pin its host key",
    "start": "start a stopped or deallocated CVM and attest it",
    "stop": "power the CVM off (still billed for compute: prefer deallocate)",
    "deallocate": "deallocate the CVM: no compute charges until started again",
    "delete": "delete the CVM, its disk, NIC and the network jupyter-cc created for it",
    "list": "the CVMs jupyter-cc created in the profile's resource group",
    "show": "the CVM's power state, size, address and hours running",
}


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``cvm create|start|stop|deallocate|delete|list|show`` to the CLI's subparsers."""
    cvm_p = sub.add_parser("cvm", help="confidential VMs in Azure from a profile's azure table")
    cvm_sub = cvm_p.add_subparsers(dest="cvm_command", required=True, parser_class=parser_class)
    for action in _ACTIONS:
        p = cvm_sub.add_parser(action, help=_HELP[action], description=_HELP[action].capitalize() + ".")
        p.add_argument("name", metavar="NAME", help="a profile with an azure table")
        p.add_argument("--dry-run", action="store_true", help="print the ARM requests as JSON; send nothing")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if action in ("create", "start"):
            p.add_argument("--no-attest", action="store_true", help="do not wait for and attest the CVM")
            p.add_argument(
                "--attest-timeout",
                type=float,
                default=900.0,
                metavar="S",
                help="seconds to wait (default 900)",
            )
        p.set_defaults(func=_cmd, cvm_action=action)
    ks = cvm_sub.add_parser(
        "kernelspec",
        help="install a confidential kernelspec for the profile's CVM (started when deallocated)",
    )
    ks.add_argument("name", metavar="NAME", help="a profile with an azure table")
    ks.add_argument("--kernel-name", metavar="K", help="the kernel's name (default cc-NAME)")
    ks.add_argument("--display-name", metavar="TEXT")
    where = ks.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (a venv)")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    ks.set_defaults(func=_cmd_kernelspec)
    cull = cvm_sub.add_parser(
        "cull",
        help="deallocate the CVM past max_hours, or idle_minutes after its last kernel; for cron",
    )
    cull.add_argument("name", metavar="NAME", help="a profile with an azure table")
    cull.add_argument(
        "--last-activity",
        metavar="ISO8601",
        type=_timestamp,
        help="when a kernel last ran code (default: ask the CVM's resident guest agent over SSH)",
    )
    cull.add_argument(
        "--agent-socket",
        metavar="PATH",
        help="the resident agent's socket in the CVM (default /run/jupyter-cc/{user}/agent.sock)",
    )
    cull.set_defaults(func=_cmd_cull)


def _timestamp(text: str) -> float:
    """An ISO 8601 time (with a zone) as seconds since the epoch."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +00:00)")
    return moment.timestamp()


def _cmd_cull(args: argparse.Namespace) -> int:
    """Apply max_hours and idle_minutes (the guest agent's report, or --last-activity); print
    what was decided. Without a report (no resident agent answers) only max_hours applies."""
    _quiet_sdk()
    cvm = _cvm(args.name)
    last_activity = args.last_activity
    if last_activity is None:
        last_activity = _guest_last_activity(cvm, args.agent_socket)
    decision = cvm.cull(
        last_activity,
        warn=lambda line: print(f"warning: {line}", file=sys.stderr),
        judge_idle=last_activity is not None,
    )
    print(f"{decision.action}: {decision.reason}")
    return 0


def _guest_last_activity(cvm: Cvm, agent_socket: str | None) -> float | None:
    """When a kernel last ran on the running CVM, as its resident guest agent reports (None:
    not running, or no report; said on stderr)."""
    import dataclasses

    from jupyter_cc.azure.culling import guest_activity

    info = cvm.show()
    if info.power_state != "running" or not info.address:
        return None
    target = cvm.connect_profile(info).to_guest_target()
    if agent_socket:
        target = dataclasses.replace(target, agent_socket=agent_socket)
    activity = guest_activity(target)
    print(f"guest: {activity.sentence}", file=sys.stderr)
    return activity.last_activity


def _cmd_kernelspec(args: argparse.Namespace) -> int:
    """Install a kernelspec whose provisioner starts the profile's CVM first (``azure_profile``)."""
    from jupyter_cc.kernelspec import install, kernelspec

    profile = get_profile(args.name)
    if profile.azure is None:
        raise InputError(
            f"profile {args.name} has no azure table", hint="use 'jupyter-cc kernelspec install'"
        )
    display = args.display_name or f"Python 3 (Confidential, Azure {profile.azure.vm_name(profile.name)})"
    prefix = sys.prefix if args.sys_prefix else args.prefix
    name = args.kernel_name or f"cc-{profile.name}"
    where = install(name, kernelspec(display, profile.provisioner_config()), user=args.user, prefix=prefix)
    print(f"installed kernelspec {name} in {where}")
    return 0


def _cvm(name: str, progress: Progress | None = None) -> Cvm:
    from jupyter_cc.azure.connect import endpoint_from_env
    from jupyter_cc.azure.lifecycle import Cvm

    return Cvm(get_profile(name), endpoint=endpoint_from_env(), progress=progress)


def _dry_run(cvm: Cvm, action: str) -> list[dict[str, Any]]:
    if action == "create":
        return cvm.plan_create().to_json()
    if action in ("list", "show"):
        path = (
            cvm.names.vm_id
            if action == "show"
            else f"{cvm.names.group_id}/providers/Microsoft.Compute/virtualMachines"
        )
        return [{"kind": "virtualMachine", "method": "GET", "path": path}]
    return [step.to_json() for step in cvm.plan_action(action)]


def _tqdm() -> Any:
    """tqdm's bar class, or None without the ``jupyter-cc[azure]`` extra."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


@contextmanager
def _progress_bar(action: str, enabled: bool) -> Iterator[Progress | None]:
    """A tqdm bar on stderr (one tick per step) on a terminal; plain lines to a log or a pipe,
    or when tqdm is not installed."""
    if not enabled:
        yield None
        return
    bar_class = _tqdm() if sys.stderr.isatty() else None
    if bar_class is None:
        yield lambda line: print(f"{action}: {line}", file=sys.stderr)
        return
    with bar_class(
        desc=action, unit="step", file=sys.stderr, bar_format="{desc}: {n} steps [{elapsed}]"
    ) as bar:

        def tick(line: str) -> None:
            bar.set_description_str(line)
            bar.update(1)

        yield tick


def _policy(cvm: Cvm, args: argparse.Namespace) -> Any:
    if getattr(args, "no_attest", False):
        return None
    from jupyter_cc.policy import Policy

    return Policy.load(cvm.profile.policy) if cvm.profile.policy else Policy()


def _run(cvm: Cvm, args: argparse.Namespace) -> Any:
    action = args.cvm_action
    timeout = getattr(args, "attest_timeout", 900.0)
    if action in ("create", "start"):
        run = cvm.create if action == "create" else cvm.start
        info = run(policy=_policy(cvm, args), attest_timeout=timeout)
        if cvm.remember_address(info):
            print(f"profile {cvm.profile.name} now reaches the CVM at {info.address}", file=sys.stderr)
        return info
    if action == "delete":
        return cvm.delete()
    if action == "list":
        return cvm.list()
    method = {"stop": cvm.stop, "deallocate": cvm.deallocate, "show": cvm.show}[action]
    return method()


def _print(result: Any, action: str, as_json: bool) -> None:
    if action == "delete":
        print(
            json.dumps({"deleted": result}, indent=2)
            if as_json
            else "\n".join(f"deleted {r}" for r in result)
        )
        return
    infos: list[CvmInfo] = result if isinstance(result, list) else [result]
    if as_json:
        data = [i.to_json() for i in infos]
        print(json.dumps(data if action == "list" else data[0], indent=2))
        return
    rows = [("NAME", "POWER", "SIZE", "LOCATION", "HOURS", "ADDRESS")]
    for i in infos:
        hours = f"{i.hours_running:.2f}" if i.hours_running is not None else "-"
        rows.append((i.name, i.power_state, i.size, i.location, hours, i.address or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _quiet_sdk() -> None:
    """Keep the Azure SDK's own log lines (each credential it tried, each retry) off stderr: the
    CLI reports a failure as one sentence."""
    sdk = logging.getLogger("azure")
    if not sdk.handlers:
        sdk.addHandler(logging.NullHandler())
    sdk.propagate = False


def _cmd(args: argparse.Namespace) -> int:
    action = args.cvm_action
    _quiet_sdk()
    if args.dry_run:
        print(json.dumps({"profile": args.name, "requests": _dry_run(_cvm(args.name), action)}, indent=2))
        return 0
    with _progress_bar(action, action not in ("list", "show")) as progress:
        result = _run(_cvm(args.name, progress), args)
    _print(result, action, args.json)
    return 0
