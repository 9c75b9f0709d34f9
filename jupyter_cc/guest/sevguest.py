"""``/dev/sev-guest``: SEV-SNP reports through the sev-guest driver's ioctls.

The structures follow the Linux UAPI ``include/uapi/linux/sev-guest.h``:

* ``snp_report_req``: ``user_data[64]``, ``vmpl u32``, ``rsvd[28]`` (96 bytes);
* ``snp_report_resp``: ``data[4000]``, which holds the firmware's MSG_REPORT_RSP:
  ``status u32``, ``report_size u32``, 24 reserved bytes, then the report;
* ``snp_ext_report_req``: ``snp_report_req``, ``certs_address u64``, ``certs_len u32``;
* ``snp_guest_request_ioctl``: ``msg_version u8``, ``req_data u64``, ``resp_data u64``,
  ``exitinfo2 u64`` (low half the firmware error, high half the VMM error).

SNP_GET_EXT_REPORT also returns the host's certificate table (VCEK, ASK, ARK) when the host
stored one; where the kernel refuses it, SNP_GET_REPORT gives the report alone. The ioctl
call is injectable (``ioctl=``) so tests drive the packing and unpacking with a fake device.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from pathlib import Path

from jupyter_cc.attest import snp
from jupyter_cc.errors import EvidenceError
from jupyter_cc.guest.certtable import NO_CERTS_NOTE, snp_evidence
from jupyter_cc.guest.reportcheck import check_snp_report
from jupyter_cc.guest.results import Collected, SourceUnavailableError

__all__ = [
    "DEVICE",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "SOURCE",
    "IoctlFn",
    "SnpExtReportReq",
    "SnpGuestRequestIoctl",
    "SnpReportReq",
    "SnpReportResp",
    "collect_sev_guest",
    "parse_report_response",
    "probe_sev_guest",
]

SOURCE = "sev-guest"
DEVICE = Path("dev/sev-guest")


class SnpReportReq(ctypes.Structure):
    """``struct snp_report_req``."""

    _fields_ = (
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    )


class SnpReportResp(ctypes.Structure):
    """``struct snp_report_resp``."""

    _fields_ = (("data", ctypes.c_uint8 * 4000),)


class SnpExtReportReq(ctypes.Structure):
    """``struct snp_ext_report_req``."""

    _fields_ = (
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    )


class SnpGuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (``exitinfo2`` as one u64)."""

    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def _iowr(type_: str, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(type_) << 8) | nr


SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))
MSG_VERSION = 1
PAGE = 4096
CERTS_MAX = 0x4000  # the driver's SEV_FW_BLOB_MAX_SIZE; certs_len must be a multiple of a page
RESPONSE_HEADER = 0x20
VMM_ERR_INVALID_LEN = 1
FW_STATUS = {0x16: "invalid parameter", 0x27: "invalid key"}

IoctlFn = Callable[[int, int, SnpGuestRequestIoctl], object]
"""``(fd, request, arg)``: performs the ioctl, raising OSError on failure, writing into ``arg``."""


def _real_ioctl(fd: int, request: int, arg: SnpGuestRequestIoctl) -> object:
    return fcntl.ioctl(fd, request, arg, True)


def parse_report_response(data: bytes, report_data: bytes) -> bytes:
    """The report from a MSG_REPORT_RSP (``snp_report_resp.data``), checked.

    Raises:
        EvidenceError: a firmware error status, an impossible size, or another REPORT_DATA.
    """
    if len(data) < RESPONSE_HEADER:
        raise EvidenceError(
            f"the report response is {len(data)} bytes, shorter than its {RESPONSE_HEADER}-byte header",
            source=SOURCE,
        )
    status, size = struct.unpack_from("<II", data, 0)
    if status != 0:
        name = FW_STATUS.get(status, "unknown status")
        raise EvidenceError(
            f"the SEV firmware answered the report request with status 0x{status:x} ({name}), expected 0",
            hint="the requested VMPL may be below this guest's; check the kernel log",
            source=SOURCE,
        )
    if size != snp.REPORT_SIZE or RESPONSE_HEADER + size > len(data):
        raise EvidenceError(
            f"the firmware says the report is {size} bytes, expected {snp.REPORT_SIZE} within the "
            f"{len(data) - RESPONSE_HEADER} bytes of the response",
            source=SOURCE,
        )
    return check_snp_report(data[RESPONSE_HEADER : RESPONSE_HEADER + size], report_data, SOURCE)


def _errors(exitinfo2: int) -> str:
    return f"firmware error 0x{exitinfo2 & 0xFFFFFFFF:x}, VMM error 0x{exitinfo2 >> 32:x}"


def _request(
    fd: int, ioctl: IoctlFn, report_data: bytes, vmpl: int, certs_len: int | None
) -> tuple[bytes, bytes | None, int]:
    """One ioctl: (response data, certificate buffer or None, certs_len the kernel wants)."""
    base = SnpReportReq()
    ctypes.memmove(base.user_data, report_data, 64)
    base.vmpl = vmpl
    resp = SnpReportResp()
    certs: ctypes.Array[ctypes.c_uint8] | None = None
    req: SnpReportReq | SnpExtReportReq
    if certs_len is None:
        req, request = base, SNP_GET_REPORT
    else:
        certs = (ctypes.c_uint8 * certs_len)()
        req = SnpExtReportReq(data=base, certs_address=ctypes.addressof(certs), certs_len=certs_len)
        request = SNP_GET_EXT_REPORT
    arg = SnpGuestRequestIoctl(
        msg_version=MSG_VERSION, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp)
    )
    try:
        ioctl(fd, request, arg)
    except OSError as exc:
        wanted = req.certs_len if isinstance(req, SnpExtReportReq) else 0
        if arg.exitinfo2 >> 32 == VMM_ERR_INVALID_LEN and certs_len is not None and wanted > certs_len:
            return b"", None, wanted
        raise _ioctl_error(exc, request, arg.exitinfo2) from None
    return bytes(resp.data), bytes(certs) if certs is not None else None, 0


def _ioctl_error(exc: OSError, request: int, exitinfo2: int) -> OSError | EvidenceError:
    if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP) and request == SNP_GET_EXT_REPORT:
        return exc  # the caller falls back to SNP_GET_REPORT
    name = "SNP_GET_EXT_REPORT" if request == SNP_GET_EXT_REPORT else "SNP_GET_REPORT"
    return EvidenceError(
        f"the {name} ioctl failed with {errno.errorcode.get(exc.errno or 0, exc.errno)} "
        f"({_errors(exitinfo2)}), expected success",
        source=SOURCE,
    )


def _open(device: Path) -> int:
    if not device.exists():
        raise SourceUnavailableError(
            SOURCE, f"{device} does not exist (not an SEV-SNP guest, or the sev-guest driver is not loaded)"
        )
    try:
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        raise SourceUnavailableError(
            SOURCE,
            f"opening {device} for reading and writing was refused (permission denied)",
            hint="run the agent as root",
        ) from None
    except OSError as exc:
        raise SourceUnavailableError(
            SOURCE, f"opening {device} failed ({os.strerror(exc.errno or 0)})"
        ) from None


def collect_sev_guest(
    report_data: bytes,
    *,
    root: Path = Path("/"),
    vmpl: int = 0,
    ioctl: IoctlFn | None = None,
) -> Collected:
    """An SEV-SNP report (kind ``snp``) for ``report_data``, with the host's certificates if any.

    Raises:
        SourceUnavailableError: no device or no permission.
        EvidenceError: the ioctl or the firmware failed, or the response is malformed.
    """
    call: IoctlFn = ioctl or _real_ioctl
    fd = _open(root / DEVICE)
    notes: tuple[str, ...] = ()
    try:
        certs_len: int | None = CERTS_MAX
        for _ in range(2):
            try:
                data, table, wanted = _request(fd, call, report_data, vmpl, certs_len)
            except OSError:
                certs_len = None
                data, table, wanted = _request(fd, call, report_data, vmpl, None)
                notes = (
                    "the kernel refused SNP_GET_EXT_REPORT, so no host certificates came with the report",
                )
            if not wanted:
                break
            certs_len = -(-wanted // PAGE) * PAGE
        else:
            raise EvidenceError(
                f"the host's certificate table needs {wanted} bytes, more than the driver's limit "
                f"{CERTS_MAX}",
                source=SOURCE,
            )
    finally:
        os.close(fd)
    report = parse_report_response(data, report_data)
    if table is not None:
        evidence, cert_notes = snp_evidence(
            report, table, table_name="the host's certificate table", source=SOURCE
        )
        notes += cert_notes
    else:
        evidence = {"report": base64.b64encode(report).decode("ascii")}
        notes = notes or (NO_CERTS_NOTE,)
    return Collected(kind="snp", source=SOURCE, evidence=evidence, notes=notes)


def probe_sev_guest(*, root: Path = Path("/")) -> str:
    """``sev-guest (snp)`` when the device opens; SourceUnavailableError otherwise."""
    os.close(_open(root / DEVICE))
    return f"{SOURCE} (snp)"
