"""Azure confidential VMs: the vTPM's HCL report, its runtime data, and how they bind together.

- :mod:`~jupyter_cc.attest.azure.hcl`: the HCL report's layout, its runtime data (HCLAkPub,
  HCLEkPub, VM configuration, user data), the TDREPORT inside it, and the hash that binds the
  runtime data into the hardware report (no signature involved).
- :mod:`~jupyter_cc.attest.azure.verify`: ``az-snp-vtpm`` and ``az-tdx-vtpm`` evidence verified
  to the pinned AMD or Intel roots, with the optional TPM quote by HCLAkPub.

>>> hcl = verify_hcl_binding(open("hcl-report.bin", "rb").read())   # doctest: +SKIP
>>> hcl.report_type_name, hcl.runtime.vm_configuration["secure-boot"]  # doctest: +SKIP
('snp', True)
"""

from __future__ import annotations

from jupyter_cc.attest.azure.hcl import (
    HASH_TYPES,
    HCL_SIGNATURE,
    REPORT_TYPES,
    TD_REPORT_SIZE,
    VARIABLE_DATA_OFFSET,
    HclReport,
    RuntimeData,
    TdReport,
    bind_td_quote,
    parse_hcl_report,
    parse_runtime_data,
    parse_td_report,
    verify_hcl_binding,
)
from jupyter_cc.attest.azure.verify import verify_az_snp_vtpm, verify_az_tdx_vtpm

__all__ = [
    "HASH_TYPES",
    "HCL_SIGNATURE",
    "REPORT_TYPES",
    "TD_REPORT_SIZE",
    "VARIABLE_DATA_OFFSET",
    "HclReport",
    "RuntimeData",
    "TdReport",
    "bind_td_quote",
    "parse_hcl_report",
    "parse_runtime_data",
    "parse_td_report",
    "verify_az_snp_vtpm",
    "verify_az_tdx_vtpm",
    "verify_hcl_binding",
]
