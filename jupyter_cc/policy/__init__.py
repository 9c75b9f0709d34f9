"""Appraisal: verified :class:`Claims` and a user's :class:`Policy` give a :class:`Verdict`.

The policy file format is a contract (design section 5). Absent keys are not checked, but the
defaults are the safe ones: debug and simulated TEEs are refused unless the policy says
otherwise, and an unknown key is an error (a typo must not silently turn a rule off). Every
failed rule is reported, each with the expected and the observed value.

Every rule a policy states is judged for every kind it accepts, or loading the policy fails
with a :class:`PolicyError` naming the rule and the kind:

- ``[snp]`` rules are judged for SEV-SNP evidence (``snp``, ``az-snp-vtpm``, ``sim-snp``) and
  for MAA tokens (whose ``x-ms-isolation-tee`` claims carry the SNP report's values, see
  :mod:`jupyter_cc.attest.maa`); ``[tdx]`` rules for TDX evidence (``tdx``, ``az-tdx-vtpm``)
  and MAA tokens. Evidence of the other family is judged by its own family's section, so a
  policy accepting both families states rules for both; an MAA token is judged by the section
  of its TEE (``sevsnpvm``, ``tdxvm``), or, when the policy has none for it, by every hardware
  section it states (and fails there: its claims are absent).
- A rule whose claim an accepted kind never carries (``[snp] product`` for MAA tokens, which
  name no AMD product; ``[azure] compliance_status`` for anything but MAA tokens; ``[tdx]
  tcb_status`` for MAA tokens) is an error at load, as is a hardware rule no accepted kind is
  judged by (``[tdx] mrtd`` with ``tee = ["snp"]``).
- ``[azure]``, ``[collateral]`` and ``[gpu]`` are judged for every accepted kind (``[gpu]``: for
  every GPU, :mod:`jupyter_cc.policy.gpu`); a claim that
  the evidence does not carry fails the rule (the collateral rules say the collateral was not
  available).
- Every policy refuses a TCB rated ``Revoked``, collateral more than ``[collateral]
  max_stale_days`` (0) past nextUpdate, and unchecked revocation where it could be checked:
  ``snp``, ``az-snp-vtpm`` (AMD CRL), ``tdx``, ``az-tdx-vtpm`` (Intel PCK and Root CA CRLs) must
  say ``revocation: checked``; MAA tokens and GPU reports carry no such claim, simulated ones
  are judged by ``allow_simulated``; other claims saying ``unchecked`` fail. ``[collateral]
  allow_unchecked_revocation = true`` (for sites that cannot fetch CRLs) lifts this rule.

When ``tee`` is absent, the accepted kinds are all real kinds, narrowed to the families of the
hardware sections that hold rules (a policy pinning an SNP measurement does not accept TDX
evidence by omission), then to the kinds that can be judged by every stated rule. The
simulated kinds that ``allow_simulated = true`` adds are narrowed the same way.

>>> policy = Policy.from_toml('name = "demo"\\nallow_simulated = true')
>>> policy.allow_simulated
True

The package: :mod:`~jupyter_cc.policy.core` (the format, the CPU rules, appraisal) and
:mod:`~jupyter_cc.policy.gpu` (the ``[gpu]`` rules). It does no I/O besides reading a policy
file in :meth:`Policy.load`.
"""

from __future__ import annotations

from jupyter_cc.policy.core import Outcome, Policy, Reason, Verdict, appraise, judge

__all__ = ["Outcome", "Policy", "Reason", "Verdict", "appraise", "judge"]
