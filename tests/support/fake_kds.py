"""A local AMD KDS on loopback: VCEK by product, hwID and TCB (404 otherwise), cert_chain, crl."""

from __future__ import annotations

from pathlib import Path

from jupyter_cc.attest.certs import load_certificate
from jupyter_cc.attest.snp import TcbVersion, parse_vek
from jupyter_cc.collateral.kds import tcb_params, vcek_url
from tests.support.fake_pcs import Route

__all__ = ["kds_routes"]


def kds_routes(
    vectors: Path, product: str = "Milan", vcek: str = "snp/milan-v2.vcek.der"
) -> dict[str, Route]:
    """Routes serving the real VCEK at its own hwID and TCB, and the real ASK/ARK chain."""
    der = (vectors / vcek).read_bytes()
    info = parse_vek(load_certificate(der))
    assert info.hwid is not None
    tcb = TcbVersion(**{k: v for k, v in info.spl.items()})
    params = {"product": product, "hwid": info.hwid.hex(), **tcb_params(tcb, product)}
    return {
        vcek_url("", params): Route(der, {"Content-Type": "application/pkix-cert"}),
        f"/vcek/v1/{product}/cert_chain": Route(
            (vectors / f"amd/ask_ark_{product.lower()}.pem").read_bytes()
        ),
        f"/vlek/v1/{product}/cert_chain": Route(
            (vectors / f"amd/ask_ark_{product.lower()}_vlek.pem").read_bytes()
        ),
    }
