"""Real vectors (../shared/vectors) in the shapes guest-components' attesters send them.

The SNP report goes in virtee/sev's serde shape (:func:`jupyter_cc.kbs.upstream.serialize_snp_report`),
its certificates as ``CertTableEntry`` DER byte lists; the Azure vTPM evidence in the current
(hex quote, base64url report and DER VCEK) or the older (byte lists, PEM VCEK) form.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.decoding import decode_blob
from jupyter_cc.kbs import upstream

__all__ = ["az_snp_primary", "milan", "snp_primary", "tdx_primary"]


def milan(vectors: Path) -> tuple[bytes, bytes]:
    report = decode_blob((vectors / "snp/milan-v2.report.hex").read_bytes(), what="report")
    return report, (vectors / "snp/milan-v2.vcek.der").read_bytes()


def snp_primary(vectors: Path) -> dict[str, Any]:
    report, vcek = milan(vectors)
    chain = load_certificates((vectors / "amd/ask_ark_milan.pem").read_bytes(), what="chain")
    return {
        "attestation_report": upstream.serialize_snp_report(report),
        "cert_chain": [
            {"cert_type": "VCEK", "data": list(vcek)},
            {"cert_type": "ASK", "data": list(chain[0].public_bytes(Encoding.DER))},
            {"cert_type": "ARK", "data": list(chain[1].public_bytes(Encoding.DER))},
        ],
    }


def az_snp_primary(vectors: Path, *, legacy: bool = False) -> dict[str, Any]:
    hcl = (vectors / "azure/snp-vtpm.hcl-report.bin").read_bytes()
    msg = (vectors / "azure/snp-vtpm.tpm-quote.msg").read_bytes()
    sig = (vectors / "azure/snp-vtpm.tpm-quote.sig").read_bytes()
    pem = (vectors / "azure/snp-vtpm.vcek-chain.pem").read_text()
    if legacy:  # older attesters: byte lists and a PEM VCEK
        return {
            "tpm_quote": {"signature": list(sig), "message": list(msg), "pcrs": []},
            "hcl_report": list(hcl),
            "vcek": pem,
        }
    der = load_certificates(pem.encode(), what="vcek")[0].public_bytes(Encoding.DER)
    return {
        "version": 1,
        "tpm_quote": {"signature": sig.hex(), "message": msg.hex(), "pcrs": []},
        "hcl_report": base64.urlsafe_b64encode(hcl).decode(),
        "vcek": base64.urlsafe_b64encode(der).decode(),
    }


def tdx_primary(vectors: Path) -> dict[str, Any]:
    quote = base64.b64encode((vectors / "tdx/spr-e4-v4.quote.bin").read_bytes()).decode()
    return {"cc_eventlog": None, "quote": quote, "aa_eventlog": None}
