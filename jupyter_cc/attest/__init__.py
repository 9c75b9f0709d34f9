"""Evidence of confidential computing: parse it, verify it to pinned roots, and produce Claims.

This is the public Python API of design section 14, flat::

    from jupyter_cc.attest import Evidence, verify, parse_bundle, verify_bundle

- :data:`KINDS`: the registry of evidence kinds (:mod:`~jupyter_cc.attest.kinds`).
- :class:`Evidence` and :func:`verify`: one entry point for every kind; the kind's verifier
  checks signatures and chains to the roots in a :class:`TrustStore` of :class:`TrustAnchor`
  and returns :class:`Claims`.
- :func:`parse_bundle`, :func:`verify_bundle`, :func:`serialize_bundle`: the guest agent's
  evidence bundle and its binding to the verifier's nonce and the SSH host key.

Underneath, one module per evidence family (``snp``, ``tdx``, ``azure``, ``maa``, ``nvidia``,
``sim``), each with a ``parse_*`` function (bytes to an immutable report object, no judgement)
and a ``verify_*`` function. Appraisal against a user's policy is the job of
:mod:`jupyter_cc.policy`; nothing here decides what is acceptable.
"""

from __future__ import annotations

from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.evidence import Evidence, parse_bundle, serialize_bundle, verify, verify_bundle
from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.attest.roots import TrustAnchor, TrustStore

__all__ = [
    "KINDS",
    "Claims",
    "Evidence",
    "TrustAnchor",
    "TrustStore",
    "parse_bundle",
    "serialize_bundle",
    "verify",
    "verify_bundle",
]
