"""Whose quoting enclave signed the quote: Intel's TD QE, or refuse.

The QE report signature proves only that *some* enclave on a genuine platform produced the QE
report: Intel's PCE certifies the REPORT of any non-debug enclave holding the PROVISION_KEY
attribute. An enclave of the host's own making then vouches for an attestation key of its own,
and that key signs any TD report the host likes. What makes a quote Intel's is the QE report's
identity: MRSIGNER, ISVPRODID, and ATTRIBUTES and MISCSELECT under their masks must be those
of Intel's TD quoting enclave.

With QE identity collateral (Intel PCS ``/tdx/certification/v4/qe/identity``, verified to the
pinned root) :func:`~jupyter_cc.attest.tdx.tcb.match_qe_identity` judges the report and its
ISVSVN. Without it, :func:`check_qe_report` judges the report against the identity pinned here,
the facts of Intel's published TD_QE identity (go-tdx-guest, Intel's DCAP quote verification
library), so no quote is ever accepted without the check.

The failure is a :class:`~jupyter_cc.errors.ChainError`: the QE is the link between the PCK
certificate and the key that signs the quote, and a foreign QE breaks that chain of trust.
"""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_cc.attest.tdx.quote import QeReport
from jupyter_cc.errors import ChainError

__all__ = ["INTEL_TD_QE", "PinnedQeIdentity", "check_qe_report"]


@dataclass(frozen=True)
class PinnedQeIdentity:
    """The identity a QE report must show, as Intel's QE identity documents state it."""

    name: str
    mrsigner: bytes
    isvprodid: int
    attributes: bytes
    attributes_mask: bytes
    miscselect: int
    miscselect_mask: int

    def describe(self) -> str:
        return (
            f"{self.name} (MRSIGNER {self.mrsigner.hex()}, ISVPRODID {self.isvprodid}, ATTRIBUTES "
            f"{self.attributes.hex()} under mask {self.attributes_mask.hex()}, MISCSELECT "
            f"0x{self.miscselect:08x} under mask 0x{self.miscselect_mask:08x})"
        )


INTEL_TD_QE = PinnedQeIdentity(
    name="Intel's TD quoting enclave identity TD_QE",
    mrsigner=bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5"),
    isvprodid=2,
    attributes=bytes.fromhex("11000000000000000000000000000000"),
    attributes_mask=bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000"),
    miscselect=0,
    miscselect_mask=0xFFFFFFFF,
)
"""Intel's TD QE, pinned: what a quote's QE report must show when no QE identity is given."""


def _mismatches(report: QeReport, identity: PinnedQeIdentity) -> list[str]:
    out = []
    if report.mrsigner != identity.mrsigner:
        out.append(f"MRSIGNER {report.mrsigner.hex()}")
    if report.isv_prod_id != identity.isvprodid:
        out.append(f"ISVPRODID {report.isv_prod_id}")
    masked = bytes(a & m for a, m in zip(report.attributes, identity.attributes_mask, strict=False))
    if len(report.attributes) != len(identity.attributes_mask) or masked != identity.attributes:
        out.append(f"ATTRIBUTES {report.attributes.hex()} (masked {masked.hex()})")
    misc = report.miscselect & identity.miscselect_mask
    if misc != identity.miscselect:
        out.append(f"MISCSELECT 0x{report.miscselect:08x} (masked 0x{misc:08x})")
    return out


def check_qe_report(report: QeReport, identity: PinnedQeIdentity = INTEL_TD_QE) -> None:
    """Refuse a QE report whose identity is not ``identity`` (default: Intel's TD QE).

    Raises:
        ChainError: MRSIGNER, ISVPRODID, masked ATTRIBUTES or masked MISCSELECT differ; the
            sentence names the identity expected and every value observed that differs.
    """
    wrong = _mismatches(report, identity)
    if wrong:
        raise ChainError(
            f"the quote's QE report shows {', '.join(wrong)}, which is not {identity.describe()}: "
            "its attestation key was vouched for by another enclave, which can sign any TD report",
            hint="obtain the quote from the platform's Intel TD quoting enclave (QGS or Azure IMDS)",
        )
