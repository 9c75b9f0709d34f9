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
    "Input",
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
class Input:
    """One input of ``jupyter-cc verify <kind>`` besides the operand: an option and its hint.

    Attributes:
        flag: the option, e.g. ``--vcek``.
        metavar: what its value is, e.g. ``CERT``.
        help: the hint ``--help`` shows.
        required: the kind cannot be verified without it.
        repeat: the option may be given several times.
    """

    flag: str
    metavar: str
    help: str
    required: bool = False
    repeat: bool = False


_AMD_CRL = Input(
    "--crl", "FILE", "AMD KDS CRL (vcek/v1/<product>/crl or vlek/v1/...; DER or PEM); repeatable", repeat=True
)

_TDX_COLLATERAL = (
    Input("--tcb-info", "FILE", "PCS TCB info JSON for the platform's FMSPC"),
    Input("--qe-identity", "FILE", "PCS QE identity JSON"),
    Input("--collateral-chain", "PEM", "issuer chain of the TCB info and QE identity"),
    Input("--crl", "FILE", "a DER CRL (root CA or PCK); repeatable", repeat=True),
)

# An Azure vTPM quote over the guest's PCRs, signed by the HCL's attestation key (HCLAkPub).
_VTPM_QUOTE = (
    Input("--tpm-quote", "FILE", "TPMS_ATTEST of a TPM2_Quote"),
    Input("--tpm-sig", "FILE", "its signature by HCLAkPub"),
    Input("--nonce", "HEX", "expected TPM quote nonce (extraData)"),
)


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
        verifier: ``module:function`` of its verifier, which takes an
            :class:`~jupyter_cc.attest.evidence.Evidence` (imported when first needed, so this
            table stays free of the heavy modules).
        inputs: the options ``jupyter-cc verify <name>`` takes besides the common ones.
        sources: the guest's real evidence sources that can give it, in the order the guest
            tries them (:mod:`jupyter_cc.guest.collectors`); ``auto`` tries all of them.
    """

    name: str
    family: str
    summary: str
    operand: str = "REPORT"
    simulated: bool = False
    azure_vtpm: bool = False
    tee_choice: str | None = None
    trustee_tee: str | None = None
    verifier: str = ""
    inputs: tuple[Input, ...] = ()
    sources: tuple[str, ...] = ()


KINDS: tuple[Kind, ...] = (
    Kind(
        "snp",
        "snp",
        "AMD SEV-SNP attestation report",
        tee_choice="snp",
        trustee_tee="snp",
        verifier="jupyter_cc.attest.snp:verify_evidence",
        sources=("configfs-tsm", "sev-guest"),
        inputs=(
            Input("--vcek", "CERT", "VCEK or VLEK (PEM or DER; may be followed by the chain)"),
            Input("--chain", "PEM", "ASK (or ASVK) then ARK"),
            _AMD_CRL,
        ),
    ),
    Kind(
        "tdx",
        "tdx",
        "Intel TDX quote (v4 or v5)",
        operand="QUOTE",
        tee_choice="tdx",
        trustee_tee="tdx",
        verifier="jupyter_cc.attest.tdx.pck:verify_evidence",
        sources=("configfs-tsm",),
        inputs=_TDX_COLLATERAL,
    ),
    Kind(
        "az-snp-vtpm",
        "snp",
        "Azure SEV-SNP CVM vTPM HCL report",
        operand="HCL_REPORT",
        azure_vtpm=True,
        tee_choice="az-snp-vtpm",
        trustee_tee="az-snp-vtpm",
        verifier="jupyter_cc.attest.azure.verify:verify_snp_evidence",
        sources=("azure-vtpm",),
        inputs=(
            Input("--vcek", "CERT", "VCEK (PEM or DER; may be followed by the chain)", required=True),
            Input("--chain", "PEM", "ASK then ARK"),
            _AMD_CRL,
            *_VTPM_QUOTE,
        ),
    ),
    Kind(
        "az-tdx-vtpm",
        "tdx",
        "Azure TDX CVM vTPM HCL report",
        operand="HCL_REPORT",
        azure_vtpm=True,
        tee_choice="az-tdx-vtpm",
        trustee_tee="az-tdx-vtpm",
        verifier="jupyter_cc.attest.azure.verify:verify_tdx_evidence",
        sources=("azure-vtpm",),
        inputs=(
            Input("--quote", "TD_QUOTE", "the TD quote IMDS made from the report", required=True),
            *_TDX_COLLATERAL,
            *_VTPM_QUOTE,
        ),
    ),
    Kind(
        "maa",
        "maa",
        "Microsoft Azure Attestation token (JWT)",
        operand="TOKEN",
        verifier="jupyter_cc.attest.maa:verify_evidence",
        inputs=(
            Input("--jwks", "FILE", "the signing keys the MAA instance serves", required=True),
            Input("--issuer", "URL", "expected issuer (the MAA instance URL)"),
        ),
    ),
    Kind(
        "nvidia",
        "nvidia",
        "NVIDIA H100 SPDM measurement report",
        trustee_tee="nvidia",
        verifier="jupyter_cc.attest.nvidia:verify_evidence",
        inputs=(
            Input("--chain", "PEM", "the GPU certificate chain, leaf first", required=True),
            Input("--root", "PEM", "the root, if the chain file does not end with it"),
            Input("--nonce", "HEX", "the nonce the report must carry"),
        ),
    ),
    Kind(
        "sim-snp",
        "snp",
        "report from the simulated TEE in this data dir",
        simulated=True,
        tee_choice="sim",
        trustee_tee="sample",
        verifier="jupyter_cc.attest.sim:verify_evidence",
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
