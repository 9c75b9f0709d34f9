"""Intel TDX DCAP quotes (versions 4 and 5): parse them and verify them to the Intel SGX Root CA.

The package has one module per step, each usable alone:

- :mod:`~jupyter_cc.attest.tdx.quote`: the byte layout; :func:`parse_quote` (no judgement).
- :mod:`~jupyter_cc.attest.tdx.pck`: the PCK chain in the quote to the pinned root, the quote
  and QE report signatures, the QE's binding of the attestation key: :func:`verify_quote`, and
  :func:`verify_tdx` for quote bytes plus optional collateral (as ``jupyter-cc verify tdx``).
- :mod:`~jupyter_cc.attest.tdx.qe`: Intel's TD quoting enclave identity, pinned, which every
  quote's QE report must show when no QE identity collateral is given.
- :mod:`~jupyter_cc.attest.tdx.collateral`: Intel PCS TCB info, QE identity and CRLs as served.
- :mod:`~jupyter_cc.attest.tdx.tcb`: whether that collateral is genuine and fresh, and the
  platform's and QE's TCB status in it.

>>> quote = parse_quote(open("quote.bin", "rb").read())   # doctest: +SKIP
>>> claims = verify_quote(quote, at=utcnow())             # doctest: +SKIP
>>> claims.get("mrtd")                                     # doctest: +SKIP
"""

from __future__ import annotations

from jupyter_cc.attest.tdx.pck import pck_chain, pck_chain_of, verify_quote, verify_tdx
from jupyter_cc.attest.tdx.quote import TdxQuote, parse_quote, quote_details

__all__ = [
    "TdxQuote",
    "parse_quote",
    "pck_chain",
    "pck_chain_of",
    "quote_details",
    "verify_quote",
    "verify_tdx",
]
