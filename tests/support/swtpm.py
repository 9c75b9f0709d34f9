"""A real software TPM (Debian ``swtpm``) set up like an Azure CVM's vTPM, for the vTPM collector.

The ``swtpm`` fixture starts ``swtpm socket --tpm2`` on two free loopback ports, then with
tpm2-tools (TCTI ``swtpm:host=127.0.0.1,port=N``):

* creates an RSA-2048 restricted signing key (RSASSA, SHA-256) under an owner primary and
  persists it at 0x81000003, where Azure keeps the vTPM attestation key (HCLAkPub);
* defines NV 0x01400001 (2048 bytes: swtpm 0.7 caps one index there and one NV read at 1024)
  for the HCL report, and NV 0x01400002 (64 bytes) for the user data, both owner read/write.

Nothing plays the paravisor: a test plants the HCL report it wants with :meth:`SoftTpm.plant`
(typically one whose runtime user-data is the REPORT_DATA it will ask for).
:func:`snp_hcl_report` builds such a report around a simulated-TEE SNP report, bound the way
Azure binds it. swtpm is stopped at teardown.

Import it from a test module (``from tests.support.swtpm import swtpm``) or from conftest. Without
swtpm or tpm2-tools the fixture skips, and fails under ``CI=true`` (``conftest.need_tool``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

HCL_INDEX = 0x01400001
USER_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003
HCL_NV_SIZE = 2048
TOOLS = (
    "tpm2_createprimary",
    "tpm2_create",
    "tpm2_load",
    "tpm2_evictcontrol",
    "tpm2_readpublic",
    "tpm2_flushcontext",
    "tpm2_nvdefine",
    "tpm2_nvwrite",
    "tpm2_nvread",
    "tpm2_nvreadpublic",
    "tpm2_nvundefine",
    "tpm2_quote",
)
NV_ATTRIBUTES = "ownerread|ownerwrite|authread|authwrite"


@dataclass
class SoftTpm:
    """A running swtpm and what the fixture put in it."""

    tcti: str
    port: int
    state_dir: Path
    work_dir: Path
    process: subprocess.Popen[bytes]
    ak_public: rsa.RSAPublicKey | None = None

    def tool(self, *args: str, stdin: bytes | None = None) -> bytes:
        """Run one tpm2-tools command against this TPM (argument list, no shell); its stdout."""
        exe = shutil.which(args[0])
        assert exe is not None, f"{args[0]} is not installed"
        done = subprocess.run(
            [exe, *args[1:]],
            input=stdin,
            capture_output=True,
            env={**os.environ, "TPM2TOOLS_TCTI": self.tcti},
            timeout=30,
            check=False,
            cwd=self.work_dir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        return done.stdout

    def flush(self) -> None:
        """Flush transient objects: without a resource manager, swtpm runs out of slots."""
        self.tool("tpm2_flushcontext", "-t")

    def plant(self, hcl_report: bytes) -> None:
        """Write ``hcl_report`` (padded with NUL to 2048 bytes) into NV 0x01400001."""
        assert len(hcl_report) <= HCL_NV_SIZE, f"an HCL report for swtpm must fit {HCL_NV_SIZE} bytes"
        self.tool(
            "tpm2_nvwrite",
            f"0x{HCL_INDEX:08x}",
            "-C",
            "o",
            "-i",
            "-",
            stdin=hcl_report.ljust(HCL_NV_SIZE, b"\0"),
        )

    def read_nv(self, index: int, size: int, offset: int = 0) -> bytes:
        return self.tool("tpm2_nvread", f"0x{index:08x}", "-C", "o", "-s", str(size), "--offset", str(offset))

    def undefine(self, index: int) -> None:
        self.tool("tpm2_nvundefine", f"0x{index:08x}", "-C", "o")

    def define(self, index: int, size: int) -> None:
        self.tool("tpm2_nvdefine", f"0x{index:08x}", "-C", "o", "-s", str(size), "-a", NV_ATTRIBUTES)


def _free_port_pair() -> int:
    """A port P such that P and P+1 were both free on 127.0.0.1 a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free loopback ports")


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_swtpm(base: Path) -> SoftTpm:
    """Start swtpm in ``base`` and provision it like an Azure vTPM (see the module docstring)."""
    exe = shutil.which("swtpm")
    assert exe is not None
    state, work = base / "state", base / "work"
    state.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = _free_port_pair()
        log = (base / "swtpm.log").open("ab")
        proc = subprocess.Popen(
            [
                exe,
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--tpmstate",
                f"dir={state}",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if _wait_listening(proc, port):
            break
        _stop(proc)
    else:
        raise RuntimeError(f"swtpm did not start; see {base / 'swtpm.log'}")
    tpm = SoftTpm(
        tcti=f"swtpm:host=127.0.0.1,port={port}", port=port, state_dir=state, work_dir=work, process=proc
    )
    try:
        _provision(tpm)
    except BaseException:
        _stop(proc)
        raise
    return tpm


def _provision(tpm: SoftTpm) -> None:
    tpm.tool("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "rsa2048", "-c", "primary.ctx", "-Q")
    tpm.flush()
    tpm.tool(
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        "rsa2048:rsassa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "-u",
        "ak.pub",
        "-r",
        "ak.priv",
        "-Q",
    )
    tpm.flush()
    tpm.tool("tpm2_load", "-C", "primary.ctx", "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx", "-Q")
    tpm.flush()
    tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", f"0x{AK_HANDLE:08x}", "-Q")
    tpm.flush()
    tpm.tool("tpm2_readpublic", "-c", f"0x{AK_HANDLE:08x}", "-f", "pem", "-o", "ak.pem", "-Q")
    key = load_pem_public_key((tpm.work_dir / "ak.pem").read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    tpm.ak_public = key
    tpm.define(HCL_INDEX, HCL_NV_SIZE)
    tpm.define(USER_DATA_INDEX, 64)
    tpm.plant(b"")


def snp_hcl_report(sim_tee: Any, ak_public: rsa.RSAPublicKey, user_data: bytes, **runtime: Any) -> bytes:
    """An Azure SNP HCL report: runtime JSON with ``ak_public`` as HCLAkPub and ``user_data``,
    around a simulated-TEE SNP report whose REPORT_DATA starts with SHA-256 of that JSON."""
    from tests.support.azure_builder import hcl_report, runtime_json

    variable = runtime_json(ak_public, user_data=user_data, **runtime)
    hw = sim_tee.mint(hashlib.sha256(variable).digest() + bytes(32))
    return hcl_report(hw, variable, report_type=2, hash_type=1, nv_size=HCL_NV_SIZE, bind=False)


def tdx_hcl_report(ak_public: rsa.RSAPublicKey, user_data: bytes) -> bytes:
    """An Azure TDX HCL report (TDREPORT, MAC not computed) binding runtime JSON with ``user_data``."""
    from tests.support.azure_builder import hcl_report, runtime_json, td_report

    variable = runtime_json(ak_public, user_data=user_data)
    td = td_report(hashlib.sha256(variable).digest() + bytes(32))
    return hcl_report(td, variable, report_type=4, hash_type=1, nv_size=HCL_NV_SIZE, bind=False)


def tools_missing() -> list[str]:
    return [t for t in ("swtpm", *TOOLS) if shutil.which(t) is None]


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftTpm]:
    """A provisioned swtpm (module scope: key generation is the slow part); stopped afterwards."""
    missing = tools_missing()
    if missing:
        from tests.support.env import need_tool

        need_tool(f"swtpm and tpm2-tools (missing: {', '.join(missing)})")
    tpm = start_swtpm(tmp_path_factory.mktemp("swtpm"))
    try:
        yield tpm
    finally:
        _stop(tpm.process)
