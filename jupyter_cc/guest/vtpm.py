"""Azure confidential VMs: evidence from the vTPM (tpm2-tools) and the IMDS endpoints.

On an Azure CVM the guest cannot reach the SEV-SNP or TDX firmware directly; the paravisor
(HCL) does, and publishes the result in the vTPM (docs/attestation-formats.md section 3.1):

1. the 64-byte REPORT_DATA is written to NV index 0x01400002 (defined here when absent, with
   owner read/write, as Azure's own tools do); the HCL then refreshes
2. the HCL report in NV index 0x01400001, whose runtime JSON carries that user data and whose
   hardware report binds the runtime JSON. It is read in chunks of at most 1024 bytes (some
   TPMs, swtpm among them, cap one NV read there).
3. A TPM2_Quote by the attestation key at persistent handle 0x81000003 over the SHA-256 PCRs
   0-23, with qualifying data REPORT_DATA[0:32], extends the evidence to the boot chain. The
   signature is returned as tpm2-tools writes it: a marshalled TPMT_SIGNATURE (RSASSA, SHA-256),
   which :func:`jupyter_cc.attest.tpm.verify_quote` accepts.
4. SNP: the VCEK and ASK/ARK come from IMDS ``GET /metadata/THIM/amd/certification``. TDX: the
   TDREPORT (MAC'd for this CPU only) becomes a TD quote through IMDS ``POST /acc/tdquote``.

tpm2-tools run as argument lists (never a shell); the TCTI comes from the caller, else
``TPM2TOOLS_TCTI``, else the kernel's resource manager ``/dev/tpmrm0``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_cc.attest import azure, kinds, tpm
from jupyter_cc.decoding import b64decode_any, b64url_encode
from jupyter_cc.errors import CCError, EvidenceError, InputError
from jupyter_cc.guest.reportcheck import hex_prefix
from jupyter_cc.guest.results import Collected, SourceUnavailableError

__all__ = [
    "AK_HANDLE",
    "HCL_REPORT_INDEX",
    "IMDS_URL",
    "SOURCE",
    "USER_DATA_INDEX",
    "ToolError",
    "Tpm2Tools",
    "collect_azure_vtpm",
    "fetch_td_quote",
    "fetch_thim_certificates",
    "probe_vtpm",
    "resolve_tcti",
]

SOURCE = "azure-vtpm"
HCL_REPORT_INDEX = 0x01400001
USER_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003
NV_CHUNK = 1024
PCRS = "sha256:" + ",".join(str(i) for i in range(24))
IMDS_URL = "http://169.254.169.254"
USER_DATA_ATTRIBUTES = "ownerread|ownerwrite|authread|authwrite"
TOOLS = ("tpm2_nvreadpublic", "tpm2_nvdefine", "tpm2_nvwrite", "tpm2_nvread", "tpm2_quote")
# The Azure vTPM evidence kind of each HCL report type (its hardware family), from the registry.
KINDS = {k.family: k.name for k in kinds.KINDS if k.azure_vtpm}
_SIZE = re.compile(rb"^\s+size:\s*(\d+)\s*$", re.MULTILINE)


def resolve_tcti(tcti: str | None, root: Path = Path("/")) -> str:
    """The TCTI to use: ``tcti``, else ``$TPM2TOOLS_TCTI``, else the kernel's TPM device.

    Raises:
        SourceUnavailableError: none given and ``/dev/tpmrm0`` does not exist under ``root``.
    """
    chosen = tcti or os.environ.get("TPM2TOOLS_TCTI")
    if chosen:
        return chosen
    device = root / "dev/tpmrm0"
    if not device.exists():
        raise SourceUnavailableError(
            SOURCE, f"{device} does not exist (no TPM in this VM) and no TCTI was given"
        )
    return f"device:{device}"


class Tpm2Tools:
    """Runs tpm2-tools against one TCTI; every failure becomes one sentence naming the tool.

    Args:
        tcti: the TCTI configuration (``device:/dev/tpmrm0``, ``swtpm:host=...,port=...``).
        timeout: seconds per command.
    """

    def __init__(self, tcti: str, *, timeout: float = 30.0) -> None:
        self.tcti = tcti
        self.timeout = timeout
        self.calls: list[tuple[str, ...]] = []

    def check_installed(self) -> None:
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            raise SourceUnavailableError(
                SOURCE, f"tpm2-tools is not installed ({', '.join(missing)} not found on PATH)"
            )

    def run(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        """Run ``tool args...``; its stdout, or EvidenceError with the tool's own error line."""
        argv = (tool, *args)
        self.calls.append(argv)
        exe = shutil.which(tool)
        if exe is None:
            raise SourceUnavailableError(SOURCE, f"{tool} (tpm2-tools) is not installed")
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        try:
            done = subprocess.run(  # fixed tool, argument list, never a shell
                [exe, *args],
                input=stdin,
                capture_output=True,
                timeout=self.timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EvidenceError(
                f"{tool} did not finish within {self.timeout:.0f} s (TCTI {self.tcti})", source=SOURCE
            ) from None
        if done.returncode != 0:
            status = (
                f"was killed by signal {-done.returncode}"
                if done.returncode < 0
                else f"failed with exit status {done.returncode}"
            )
            raise ToolError(
                f"{tool} {status}: {_tool_error(done.stderr)}",
                stderr=done.stderr.decode("utf-8", "replace"),
            )
        return done.stdout

    def nv_size(self, index: int) -> int | None:
        """The size of NV ``index``, or None when it is not defined."""
        try:
            out = self.run("tpm2_nvreadpublic", f"0x{index:08x}")
        except ToolError as exc:
            if _not_defined(exc.stderr):
                return None
            raise
        match = _SIZE.search(out)
        if match is None:
            raise EvidenceError(
                f"tpm2_nvreadpublic printed no size for NV index 0x{index:08x}", source=SOURCE
            )
        return int(match.group(1))

    def nv_define(self, index: int, size: int, attributes: str) -> None:
        self.run("tpm2_nvdefine", f"0x{index:08x}", "-C", "o", "-s", str(size), "-a", attributes)

    def nv_write(self, index: int, data: bytes) -> None:
        self.run("tpm2_nvwrite", f"0x{index:08x}", "-C", "o", "-i", "-", stdin=data)

    def nv_read(self, index: int, size: int, *, chunk: int = NV_CHUNK) -> bytes:
        """Read ``size`` bytes of NV ``index`` with owner authorization, ``chunk`` bytes at a time."""
        out = bytearray()
        with tempfile.TemporaryDirectory(prefix="jupyter-cc-nv-") as tmp:
            path = Path(tmp) / "chunk"
            while len(out) < size:
                n = min(chunk, size - len(out))
                self.run(
                    "tpm2_nvread",
                    f"0x{index:08x}",
                    "-C",
                    "o",
                    "-s",
                    str(n),
                    "--offset",
                    str(len(out)),
                    "-o",
                    str(path),
                )
                data = path.read_bytes()
                if len(data) != n:
                    raise EvidenceError(
                        f"tpm2_nvread returned {len(data)} bytes of NV index 0x{index:08x} at offset "
                        f"{len(out)}, expected {n}",
                        source=SOURCE,
                    )
                out += data
        return bytes(out)

    def quote(self, handle: int, nonce: bytes) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of a quote over SHA-256 PCRs 0-23 with ``nonce``."""
        with tempfile.TemporaryDirectory(prefix="jupyter-cc-quote-") as tmp:
            msg, sig = Path(tmp) / "quote.msg", Path(tmp) / "quote.sig"
            self.run(
                "tpm2_quote",
                "-c",
                f"0x{handle:08x}",
                "-l",
                PCRS,
                "-q",
                nonce.hex(),
                "-g",
                "sha256",
                "-m",
                str(msg),
                "-s",
                str(sig),
            )
            return msg.read_bytes(), sig.read_bytes()


class ToolError(EvidenceError):
    """A tpm2-tools command failed; ``stderr`` keeps its whole error output for classification."""

    def __init__(self, message: str, *, stderr: str) -> None:
        super().__init__(message, source=SOURCE)
        self.stderr = stderr


def _tool_error(stderr: bytes) -> str:
    """The tool's own first error line (``ERROR: ...``), not the TSS library's internals."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith("ERROR: ")]
    text = own[0] if own else (lines[-1] if lines else "no error output")
    return text[:300]


def _not_defined(message: str) -> bool:
    # tpm2_nvreadpublic on an undefined index: TPM_RC_HANDLE (0x18b) "the handle is not correct".
    text = message.lower()
    return "0x18b" in text


# --- IMDS -----------------------------------------------------------------------------------


def _http(url: str, *, data: bytes | None, headers: Mapping[str, str], timeout: float, what: str) -> Any:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InputError(f"the IMDS URL {url!r} is not http(s)")
    request = urllib.request.Request(url, data=data, headers=dict(headers))  # noqa: S310 - scheme checked
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS is link-local
    try:
        with opener.open(request, timeout=timeout) as resp:
            body = resp.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise EvidenceError(
            f"{what} at {url} answered HTTP {exc.code}, expected 200", source=SOURCE
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EvidenceError(
            f"{what} at {url} is unreachable ({reason})",
            hint="the Azure instance metadata service answers only inside an Azure VM",
            source=SOURCE,
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        raise EvidenceError(f"{what} at {url} did not answer with JSON", source=SOURCE) from None


def fetch_thim_certificates(imds_url: str = IMDS_URL, *, timeout: float = 5.0) -> tuple[str, str]:
    """(VCEK PEM, ASK+ARK PEM) from IMDS THIM (``GET /metadata/THIM/amd/certification``)."""
    url = imds_url.rstrip("/") + "/metadata/THIM/amd/certification"
    doc = _http(url, data=None, headers={"Metadata": "true"}, timeout=timeout, what="IMDS THIM")
    vcek = doc.get("vcekCert") if isinstance(doc, dict) else None
    chain = doc.get("certificateChain") if isinstance(doc, dict) else None
    if not isinstance(vcek, str) or "BEGIN CERTIFICATE" not in vcek:
        raise EvidenceError(
            f"IMDS THIM at {url} returned no vcekCert PEM (expected JSON with vcekCert and certificateChain)",
            source=SOURCE,
        )
    if not isinstance(chain, str) or "BEGIN CERTIFICATE" not in chain:
        chain = ""
    return vcek, chain


def fetch_td_quote(td_report: bytes, imds_url: str = IMDS_URL, *, timeout: float = 10.0) -> bytes:
    """The TD quote for ``td_report`` from IMDS (``POST /acc/tdquote``)."""
    url = imds_url.rstrip("/") + "/acc/tdquote"
    body = json.dumps({"report": b64url_encode(td_report)}).encode()
    headers = {"Content-Type": "application/json", "Metadata": "true"}
    doc = _http(url, data=body, headers=headers, timeout=timeout, what="IMDS /acc/tdquote")
    quote = doc.get("quote") if isinstance(doc, dict) else None
    if not isinstance(quote, str):
        raise EvidenceError(f"IMDS /acc/tdquote at {url} returned no 'quote' string", source=SOURCE)
    try:
        return b64decode_any(quote, what="the IMDS TD quote")
    except (InputError, binascii.Error) as exc:
        raise EvidenceError(str(exc), source=SOURCE) from None


# --- collection -----------------------------------------------------------------------------


def _hcl_kind(hcl: azure.HclReport) -> str:
    return KINDS[hcl.report_type_name]


def _read_hcl(
    tools: Tpm2Tools, size: int, report_data: bytes, refresh_s: float
) -> tuple[bytes, azure.HclReport]:
    """Read the HCL report until its runtime user-data is ``report_data`` (or time runs out)."""
    deadline = time.monotonic() + refresh_s
    while True:
        raw = tools.nv_read(HCL_REPORT_INDEX, size)
        try:
            hcl = azure.parse_hcl_report(raw)
        except CCError as exc:
            raise EvidenceError(
                f"NV index 0x01400001 does not hold an HCL report: {exc.message}", source=SOURCE
            ) from None
        if hcl.runtime.user_data == report_data:
            return raw, hcl
        if time.monotonic() >= deadline:
            found = hex_prefix(hcl.runtime.user_data) if hcl.runtime.user_data is not None else "absent"
            raise EvidenceError(
                f"the HCL report's runtime user-data is {found}, expected the REPORT_DATA "
                f"{hex_prefix(report_data)} written to NV index 0x01400002: the paravisor did not "
                "refresh the report",
                source=SOURCE,
            )
        time.sleep(0.2)


def _write_user_data(tools: Tpm2Tools, report_data: bytes) -> None:
    size = tools.nv_size(USER_DATA_INDEX)
    if size is None:
        tools.nv_define(USER_DATA_INDEX, len(report_data), USER_DATA_ATTRIBUTES)
    elif size != len(report_data):
        raise EvidenceError(
            f"NV index 0x01400002 is {size} bytes, expected {len(report_data)} for the user data",
            source=SOURCE,
        )
    tools.nv_write(USER_DATA_INDEX, report_data)


def collect_azure_vtpm(
    report_data: bytes,
    *,
    tpm_tcti: str | None = None,
    imds_url: str = IMDS_URL,
    root: Path = Path("/"),
    want: str | None = None,
    tools: Tpm2Tools | None = None,
    refresh_s: float = 3.0,
) -> Collected:
    """Azure CVM evidence (``az-snp-vtpm`` or ``az-tdx-vtpm``) bound to ``report_data``.

    Args:
        report_data: the 64 bytes written as the HCL user data; its first 32 bytes are the
            TPM quote's qualifying data.
        tpm_tcti: the TCTI (see :func:`resolve_tcti`).
        imds_url: the instance metadata service (tests point it at a local server).
        want: ``az-snp-vtpm`` or ``az-tdx-vtpm`` to accept only that kind.
        tools: a :class:`Tpm2Tools` (tests pass a recording one); built from the TCTI if None.
        refresh_s: how long to wait for the paravisor to refresh the HCL report.

    Raises:
        SourceUnavailableError: no TPM, no tpm2-tools, no HCL report (not an Azure CVM), another kind.
        EvidenceError: a tool, the report, the quote or IMDS failed.
    """
    tools = tools or Tpm2Tools(resolve_tcti(tpm_tcti, root))
    tools.check_installed()
    size = _hcl_size(tools)
    _write_user_data(tools, report_data)
    raw, hcl = _read_hcl(tools, size, report_data, refresh_s)
    kind = _hcl_kind(hcl)
    if want is not None and kind != want:
        raise SourceUnavailableError(
            SOURCE, f"the HCL report holds {kind} evidence, not the {want} asked for"
        )
    nonce = report_data[:32]
    message, signature = tools.quote(AK_HANDLE, nonce)
    try:
        tpm.verify_quote(message, signature, hcl.runtime.ak_pub, nonce=nonce)
    except CCError as exc:
        raise EvidenceError(
            "the quote by the key at 0x81000003 does not verify with the HCL report's HCLAkPub: "
            f"{exc.message}",
            source=SOURCE,
        ) from None
    evidence = {
        "report": base64.b64encode(raw).decode("ascii"),
        "tpm_quote": base64.b64encode(message).decode("ascii"),
        "tpm_sig": base64.b64encode(signature).decode("ascii"),
    }
    if kind == "az-snp-vtpm":
        vcek, chain = fetch_thim_certificates(imds_url)
        evidence["vcek"] = vcek
        if chain:
            evidence["chain"] = chain
    else:
        evidence["td_quote"] = base64.b64encode(
            fetch_td_quote(hcl.hw_report[: azure.TD_REPORT_SIZE], imds_url)
        ).decode("ascii")
    notes = (
        "TPM quote by the AK at 0x81000003 over SHA-256 PCRs 0-23 with qualifying data REPORT_DATA[0:32]; "
        "tpm_sig is a TPMT_SIGNATURE (RSASSA, SHA-256)",
    )
    return Collected(kind=kind, source=SOURCE, evidence=evidence, notes=notes)


def _hcl_size(tools: Tpm2Tools) -> int:
    size = tools.nv_size(HCL_REPORT_INDEX)
    if size is None:
        raise SourceUnavailableError(
            SOURCE, "the TPM has no NV index 0x01400001 (no HCL report: not an Azure CVM)"
        )
    if size < azure.VARIABLE_DATA_OFFSET:
        raise SourceUnavailableError(
            SOURCE, f"NV index 0x01400001 is {size} bytes, too small for an HCL report (at least 1236)"
        )
    return size


def probe_vtpm(*, tpm_tcti: str | None = None, root: Path = Path("/"), tools: Tpm2Tools | None = None) -> str:
    """``azure-vtpm`` when tpm2-tools reach a TPM holding an HCL report; SourceUnavailableError otherwise."""
    tools = tools or Tpm2Tools(resolve_tcti(tpm_tcti, root), timeout=10.0)
    tools.check_installed()
    try:
        _hcl_size(tools)
    except SourceUnavailableError:
        raise
    except EvidenceError as exc:  # the TPM did not answer: unusable here
        raise SourceUnavailableError(SOURCE, exc.message) from None
    return SOURCE
