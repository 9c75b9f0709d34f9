"""``%attest``: fresh, nonce-bound evidence, verified and appraised, shown as a card.

Inside a confidential kernel (``JUPYTER_CC_CONFIDENTIAL=1``) a bare ``%attest`` collects evidence
in this very process, bound to a new 32-byte nonce (design section 6, local transport: the
host-key part is 32 zero bytes), verifies it and appraises it. From an ordinary kernel,
``%attest PROFILE`` or ``%attest [USER@]HOST[:PORT]`` attests a remote CVM over SSH through its
guest agent, with the evidence bound to the host key of that very SSH connection, exactly as the
kernel provisioner does.

The result is an :class:`~jupyter_cc.notebook.card.AttestationCard` (green, amber for simulated, red
with every failed rule); ``--json`` returns the state as a dict instead, and ``--save PATH``
writes the evidence bundle with the verdict so that ``jupyter-cc verify bundle PATH`` can
re-verify it later. A rejection or invalid evidence is a red card, not an exception; what the
user typed wrong (a missing target, an unreadable policy) is one sentence as a ``UsageError``.

>>> %attest                                          # doctest: +SKIP
>>> %attest cvm-prod --policy prod.toml --save evidence.json   # doctest: +SKIP
>>> state = %attest --json                           # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from jupyter_cc.errors import CCError
from jupyter_cc.files import write_atomic
from jupyter_cc.notebook.args import MagicArgs, parse_line

# Loaded when %attest runs, not when the magics load: the card (ipywidgets, ~0.25 s) and the
# verification stack (X.509, the policy) would otherwise slow every confidential kernel's start.
if TYPE_CHECKING:
    from jupyter_cc.notebook.card import AttestationCard
    from jupyter_cc.policy import Policy, Verdict
    from jupyter_cc.remote.attestation import Attestation
    from jupyter_cc.remote.guest import GuestTarget

__all__ = ["AttestMagics", "Outcome", "attest_here", "attest_target", "register", "save_bundle"]

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Outcome:
    """One attestation attempt: the state the card shows and the raw bundle, if one arrived.

    Attributes:
        state: an ``Attestation.to_json()`` dict plus ``passed``, ``verified``, ``reasons``,
            ``errors``, ``notes`` and ``target``; when not passed, ``confidential`` is False and
            ``error`` is one sentence.
        bundle: the evidence bundle exactly as collected or received (None when none arrived).
        verdict: the policy verdict (None when the evidence did not verify).
        policy: the name of the policy it was judged under.
    """

    state: dict[str, Any]
    bundle: bytes | None = None
    verdict: Verdict | None = None
    policy: str = "default"

    @property
    def passed(self) -> bool:
        return bool(self.state.get("passed"))


def _failure(error: str, *, target: str, policy: str, bundle: bytes | None = None) -> Outcome:
    from jupyter_cc.attest.certs import utcnow

    state: dict[str, Any] = {
        "confidential": False,
        "passed": False,
        "verified": False,
        "error": error,
        "reasons": [],
        "errors": [error],
        "claims": {},
        "verdict": {"passed": False, "policy": policy, "reasons": []},
        "attested_at": utcnow().strftime(_TIME_FORMAT),
        "target": target,
    }
    if bundle is not None:
        state["evidence_sha256"] = hashlib.sha256(bundle).hexdigest()
    return Outcome(state=state, bundle=bundle, policy=policy)


def _judge(
    raw: bytes,
    *,
    nonce: bytes,
    host_key_sha256: bytes,
    policy: Policy,
    target: str,
    at: datetime | None = None,
) -> Outcome:
    """One bundle judged by :func:`~jupyter_cc.remote.attestation.judge_bundle`, as an outcome."""
    from jupyter_cc.remote.attestation import judge_bundle

    try:
        attestation = judge_bundle(raw, nonce=nonce, host_key_sha256=host_key_sha256, policy=policy, at=at)
    except CCError as exc:
        return _failure(exc.sentence(), target=target, policy=policy.name, bundle=raw)
    return _outcome(attestation, raw, target)


def _outcome(attestation: Attestation, raw: bytes, target: str) -> Outcome:
    from jupyter_cc.remote.attestation import PolicyRejectedError

    state = attestation.to_json()
    verdict = attestation.verdict
    reasons = [str(r) for r in verdict.reasons]
    state.update(
        passed=verdict.passed,
        verified=True,
        reasons=reasons,
        errors=[],
        notes=list(attestation.notes),
        target=target,
    )
    if not verdict.passed:
        # Genuine evidence the policy does not accept: not a confidential kernel to trust.
        state["confidential"] = False
        state["error"] = PolicyRejectedError(verdict, attestation.claims).diagnostics()
    return Outcome(state=state, bundle=raw, verdict=verdict, policy=verdict.policy)


def attest_here(
    policy: Policy,
    *,
    tee: str = "auto",
    sim_dir: Path | None = None,
    at: datetime | None = None,
) -> Outcome:
    """Collect evidence in this process (a confidential kernel), then verify and appraise it.

    The guest agent's own bundle building with the ``local`` transport (a new nonce, the
    host-key part 32 zero bytes; :func:`~jupyter_cc.guest.bundle.collect_bundle`), judged here
    as any received bundle is.
    """
    from jupyter_cc.attest.binding import NONCE_SIZE, host_key_digest
    from jupyter_cc.guest.bundle import collect_bundle

    target = "this kernel"
    nonce = os.urandom(NONCE_SIZE)
    digest = host_key_digest(None)
    try:
        raw = collect_bundle(nonce, digest, tee=tee, sim_dir=sim_dir)
    except CCError as exc:
        return _failure(exc.sentence(), target=target, policy=policy.name)
    return _judge(raw, nonce=nonce, host_key_sha256=digest, policy=policy, target=target, at=at)


def attest_target(target: GuestTarget, policy: Policy, *, label: str | None = None) -> Outcome:
    """Open ``target``, attest it over that connection, close it; never raises a :class:`CCError`.

    The bundle is bound to the host key seen in this SSH handshake (design section 6 step 4);
    :meth:`GuestLink.request_evidence <jupyter_cc.remote.guest.GuestLink.request_evidence>`
    keeps the raw bundle, which ``--save`` writes.
    """
    where = label or target.host or target.transport
    try:
        link = target.open()
    except CCError as exc:
        return _failure(exc.sentence(), target=where, policy=policy.name)
    try:
        nonce, raw, digest = link.request_evidence()
        return _judge(raw, nonce=nonce, host_key_sha256=digest, policy=policy, target=where)
    except CCError as exc:
        return _failure(exc.sentence(), target=where, policy=policy.name)
    finally:
        link.close()


def save_bundle(outcome: Outcome, path: Path) -> None:
    """Write the bundle plus a top-level ``verdict`` member to ``path``, atomically.

    ``parse_bundle`` keeps the extra member in ``Bundle.extra``, so ``jupyter-cc verify bundle
    PATH`` re-verifies the very evidence; the verdict records what was decided then, and under
    which policy. The file appears whole or not at all (a temporary file and a rename).

    Raises:
        ValueError: no bundle arrived, or what arrived is not a JSON object (nothing to save).
        OSError: the file cannot be written.
    """
    if outcome.bundle is None:
        raise ValueError("no evidence arrived")
    try:
        doc = json.loads(outcome.bundle)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ValueError("what arrived is not an evidence bundle")
    doc["verdict"] = {
        "passed": outcome.passed,
        "verified": bool(outcome.state.get("verified")),
        "policy": outcome.policy,
        "reasons": list(outcome.state.get("reasons", [])),
        "errors": list(outcome.state.get("errors", [])),
        "attested_at": outcome.state.get("attested_at"),
        "evidence_sha256": hashlib.sha256(outcome.bundle).hexdigest(),
    }
    write_atomic(path.expanduser(), json.dumps(doc, indent=1).encode())


def _audit(outcome: Outcome) -> Outcome:
    """Record the attempt in the audit log (design section 7); a failure to do so is a note.

    The attestation itself is read-only (nothing was released), so a log that cannot be written
    does not hide the verdict: the card says the entry is missing instead.
    """
    from jupyter_cc.audit import record

    state = outcome.state
    claims = state.get("claims") or {}
    try:
        record(
            "attest",
            target=state.get("target"),
            passed=outcome.passed,
            policy=outcome.policy,
            tee=claims.get("tee"),
            simulated=bool(state.get("simulated")),
            evidence_sha256=state.get("evidence_sha256"),
            error=state.get("error"),
        )
    except CCError as exc:
        note = f"this attestation is not in the audit log: {exc.diagnostics()}"
        return replace(outcome, state={**state, "notes": [*state.get("notes", []), note]})
    return outcome


def _parser() -> argparse.ArgumentParser:
    parser = MagicArgs("attest")
    parser.add_argument("target", nargs="?", metavar="PROFILE|HOST")
    parser.add_argument("--policy", metavar="FILE")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", metavar="PATH")
    return parser


def _load_policy(path: str | None) -> Policy:
    from jupyter_cc.policy import Policy

    try:
        return Policy.load(Path(path).expanduser()) if path else Policy()
    except CCError as exc:
        raise UsageError(f"%attest: {exc.diagnostics()}") from None


def _host_target(text: str) -> GuestTarget:
    """``[USER@]HOST[:PORT]`` as an SSH target with the defaults (``~/.ssh`` known_hosts)."""
    user, _, host = text.rpartition("@")
    port = 22
    name, sep, digits = host.rpartition(":")
    if sep and digits.isdigit() and ":" not in name:
        host, port = name, int(digits)
    if not host:
        raise UsageError(f"%attest: '{text}' is not a profile name or [USER@]HOST[:PORT]")
    from jupyter_cc.remote.guest import GuestTarget

    return GuestTarget(transport="ssh", host=host, port=port, user=user or None)


def _resolve(name: str) -> tuple[GuestTarget, str | None]:
    """A profile's target and policy file when ``name`` is a profile, else ``name`` as a host.

    Raises:
        UsageError: the config file cannot be read (a broken config is not taken for a host).
    """
    try:
        from jupyter_cc.profiles import load_profiles
    except ImportError:  # a build without profiles: every target is a host
        return _host_target(name), None
    try:
        profiles = load_profiles()
    except CCError as exc:
        raise UsageError(f"%attest: {exc.diagnostics()}") from None
    profile = profiles.get(name)
    if profile is None:
        return _host_target(name), None
    return profile.to_guest_target(), profile.policy


@magics_class
class AttestMagics(Magics):
    """``%attest [PROFILE|HOST] [--policy FILE] [--json] [--save PATH]``."""

    @line_magic
    def attest(self, line: str) -> AttestationCard | dict[str, Any]:
        """%attest [PROFILE|HOST] [--policy FILE] [--json] [--save PATH]: attest and show the verdict.

        Without a target, inside a confidential kernel: this kernel's own TEE, fresh evidence.
        With one: the remote CVM named by a profile, or a host reached over SSH. Returns the card
        (its ``passed`` says whether the policy accepted the TEE), or with ``--json`` the state
        as a dict. The policy is ``--policy FILE``, else the profile's, else
        ``$JUPYTER_CC_POLICY``, else the safe default (no simulated TEE, no debug).
        """
        parser = _parser()
        args = parse_line(parser, line)
        env_policy = os.environ.get("JUPYTER_CC_POLICY") or None
        if args.target:
            target, profile_policy = _resolve(args.target)
            policy = _load_policy(args.policy or profile_policy or env_policy)
            outcome = attest_target(target, policy, label=args.target)
        elif os.environ.get("JUPYTER_CC_CONFIDENTIAL") == "1":
            policy = _load_policy(args.policy or env_policy)
            sim_dir = os.environ.get("JUPYTER_CC_SIM_DIR") or None
            outcome = attest_here(
                policy,
                tee=os.environ.get("JUPYTER_CC_TEE") or "auto",
                sim_dir=Path(sim_dir) if sim_dir else None,
            )
        else:
            raise UsageError(
                "%attest: this is not a confidential kernel, so give the PROFILE or HOST of the CVM "
                "to attest, for example %attest my-cvm"
            )
        outcome = _audit(outcome)  # first, so an attestation is logged even if saving it fails
        if args.save:
            outcome = self._save(outcome, Path(args.save))
        if args.json:
            return outcome.state
        from jupyter_cc.notebook.card import AttestationCard

        return AttestationCard(outcome.state)

    @staticmethod
    def _save(outcome: Outcome, path: Path) -> Outcome:
        """Save the bundle; when there is none, the card says that nothing was saved, and why."""
        try:
            save_bundle(outcome, path)
        except ValueError as exc:
            note = f"{exc}, so nothing was saved to {path}"
            return replace(outcome, state={**outcome.state, "notes": [*outcome.state.get("notes", []), note]})
        except OSError as exc:
            raise UsageError(f"%attest: cannot write {path} ({exc.strerror or exc})") from None
        return replace(outcome, state={**outcome.state, "saved_to": str(path)})


def register(ipython: Any) -> None:
    """Register ``%attest`` with ``ipython`` (called from ``jupyter_cc.load_ipython_extension``)."""
    ipython.register_magics(AttestMagics)
