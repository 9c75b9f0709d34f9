"""configfs-tsm: the Linux (6.7 and later) vendor-neutral way to get a TEE report.

``/sys/kernel/config/tsm/report/`` is a configfs directory: making a subdirectory creates a
report request with these attributes (Documentation/ABI/testing/configfs-tsm):

============== ===== ======================================================================
attribute      mode  meaning
============== ===== ======================================================================
``inblob``     w     the 64 bytes of REPORT_DATA
``privlevel``  w     optional: SNP VMPL / requested privilege level
``provider``   r     ``sev_guest`` (SEV-SNP) or ``tdx_guest`` (TDX)
``outblob``    r     the report: SNP ATTESTATION_REPORT or TDX quote
``auxblob``    r     SNP only: the host's certificate table (VCEK, ASK, ARK)
``generation`` r     incremented by every write; changes if another writer raced this one
============== ===== ======================================================================

The entry is removed afterwards, even on failure. All file operations go through
:class:`ConfigFs`, so tests can stand in a plain directory tree whose "kernel" side a
:class:`ConfigFs` subclass plays; this module's code path is the same either way.
"""

from __future__ import annotations

import base64
import errno
import os
import secrets
from pathlib import Path

from jupyter_cc.errors import EvidenceError
from jupyter_cc.guest.certtable import snp_evidence
from jupyter_cc.guest.reportcheck import check_snp_report, check_td_quote
from jupyter_cc.guest.results import Collected, SourceUnavailableError

__all__ = ["PROVIDERS", "SOURCE", "TSM_REPORT_DIR", "ConfigFs", "collect_tsm", "probe_tsm", "report_dir"]

SOURCE = "configfs-tsm"
TSM_REPORT_DIR = Path("sys/kernel/config/tsm/report")
PROVIDERS = {"sev_guest": "snp", "tdx_guest": "tdx"}
ATTEMPTS = 2
MAX_BLOB = 64 * 1024  # a TD quote with its PCK chain is ~5 KiB, an SNP report 1184 bytes


class ConfigFs:
    """The file operations configfs-tsm needs; the real one maps them to the OS one to one.

    configfs binary attributes must be written in a single ``write`` call and read whole,
    which is what these do.
    """

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int = MAX_BLOB) -> bytes:
        with open(path, "rb", buffering=0) as fh:
            return fh.read(limit + 1)

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as fh:
            written = fh.write(data)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")


def report_dir(root: Path) -> Path:
    """Where configfs-tsm report entries are made under ``root``."""
    return root / TSM_REPORT_DIR


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _check_dir(base: Path) -> None:
    if not base.is_dir():
        raise SourceUnavailableError(
            SOURCE,
            f"{base} does not exist (kernel without TSM reports, older than Linux 6.7, or configfs "
            "not mounted)",
        )


def _read_text(fs: ConfigFs, path: Path) -> str:
    return fs.read(path, 64).decode("ascii", "replace").strip()


def _generation(fs: ConfigFs, path: Path) -> int:
    text = _read_text(fs, path / "generation")
    if not text.isdigit():
        raise EvidenceError(
            f"the report entry's generation is {text[:20]!r}, expected a number", source=SOURCE
        )
    return int(text)


def _provider(fs: ConfigFs, entry: Path) -> tuple[str, str]:
    provider = _read_text(fs, entry / "provider")
    kind = PROVIDERS.get(provider)
    if kind is None:
        raise SourceUnavailableError(
            SOURCE,
            f"the TSM provider is {provider[:40]!r}, expected sev_guest (SEV-SNP) or tdx_guest (TDX)",
        )
    return provider, kind


def _blob(fs: ConfigFs, path: Path, what: str) -> bytes:
    data = fs.read(path)
    if len(data) > MAX_BLOB:
        raise EvidenceError(f"the {what} is over {MAX_BLOB} bytes, more than any TEE report", source=SOURCE)
    return data


def _make_entry(fs: ConfigFs, base: Path, prefix: str, *, name_denial: bool) -> Path:
    """Make a fresh, uniquely named report entry under ``base``; ``name_denial`` gives a refused
    mkdir its own sentence and the hint to run as root."""
    entry = base / f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        fs.mkdir(entry)
    except OSError as exc:
        if name_denial and isinstance(exc, PermissionError):
            raise SourceUnavailableError(
                SOURCE, f"making a report entry in {base} was refused (permission denied)", hint="run as root"
            ) from None
        raise SourceUnavailableError(
            SOURCE, f"making a report entry in {base} failed ({_why(exc)})"
        ) from None
    return entry


def _attempt(
    fs: ConfigFs, base: Path, report_data: bytes, want: str | None, privlevel: int | None
) -> tuple[str, bytes, bytes, int, int]:
    entry = _make_entry(fs, base, "jupyter-cc", name_denial=True)
    try:
        provider, kind = _provider(fs, entry)
        if want is not None and kind != want:
            raise SourceUnavailableError(
                SOURCE,
                f"the TSM provider is {provider}, which gives {kind} evidence, not the {want} asked for",
            )
        before = _generation(fs, entry)
        writes = 0
        if privlevel is not None:
            fs.write(entry / "privlevel", str(privlevel).encode())
            writes += 1
        fs.write(entry / "inblob", report_data)
        writes += 1
        outblob = _blob(fs, entry / "outblob", "outblob")
        auxblob = b""
        if kind == "snp":
            try:
                auxblob = _blob(fs, entry / "auxblob", "auxblob")
            except FileNotFoundError:
                auxblob = b""
        after = _generation(fs, entry)
        return kind, outblob, auxblob, before + writes, after
    except OSError as exc:
        raise EvidenceError(
            f"reading the TSM report in {entry} failed ({_why(exc)})", source=SOURCE
        ) from None
    finally:
        try:
            fs.rmdir(entry)
        except OSError:
            pass  # nothing more to do; the report carries no secret and the kernel frees it


def collect_tsm(
    report_data: bytes,
    *,
    root: Path = Path("/"),
    want: str | None = None,
    privlevel: int | None = None,
    fs: ConfigFs | None = None,
) -> Collected:
    """Get a report for ``report_data`` through configfs-tsm.

    Args:
        report_data: the 64 bytes to bind.
        root: the file system root (tests point it at a fake tree).
        want: ``snp`` or ``tdx`` to accept only that provider; None for either.
        privlevel: written to ``privlevel`` when given (SNP VMPL).
        fs: the file operations (tests pass a simulator of the kernel side).

    Raises:
        SourceUnavailableError: no configfs-tsm, no permission, another provider, or a failure.
        EvidenceError: the report is malformed or another writer raced twice in a row.
    """
    fs = fs or ConfigFs()
    base = report_dir(root)
    _check_dir(base)
    for attempt in range(1, ATTEMPTS + 1):
        kind, outblob, auxblob, expected, found = _attempt(fs, base, report_data, want, privlevel)
        if found == expected:
            break
        if attempt == ATTEMPTS:
            raise EvidenceError(
                f"the report entry's generation was {found} after reading, expected {expected}: another "
                f"writer changed the request while it was read, {ATTEMPTS} times in a row",
                hint="make sure only one attestation agent runs in this VM",
                source=SOURCE,
            )
    notes: tuple[str, ...] = ()
    if kind == "snp":
        report = check_snp_report(outblob, report_data, SOURCE)
        evidence, notes = snp_evidence(
            report, auxblob, table_name="the auxblob certificate table", source=SOURCE
        )
    else:
        quote = check_td_quote(outblob, report_data, SOURCE)
        evidence = {"report": base64.b64encode(quote).decode("ascii")}
    return Collected(kind=kind, source=SOURCE, evidence=evidence, notes=notes)


def probe_tsm(*, root: Path = Path("/"), fs: ConfigFs | None = None) -> str:
    """``configfs-tsm (snp)`` or ``(tdx)`` when usable; SourceUnavailableError otherwise.

    Makes and removes one entry to read its provider; no report is generated.
    """
    fs = fs or ConfigFs()
    base = report_dir(root)
    _check_dir(base)
    entry = _make_entry(fs, base, "jupyter-cc-probe", name_denial=False)
    try:
        _, kind = _provider(fs, entry)
    except OSError as exc:
        raise SourceUnavailableError(
            SOURCE, f"reading the provider in {entry} failed ({_why(exc)})"
        ) from None
    finally:
        try:
            fs.rmdir(entry)
        except OSError:
            pass
    return f"{SOURCE} ({kind})"
