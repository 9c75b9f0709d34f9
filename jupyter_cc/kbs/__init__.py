"""The embedded key broker: Trustee's KBS protocol, attestation-gated, policy per resource.

* :mod:`.protocol` — request and response shapes, canonical JSON, the JWE (shared with the
  ``kbs://`` client in :mod:`jupyter_cc.keys.kbs_client`).
* :mod:`.store` — resources in SQLite, key material sealed under a 0600 master key file.
* :mod:`.broker` — the protocol state (sessions, nonces, tokens) and the release decisions.
* :mod:`.sessions` — sessions, nonces and ``/attest`` rate limits, shared by worker processes.
* :mod:`.tls` — the broker's HTTPS certificate and the fingerprint TEEs pin.
* :mod:`.server` — the tornado service (``jupyter-cc kbs serve``) in front of the broker.

The commands (``jupyter-cc kbs serve|info|add-key|list|set-policy|revoke|rotate``) are in
:mod:`jupyter_cc.cli.kbs`.
"""

from __future__ import annotations

from jupyter_cc.kbs.protocol import KbsError, ResourcePath

__all__ = ["KbsError", "ResourcePath"]
