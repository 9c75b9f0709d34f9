"""The registry of evidence kinds and TEE choices: every list of them in jupyter-cc reads from here.

An evidence kind (design section 4) is what ``jupyter-cc verify`` takes and what a verifier
turns into :class:`~jupyter_cc.attest.claims.Claims`. A TEE choice is what the guest agent is
asked to collect (``--tee``, the provisioner's and the spawner's ``tee``, a profile's ``tee``):
``auto`` or one collectable kind, the simulated one by its short name ``sim``.

Adding a TEE means adding a :class:`Kind` here and its verifier; the CLI, the policy format,
the guest agent, the broker and the notebook face pick it up from this table.

>>> [k.name for k in KINDS if k.family == "snp"]
['snp', 'az-snp-vtpm', 'sim-snp']
>>> TEE_CHOICES
('auto', 'snp', 'tdx', 'az-snp-vtpm', 'az-tdx-vtpm', 'sim')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AZURE_KINDS",
    "KINDS",
    "KIND_NAMES",
    "REAL_KINDS",
    "SIMULATED_BANNER",
    "SIMULATED_KINDS",
    "SNP_PRODUCTS",
    "TCB_STATUSES",
    "TEE_CHOICES",
    "Kind",
    "kind",
]

SIMULATED_BANNER = "SIMULATED — not a hardware TEE"
"""The one label every face shows beside simulated evidence (design section 9)."""

SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
"""AMD EPYC product names a VCEK can name, in the order AMD released them."""

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
"""Intel's TCB statuses (TCB info and QE identity), best first."""


@dataclass(frozen=True)
class Kind:
    """One evidence kind.

    Attributes:
        name: the kind as the CLI, bundles, claims and policies spell it.
        family: the TEE behind it for policy sections: ``snp``, ``tdx``, else the kind itself.
        summary: one line for ``jupyter-cc verify --help``.
        operand: what the positional argument of ``jupyter-cc verify <kind>`` is.
        simulated: evidence from the simulated TEE; only ``allow_simulated = true`` accepts it.
        azure_vtpm: an Azure vTPM kind, whose guest-controlled bytes are the runtime user-data.
        tee_choice: the guest agent's ``--tee`` value that collects it (None: not collected).
        trustee_tee: Trustee's ``kbs_types::Tee`` name for it in the KBS protocol.
    """

    name: str
    family: str
    summary: str
    operand: str = "REPORT"
    simulated: bool = False
    azure_vtpm: bool = False
    tee_choice: str | None = None
    trustee_tee: str | None = None


KINDS: tuple[Kind, ...] = (
    Kind("snp", "snp", "AMD SEV-SNP attestation report", tee_choice="snp", trustee_tee="snp"),
    Kind("tdx", "tdx", "Intel TDX quote (v4 or v5)", operand="QUOTE", tee_choice="tdx", trustee_tee="tdx"),
    Kind(
        "az-snp-vtpm",
        "snp",
        "Azure SEV-SNP CVM vTPM HCL report",
        operand="HCL_REPORT",
        azure_vtpm=True,
        tee_choice="az-snp-vtpm",
        trustee_tee="az-snp-vtpm",
    ),
    Kind(
        "az-tdx-vtpm",
        "tdx",
        "Azure TDX CVM vTPM HCL report",
        operand="HCL_REPORT",
        azure_vtpm=True,
        tee_choice="az-tdx-vtpm",
        trustee_tee="az-tdx-vtpm",
    ),
    Kind("maa", "maa", "Microsoft Azure Attestation token (JWT)", operand="TOKEN"),
    Kind("nvidia", "nvidia", "NVIDIA H100 SPDM measurement report", trustee_tee="nvidia"),
    Kind(
        "sim-snp",
        "snp",
        "report from the simulated TEE in this data dir",
        simulated=True,
        tee_choice="sim",
        trustee_tee="sample",
    ),
)

KIND_NAMES = tuple(k.name for k in KINDS)
REAL_KINDS = tuple(k.name for k in KINDS if not k.simulated)
SIMULATED_KINDS = tuple(k.name for k in KINDS if k.simulated)
AZURE_KINDS = tuple(k.name for k in KINDS if k.azure_vtpm)
TEE_CHOICES = ("auto", *(k.tee_choice for k in KINDS if k.tee_choice is not None))

_BY_NAME = {k.name: k for k in KINDS}


def kind(name: str) -> Kind | None:
    """The registered kind called ``name``, or None."""
    return _BY_NAME.get(name)
