"""``%cc``, ``%%confidential`` and ``%declassify``: one notebook across ordinary and secure compute.

From an ordinary kernel::

    %cc connect PROFILE          # attest the CVM and start a kernel there (same provisioner code)
    %cc status | %cc disconnect
    %%confidential [PROFILE]     # run this cell in the confidential kernel
    %cc push VAR [--as NAME]     # send a value in (safe codecs)
    %cc pull VAR [--as NAME]     # bring back only sealed or declassified values

Inside the confidential kernel::

    %declassify VAR [--reason TEXT]   # snapshot VAR as releasable, audited
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from jupyter_cc.errors import CCError
from jupyter_cc.notebook.args import MagicArgs, parse_line, words
from jupyter_cc.notebook.session import RemoteError, check_name, replay_output

if TYPE_CHECKING:
    from jupyter_cc.notebook.session import ConfidentialSession

__all__ = ["SessionMagics"]


def _audit(event: str, **fields: Any) -> None:
    from jupyter_cc import audit

    audit.record(event, **fields)


def _show_card(state: dict[str, Any]) -> None:
    """Display an attestation card (widget view, HTML and text; see :mod:`jupyter_cc.notebook.card`)."""
    from IPython.display import display

    from jupyter_cc.notebook.card import AttestationCard

    display(AttestationCard(state))  # type: ignore[no-untyped-call]


def _refusal_state(exc: CCError, target: str) -> dict[str, Any]:
    """The card state of a refused connect: one sentence, every failed rule, the claims seen."""
    verdict = getattr(exc, "verdict", None)
    claims = getattr(exc, "claims", None)
    rules = getattr(exc, "rules", None) or (verdict.reasons if verdict is not None else ())
    message = str(getattr(exc, "message", "") or exc)
    return {
        "confidential": False,
        "passed": False,
        "error": message.split("\n", 1)[0],
        "reasons": [str(r) for r in rules],
        "claims": claims.to_json() if claims is not None else {},
        "simulated": bool(getattr(claims, "simulated", False)),
        "verdict": {"passed": False, "policy": verdict.policy if verdict is not None else None},
        "target": target,
    }


@magics_class
class SessionMagics(Magics):
    """Sessions with attested confidential kernels, and moving data across."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session: ConfidentialSession | None = None

    @property
    def _ns(self) -> dict[str, Any]:
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    # --- session ---------------------------------------------------------------------------

    def _connect(self, profile_name: str) -> ConfidentialSession:
        from jupyter_cc.profiles import get_profile

        try:
            profile = get_profile(profile_name)
            if profile.azure is not None:  # an Azure CVM: start it if deallocated (docs/azure.md)
                from jupyter_cc.azure.connect import running_profile

                profile = running_profile(profile, progress=print)
        except CCError as exc:
            raise UsageError(f"%cc connect: {exc.diagnostics()}") from None
        if self.session is not None:
            self.session.close()
            self.session = None
        from jupyter_cc.notebook.session import ConfidentialSession

        session = ConfidentialSession(profile_name, profile.provisioner_config())
        try:
            session.start()
        except CCError as exc:
            _show_card(_refusal_state(exc, profile_name))  # the refusal stays in the saved notebook
            raise UsageError(f"%cc connect {profile_name}: {exc.diagnostics()}") from None
        self.session = session
        state = session.attestation_state
        from jupyter_cc.attest.kinds import SIMULATED_BANNER  # jupyter_cc.attest loads X.509

        label = f" ({SIMULATED_BANNER})" if state.get("simulated") else ""
        verdict = state.get("verdict", {})
        print(
            f"connected to {profile_name}: {state.get('evidence_kind')}{label} verified, "
            f"policy {verdict.get('policy')} passed"
        )
        return session

    def _require_session(self, what: str) -> ConfidentialSession:
        if self.session is None or not self.session.alive:
            raise UsageError(f"%{what}: no confidential session; run %cc connect PROFILE first")
        return self.session

    @line_magic
    def cc(self, line: str) -> Any:
        """%cc connect PROFILE | status | disconnect | push VAR [--as NAME] | pull VAR [--as NAME]."""
        args_words = words(line, "cc")
        if not args_words:
            raise UsageError("%cc: say connect, status, disconnect, push or pull")
        command, rest = args_words[0], args_words[1:]
        if command == "connect":
            if len(rest) != 1:
                raise UsageError("%cc connect: give exactly one PROFILE (see 'jupyter-cc profile list')")
            self._connect(rest[0])
            return None
        if command == "status":
            if self.session is None:
                print("not connected")
                return None
            state = self.session.attestation_state
            alive = "running" if self.session.alive else "not running"
            verdict = state.get("verdict", {})
            print(
                f"session {self.session.name}: kernel {alive}; {state.get('evidence_kind')} "
                f"verified at {state.get('attested_at')} under policy {verdict.get('policy')}"
            )
            _show_card({**state, "target": self.session.name})
            return None
        if command == "disconnect":
            if self.session is not None:
                self.session.close()
                print(f"disconnected from {self.session.name}")
                self.session = None
            return None
        if command in ("push", "pull"):
            parser = MagicArgs(f"cc {command}")
            parser.add_argument("var")
            parser.add_argument("--as", dest="name")
            parser.add_argument("--unsafe-pickle", action="store_true")
            args = parser.parse_args(rest)
            return self._push(args) if command == "push" else self._pull(args)
        raise UsageError(f"%cc: unknown command {command!r}; say connect, status, disconnect, push or pull")

    def _push(self, args: argparse.Namespace) -> None:
        from jupyter_cc.notebook.transfer import pack

        session = self._require_session("cc push")
        try:
            name = check_name(args.name or args.var)
            if args.var not in self._ns:
                raise UsageError(f"%cc push: there is no variable '{args.var}' here")
            text = pack(self._ns[args.var], unsafe_pickle=args.unsafe_pickle)
        except CCError as exc:
            raise UsageError(f"%cc push: {exc.diagnostics()}") from None
        code = (
            "from jupyter_cc.notebook.transfer import unpack as __cc_unpack\n"
            f"{name} = __cc_unpack({text!r}, unsafe_pickle={bool(args.unsafe_pickle)})[0]\n"
            "del __cc_unpack\n"
        )
        reply = session.execute(code, on_output=replay_output)
        if reply["content"]["status"] != "ok":
            content = reply["content"]
            raise RemoteError(
                content.get("ename", "Error"), content.get("evalue", ""), content.get("traceback", [])
            )
        _audit("push", variable=args.var, remote_name=name, session=session.name)
        print(f"pushed '{args.var}' to the confidential kernel as '{name}'")

    def _pull(self, args: argparse.Namespace) -> None:
        from jupyter_cc.notebook.transfer import unpack

        session = self._require_session("cc pull")
        try:
            var = check_name(args.var)
            name = check_name(args.name or args.var)
        except CCError as exc:
            raise UsageError(f"%cc pull: {exc.diagnostics()}") from None
        expression = (
            f"__import__('jupyter_cc.notebook.declassify', fromlist=['export']).export({var!r}, globals())"
        )
        try:
            text = session.evaluate(expression)
        except RemoteError as exc:
            # The confidential kernel said no (PullRefusedError): show its one sentence, not a traceback.
            raise UsageError(f"%cc pull: {exc.evalue}") from None
        value, meta = unpack(text, unsafe_pickle=args.unsafe_pickle)
        self._ns[name] = value
        _audit("pull", variable=var, local_name=name, kind=meta.get("kind"), session=session.name)
        reason = f" (declassified: {meta['reason']})" if meta.get("reason") else ""
        print(f"pulled {meta.get('kind', 'value')} '{var}' as '{name}'{reason}")

    @cell_magic
    def confidential(self, line: str, cell: str) -> None:
        """%%confidential [PROFILE]: run this cell in the attested confidential kernel."""
        target = words(line, "%confidential")
        if len(target) > 1:
            raise UsageError("%%confidential: give at most one PROFILE")
        if target and (self.session is None or self.session.name != target[0] or not self.session.alive):
            self._connect(target[0])
        session = self._require_session("%confidential")
        reply = session.execute(cell, on_output=replay_output)
        content = reply["content"]
        if content.get("status") == "error":
            raise RemoteError(
                content.get("ename", "Error"), content.get("evalue", ""), content.get("traceback", [])
            )

    # --- inside the confidential kernel ----------------------------------------------------

    @line_magic
    def declassify(self, line: str) -> None:
        """%declassify VAR [--reason TEXT] [--unsafe-pickle]: allow VAR's current value out."""
        from jupyter_cc.notebook.declassify import declassify

        parser = MagicArgs("declassify")
        parser.add_argument("var")
        parser.add_argument("--reason", default="")
        parser.add_argument("--unsafe-pickle", action="store_true")
        args = parse_line(parser, line)
        if args.var not in self._ns:
            raise UsageError(f"%declassify: there is no variable '{args.var}' in this kernel")
        if not args.reason:
            raise UsageError("%declassify: say why with --reason TEXT; the reason is kept in the audit log")
        try:
            entry = declassify(args.var, self._ns[args.var], args.reason, unsafe_pickle=args.unsafe_pickle)
        except CCError as exc:
            raise UsageError(f"%declassify: {exc.diagnostics()}") from None
        print(f"declassified '{args.var}' ({entry.sha256[:16]}...): {args.reason}")
