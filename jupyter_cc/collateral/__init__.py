"""Collateral: TCB info, QE identity, CRLs, VCEKs and GPU RIMs, fetched, verified and cached.

Design section 12 is the contract. One module per thing it holds:

- :mod:`~jupyter_cc.collateral.settings`: base URLs, offline mode, the cache folder (env vars
  over ``[collateral]`` of ``jupyter_cc.toml``).
- :mod:`~jupyter_cc.collateral.fetch`: the fetcher protocol, the urllib3 default (TLS verified)
  and :class:`~jupyter_cc.collateral.fetch.Client` (timeouts, retries, ``Retry-After``).
- :mod:`~jupyter_cc.collateral.cache`: one JSON file per item, written atomically.
- :mod:`~jupyter_cc.collateral.pcs`, :mod:`~jupyter_cc.collateral.kds`: Intel PCS v4 and AMD
  KDS paths, and the check of each item to the pinned roots.
- :mod:`~jupyter_cc.collateral.nvidia`: NVIDIA's RIM service and OCSP responder (GPU RIMs,
  revocation of the device and RIM chains).
- :mod:`~jupyter_cc.collateral.service`: files, then the cache, then the vendor (unless offline).
- :mod:`~jupyter_cc.collateral.transfer`: export and import for air-gapped sites; prune.
- :mod:`~jupyter_cc.collateral.evidence`: what one piece of evidence needs, for the kernel
  path (``judge_bundle``), ``verify bundle`` and the broker (bundle collateral only a hint).

>>> service = CollateralService()                        # doctest: +SKIP
>>> files = service.tdx(quote_bytes, at=utcnow())          # doctest: +SKIP
>>> verify_tdx(quote_bytes, at=utcnow(), **files.inputs())  # doctest: +SKIP
"""

from __future__ import annotations

from jupyter_cc.collateral.cache import Cache, Entry
from jupyter_cc.collateral.fetch import Client, Fetcher, Response, Urllib3Fetcher
from jupyter_cc.collateral.service import CollateralService, Item, SnpCollateral, TdxCollateralFiles
from jupyter_cc.collateral.settings import Settings, load_settings

__all__ = [
    "Cache",
    "Client",
    "CollateralService",
    "Entry",
    "Fetcher",
    "Item",
    "Response",
    "Settings",
    "SnpCollateral",
    "TdxCollateralFiles",
    "Urllib3Fetcher",
    "load_settings",
]
