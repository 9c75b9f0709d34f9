"""Evidence of confidential computing: parse it, verify it to pinned roots, and produce Claims.

One module per evidence family (``snp``, ``tdx``, ``azure``, ``maa``, ``nvidia``), each with a
``parse_*`` function (bytes to an immutable report object, no judgement) and a ``verify_*``
function (signatures and chains to the roots in :mod:`jupyter_cc.attest.roots`, returning
:class:`~jupyter_cc.attest.claims.Claims`). Appraisal against a user's policy is the job of
:mod:`jupyter_cc.policy`; nothing here decides what is acceptable.
"""
