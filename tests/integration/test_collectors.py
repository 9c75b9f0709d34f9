"""Guest evidence collectors: configfs-tsm (fake tree), /dev/sev-guest (fake ioctl), the Azure
vTPM against a real swtpm with a local IMDS, NVML (fake module), the simulated TEE, and the
choice between them."""

from __future__ import annotations

import base64
import ctypes
import errno
import json
import shutil
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from jupyter_cc.attest import azure, tpm
from jupyter_cc.attest.binding import expected_report_data, gpu_nonce
from jupyter_cc.attest.evidence import parse_bundle, serialize_bundle, verify_bundle
from jupyter_cc.decoding import b64url_encode
from jupyter_cc.errors import EvidenceError, InputError
from jupyter_cc.guest import collectors, nvml, sevguest, tsm, vtpm
from jupyter_cc.guest.results import Collected, SourceUnavailableError, Unavailable
from jupyter_cc.policy import Policy, appraise
from tests.support.swtpm import USER_DATA_INDEX, SoftTpm, snp_hcl_report, swtpm, tdx_hcl_report

__all__ = ["swtpm"]  # the fixture, imported for pytest

NONCE = bytes(range(32))
REPORT_DATA = expected_report_data(NONCE, bytes(32))
GUIDS = {
    "vcek": "63da758d-e664-4564-adc5-f4b93be8accd",
    "ask": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
    "ark": "c0b406a4-a803-4952-9743-3fb6014cd0ae",
}


def pem(cert: Any) -> str:
    return str(cert.public_bytes(Encoding.PEM).decode())


def cert_table(entries: dict[str, bytes]) -> bytes:
    """An extended-report certificate table (GUID | offset | length ..., zero entry, data)."""
    header = 24 * (len(entries) + 1)
    table, data = b"", b""
    for role, der in entries.items():
        table += uuid.UUID(GUIDS[role]).bytes_le + struct.pack("<II", header + len(data), len(der))
        data += der
    return table + bytes(24) + data


def sim_table(sim_tee: Any) -> bytes:
    der = Encoding.DER
    ask, ark = sim_tee.chain
    return cert_table(
        {"vcek": sim_tee.vcek.public_bytes(der), "ask": ask.public_bytes(der), "ark": ark.public_bytes(der)}
    )


def td_quote(report_data: bytes, version: int = 4) -> bytes:
    """A TD quote shaped enough for the collector's checks (header, body, some signature bytes)."""
    header = struct.pack("<HHI", version, 2, 0x81).ljust(48, b"\0")
    body = bytearray(584)
    body[520:584] = report_data
    prefix = header + (struct.pack("<HI", 2, 584) if version == 5 else b"")
    return prefix + bytes(body) + struct.pack("<I", 64) + b"\x5a" * 64


# --- configfs-tsm -----------------------------------------------------------------------------


class FakeTsm(tsm.ConfigFs):
    """Plays the kernel side of configfs-tsm on a plain directory tree.

    ``mkdir`` creates the attribute files; a write bumps ``generation`` (as the kernel does) and
    a write to ``inblob`` produces ``outblob``/``auxblob`` from ``make``; ``races`` reads of
    ``outblob`` each bump ``generation`` once more, as another writer would.
    """

    def __init__(
        self, provider: str, make: Callable[[bytes], tuple[bytes, bytes | None]], races: int = 0
    ) -> None:
        self.provider, self.make, self.races = provider, make, races
        self.made: list[Path] = []
        self.removed: list[Path] = []
        self.inblobs: list[bytes] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        self.made.append(path)

    def _bump(self, entry: Path) -> None:
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        self._bump(path.parent)
        if path.name == "inblob":
            self.inblobs.append(data)
            out, aux = self.make(data)
            (path.parent / "outblob").write_bytes(out)
            if aux is not None:
                (path.parent / "auxblob").write_bytes(aux)

    def read(self, path: Path, limit: int = tsm.MAX_BLOB) -> bytes:
        data = super().read(path, limit)
        if path.name == "outblob" and self.races:
            self.races -= 1
            self._bump(path.parent)
        return data

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)  # configfs removes an entry with its attributes; a plain dir needs rmtree
        self.removed.append(path)


def tsm_root(tmp: Path) -> Path:
    (tmp / tsm.TSM_REPORT_DIR).mkdir(parents=True)
    return tmp


def snp_maker(sim_tee: Any, table: bytes | None = None) -> Callable[[bytes], tuple[bytes, bytes | None]]:
    return lambda data: (sim_tee.mint(data), sim_table(sim_tee) if table is None else table)


def test_tsm_snp_returns_report_vcek_and_chain_and_removes_entry(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee))
    got = tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert (got.kind, got.source) == ("snp", "configfs-tsm")
    assert fs.inblobs == [REPORT_DATA]
    report = base64.b64decode(got.evidence["report"])
    claims = sim_tee.verify(report, at=datetime.now(timezone.utc))
    assert claims.report_data == REPORT_DATA
    assert got.evidence["vcek"] == pem(sim_tee.vcek)
    assert got.evidence["chain"] == sim_tee.chain_pem().decode()
    assert fs.removed == fs.made and not list((tmp_path / tsm.TSM_REPORT_DIR).iterdir())


def test_tsm_tdx_returns_the_quote(tmp_path: Path) -> None:
    fs = FakeTsm("tdx_guest", lambda data: (td_quote(data, version=5), None))
    got = tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert (got.kind, got.source) == ("tdx", "configfs-tsm")
    assert base64.b64decode(got.evidence["report"]) == td_quote(REPORT_DATA, version=5)
    assert set(got.evidence) == {"report"}
    assert fs.removed == fs.made


def test_tsm_snp_without_host_certificates_says_so(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee, table=b""))
    got = tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert set(got.evidence) == {"report"}
    assert "no SEV-SNP certificates" in got.notes[0]


def test_tsm_generation_race_is_retried_once_in_a_fresh_entry(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee), races=1)
    got = tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert got.kind == "snp"
    assert len(fs.made) == 2 and fs.made[0] != fs.made[1] and fs.removed == fs.made


def test_tsm_generation_race_twice_is_an_error_and_cleans_up(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee), races=5)
    with pytest.raises(EvidenceError, match="another writer") as info:
        tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert "generation was 2 after reading, expected 1" in str(info.value)
    assert str(info.value).startswith("configfs-tsm: ")
    assert len(fs.made) == 2 and fs.removed == fs.made


def test_tsm_entry_is_removed_when_the_report_is_wrong(tmp_path: Path) -> None:
    fs = FakeTsm("sev_guest", lambda data: (b"\x01" * 100, None))
    with pytest.raises(EvidenceError, match="SEV-SNP report is 100 bytes, expected 1184"):
        tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)
    assert fs.removed == fs.made and len(fs.made) == 1


def test_tsm_report_for_other_report_data_is_refused(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", lambda data: (sim_tee.mint(bytes(64)), b""))
    with pytest.raises(EvidenceError, match="carries REPORT_DATA 0000"):
        tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs)


def test_tsm_missing_tree_is_unavailable_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailableError) as info:
        tsm.collect_tsm(REPORT_DATA, root=tmp_path)
    reason = info.value.unavailable()
    assert reason.source == "configfs-tsm"
    assert f"{tmp_path / tsm.TSM_REPORT_DIR} does not exist" in reason.reason
    assert "Linux 6.7" in reason.reason


def test_tsm_other_provider_than_requested_is_unavailable(tmp_path: Path) -> None:
    fs = FakeTsm("tdx_guest", lambda data: (td_quote(data), None))
    with pytest.raises(SourceUnavailableError, match="tdx_guest, which gives tdx evidence, not the snp"):
        tsm.collect_tsm(REPORT_DATA, root=tsm_root(tmp_path), fs=fs, want="snp")
    assert fs.removed == fs.made and fs.inblobs == []


def test_tsm_unknown_provider_and_probe(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    assert tsm.probe_tsm(root=root, fs=FakeTsm("tdx_guest", lambda d: (b"", None))) == "configfs-tsm (tdx)"
    fs = FakeTsm("arm_cca_guest", lambda d: (b"", None))
    with pytest.raises(SourceUnavailableError, match="expected sev_guest"):
        tsm.collect_tsm(REPORT_DATA, root=root, fs=fs)
    assert fs.removed == fs.made


def plausible_outblob(size: int) -> bytes:
    """``size`` bytes with a TDX v4 header and REPORT_DATA where both an SNP report and a TD
    quote carry it, so that sizes decide whether the collector accepts it."""
    data = bytearray(struct.pack("<HHI", 4, 2, 0x81).ljust(max(size, 632), b"\0"))
    data[0x50:0x90] = REPORT_DATA
    data[568:632] = REPORT_DATA
    return bytes(data[:size])


@given(
    provider=st.sampled_from(["sev_guest", "tdx_guest"]),
    outblob=st.one_of(
        st.binary(max_size=2048),
        st.sampled_from([0, 48, 631, 632, 700, 1183, 1184, 1185, 5000]).map(plausible_outblob),
    ),
    auxblob=st.one_of(st.binary(max_size=300), st.binary(max_size=48).map(lambda b: bytes(24) + b)),
)
def test_tsm_untrusted_blobs_give_evidence_or_one_evidence_error(
    provider: str, outblob: bytes, auxblob: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fs = FakeTsm(provider, lambda data: (outblob, auxblob))
        error: EvidenceError | None = None
        try:
            got = tsm.collect_tsm(REPORT_DATA, root=tsm_root(Path(tmp)), fs=fs)
        except EvidenceError as exc:
            error = exc
        if error is not None:
            assert str(error).startswith("configfs-tsm: ")
        else:
            assert base64.b64decode(got.evidence["report"]) == outblob
        assert fs.removed == fs.made


# --- /dev/sev-guest ---------------------------------------------------------------------------


class FakeSevGuest:
    """Plays the sev-guest driver: reads the request through the pointers the collector packed."""

    def __init__(
        self,
        sim_tee: Any,
        *,
        status: int = 0,
        certs: bytes = b"",
        ext: bool = True,
        fail: tuple[int, int] | None = None,
        respond: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.sim_tee, self.status, self.certs, self.ext, self.fail = sim_tee, status, certs, ext, fail
        self.respond = respond
        self.calls: list[tuple[int, bytes, int, int]] = []  # request, user data, vmpl, certs_len

    def __call__(self, fd: int, request: int, arg: sevguest.SnpGuestRequestIoctl) -> int:
        assert arg.msg_version == 1
        certs_len = 0
        if request == sevguest.SNP_GET_EXT_REPORT:
            ext = sevguest.SnpExtReportReq.from_address(arg.req_data)
            req, certs_len = ext.data, ext.certs_len
            self.calls.append((request, bytes(req.user_data), req.vmpl, certs_len))
            if not self.ext:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            if len(self.certs) > certs_len:
                ext.certs_len = len(self.certs)
                arg.exitinfo2 = 1 << 32  # SNP_GUEST_VMM_ERR_INVALID_LEN
                raise OSError(errno.EIO, "Input/output error")
            ctypes.memmove(ext.certs_address, self.certs, len(self.certs))
        else:
            assert request == sevguest.SNP_GET_REPORT
            req = sevguest.SnpReportReq.from_address(arg.req_data)
            self.calls.append((request, bytes(req.user_data), req.vmpl, 0))
        if self.fail is not None:
            arg.exitinfo2 = self.fail[1]
            raise OSError(self.fail[0], "failed")
        user_data = bytes(req.user_data)
        if self.respond is not None:
            resp = self.respond(user_data)
        else:
            resp = struct.pack("<II", self.status, 1184) + bytes(24) + self.sim_tee.mint(user_data)
        resp = resp[:4000]
        ctypes.memmove(arg.resp_data, resp, len(resp))
        return 0


def sev_root(tmp: Path) -> Path:
    (tmp / "dev").mkdir()
    (tmp / "dev/sev-guest").write_bytes(b"")
    return tmp


def test_sev_guest_structures_match_the_uapi() -> None:
    assert ctypes.sizeof(sevguest.SnpReportReq) == 96
    assert ctypes.sizeof(sevguest.SnpReportResp) == 4000
    assert ctypes.sizeof(sevguest.SnpExtReportReq) == 112
    assert sevguest.SnpExtReportReq.certs_address.offset == 96
    assert ctypes.sizeof(sevguest.SnpGuestRequestIoctl) == 32
    assert sevguest.SnpGuestRequestIoctl.req_data.offset == 8
    assert (sevguest.SNP_GET_REPORT, sevguest.SNP_GET_EXT_REPORT) == (0xC0205300, 0xC0205302)


def test_sev_guest_request_carries_report_data_and_returns_certificates(tmp_path: Path, sim_tee: Any) -> None:
    fake = FakeSevGuest(sim_tee, certs=sim_table(sim_tee))
    got = sevguest.collect_sev_guest(REPORT_DATA, root=sev_root(tmp_path), ioctl=fake)
    assert fake.calls == [(sevguest.SNP_GET_EXT_REPORT, REPORT_DATA, 0, sevguest.CERTS_MAX)]
    assert (got.kind, got.source) == ("snp", "sev-guest")
    report = base64.b64decode(got.evidence["report"])
    assert sim_tee.verify(report, at=datetime.now(timezone.utc)).report_data == REPORT_DATA
    assert got.evidence["vcek"] == pem(sim_tee.vcek)
    assert got.evidence["chain"] == sim_tee.chain_pem().decode()


def test_sev_guest_grows_the_certificate_buffer_when_the_host_asks(tmp_path: Path, sim_tee: Any) -> None:
    big = sim_table(sim_tee)
    fake = FakeSevGuest(sim_tee, certs=big.ljust(sevguest.CERTS_MAX + 100, b"\0"))
    got = sevguest.collect_sev_guest(REPORT_DATA, root=sev_root(tmp_path), ioctl=fake)
    assert [c[3] for c in fake.calls] == [sevguest.CERTS_MAX, sevguest.CERTS_MAX + sevguest.PAGE]
    assert got.evidence["vcek"] == pem(sim_tee.vcek)


def test_sev_guest_falls_back_to_get_report_without_ext_support(tmp_path: Path, sim_tee: Any) -> None:
    fake = FakeSevGuest(sim_tee, ext=False)
    got = sevguest.collect_sev_guest(REPORT_DATA, root=sev_root(tmp_path), ioctl=fake)
    assert [c[0] for c in fake.calls] == [sevguest.SNP_GET_EXT_REPORT, sevguest.SNP_GET_REPORT]
    assert set(got.evidence) == {"report"} and "refused SNP_GET_EXT_REPORT" in got.notes[0]


def test_sev_guest_firmware_error_status_is_one_clear_sentence(tmp_path: Path, sim_tee: Any) -> None:
    fake = FakeSevGuest(sim_tee, status=0x16)
    with pytest.raises(EvidenceError) as info:
        sevguest.collect_sev_guest(REPORT_DATA, root=sev_root(tmp_path), ioctl=fake)
    text = str(info.value)
    assert text.startswith("sev-guest: the SEV firmware answered the report request with status 0x16")
    assert "(invalid parameter), expected 0" in text


def test_sev_guest_ioctl_failure_names_the_firmware_and_vmm_errors(tmp_path: Path, sim_tee: Any) -> None:
    fake = FakeSevGuest(sim_tee, fail=(errno.EIO, (2 << 32) | 0x27))
    with pytest.raises(
        EvidenceError, match=r"SNP_GET_EXT_REPORT ioctl failed with EIO \(firmware error 0x27, "
    ):
        sevguest.collect_sev_guest(REPORT_DATA, root=sev_root(tmp_path), ioctl=fake)


def test_sev_guest_missing_device_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailableError, match="dev/sev-guest does not exist"):
        sevguest.collect_sev_guest(REPORT_DATA, root=tmp_path)


@given(
    status=st.sampled_from([0, 0, 0x16, 0xFFFFFFFF]),
    size=st.sampled_from([0, 1184, 1185, 3968, 3969, 0xFFFFFFFF]),
    body=st.binary(max_size=4000),
    keep_data=st.booleans(),
)
def test_sev_guest_response_parsing_takes_any_bytes(
    status: int, size: int, body: bytes, keep_data: bool
) -> None:
    data = bytearray(struct.pack("<II", status, size) + bytes(24) + body)
    if keep_data and len(data) >= 32 + 0x90:
        data[32 + 0x50 : 32 + 0x90] = REPORT_DATA
    error: EvidenceError | None = None
    try:
        report = sevguest.parse_report_response(bytes(data), REPORT_DATA)
    except EvidenceError as exc:
        error = exc
    if error is not None:
        assert str(error).startswith("sev-guest: ")
    else:
        assert status == 0 and size == 1184 and report == bytes(data[32 : 32 + 1184])


# --- Azure vTPM on a real swtpm ---------------------------------------------------------------


class Imds(BaseHTTPRequestHandler):
    """IMDS as Azure serves it: THIM (GET, header Metadata: true) and /acc/tdquote (POST)."""

    thim: dict[str, str] = {}
    quote: bytes = b""
    seen: list[tuple[str, str, str | None, bytes]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, code: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Metadata"), b""))
        if self.path != "/metadata/THIM/amd/certification":
            self._json(404, {"error": "not found"})
        elif self.headers.get("Metadata") != "true":
            self._json(400, {"error": "Required metadata header not specified"})
        else:
            self._json(200, self.thim)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(("POST", self.path, self.headers.get("Metadata"), body))
        if self.path != "/acc/tdquote":
            self._json(404, {"error": "not found"})
        else:
            self._json(200, {"quote": b64url_encode(self.quote)})


@pytest.fixture
def imds(sim_tee: Any) -> Iterator[tuple[str, type[Imds]]]:
    handler: type[Imds] = type("ImdsForTest", (Imds,), {"seen": []})
    handler.thim = {
        "vcekCert": pem(sim_tee.vcek),
        "certificateChain": sim_tee.chain_pem().decode(),
        "tcbm": "DB18000000000004",
        "cacheControl": "86400",
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class RecordingTools(vtpm.Tpm2Tools):
    """The real tpm2-tools runner, recording the size of every NV read it asks for."""

    def __init__(self, tcti: str) -> None:
        super().__init__(tcti)
        self.reads: list[tuple[int, int]] = []

    def run(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        if tool == "tpm2_nvread":
            self.reads.append((int(args[args.index("--offset") + 1]), int(args[args.index("-s") + 1])))
        return super().run(tool, *args, stdin=stdin)


def test_vtpm_snp_end_to_end_on_swtpm(swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any) -> None:
    url, handler = imds
    assert swtpm.ak_public is not None
    planted = snp_hcl_report(sim_tee, swtpm.ak_public, REPORT_DATA).ljust(2048, b"\0")
    swtpm.plant(planted)
    tools = RecordingTools(swtpm.tcti)
    got = vtpm.collect_azure_vtpm(REPORT_DATA, imds_url=url, tools=tools)
    assert (got.kind, got.source) == ("az-snp-vtpm", "azure-vtpm")
    # the user data went to NV 0x01400002
    assert swtpm.read_nv(USER_DATA_INDEX, 64) == REPORT_DATA
    # the HCL report was read in chunks of at most 1024 bytes and is the planted bytes
    assert tools.reads == [(0, 1024), (1024, 1024)]
    hcl = base64.b64decode(got.evidence["report"])
    assert hcl == planted
    # the quote verifies with the AK public key the TPM reports, over the nonce REPORT_DATA[0:32]
    ak_pem = swtpm.tool("tpm2_readpublic", "-c", "0x81000003", "-f", "pem", "-o", "ak-check.pem", "-Q")
    assert ak_pem == b""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    ak = load_pem_public_key((swtpm.work_dir / "ak-check.pem").read_bytes())
    message, signature = (
        base64.b64decode(got.evidence["tpm_quote"]),
        base64.b64decode(got.evidence["tpm_sig"]),
    )
    quote = tpm.verify_quote(message, signature, ak, nonce=REPORT_DATA[:32])  # type: ignore[arg-type]
    assert [s.pcrs for s in quote.pcr_selection] == [tuple(range(24))]
    assert struct.unpack(">H", signature[:2])[0] == 0x0014  # a TPMT_SIGNATURE, RSASSA
    # THIM was asked with the Metadata header, and the whole evidence verifies as az-snp-vtpm
    assert handler.seen == [("GET", "/metadata/THIM/amd/certification", "true", b"")]
    assert got.evidence["vcek"] == pem(sim_tee.vcek)
    claims = azure.verify_az_snp_vtpm(
        hcl,
        vek_cert=sim_tee.vcek,
        chain=list(sim_tee.chain),
        at=datetime.now(timezone.utc),
        roots=sim_tee.trust_store(),
        tpm_quote=message,
        tpm_sig=signature,
        nonce=REPORT_DATA[:32],
    )
    assert claims.get("user_data") == REPORT_DATA.hex()


def test_vtpm_auto_order_reaches_the_vtpm_after_the_absent_sources(
    swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any, tmp_path: Path
) -> None:
    assert swtpm.ak_public is not None
    swtpm.plant(snp_hcl_report(sim_tee, swtpm.ak_public, REPORT_DATA))
    got, unavailable = collectors.collect_cpu_evidence(
        REPORT_DATA, root=tmp_path, tpm_tcti=swtpm.tcti, imds_url=imds[0]
    )
    assert got.kind == "az-snp-vtpm"
    assert [u.source for u in unavailable] == ["configfs-tsm", "sev-guest"]
    assert probe_names(collectors.probe(root=tmp_path, tpm_tcti=swtpm.tcti)) == [
        "configfs-tsm: unavailable",
        "sev-guest: unavailable",
        "azure-vtpm",
        "simulated (only with --tee sim)",
    ]


def probe_names(items: list[Unavailable | str]) -> list[str]:
    return [i if isinstance(i, str) else f"{i.source}: unavailable" for i in items]


def test_vtpm_tdx_gets_the_td_quote_from_imds(swtpm: SoftTpm, imds: tuple[str, type[Imds]]) -> None:
    url, handler = imds
    assert swtpm.ak_public is not None
    planted = tdx_hcl_report(swtpm.ak_public, REPORT_DATA)
    swtpm.plant(planted)
    handler.quote = td_quote(REPORT_DATA)
    got = vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti, imds_url=url, want="az-tdx-vtpm")
    assert got.kind == "az-tdx-vtpm"
    assert base64.b64decode(got.evidence["td_quote"]) == td_quote(REPORT_DATA)
    method, path, _, body = handler.seen[0]
    assert (method, path) == ("POST", "/acc/tdquote")
    assert json.loads(body) == {"report": b64url_encode(planted[0x20 : 0x20 + 1024])}
    assert "vcek" not in got.evidence


def test_vtpm_defines_the_user_data_index_when_absent(
    swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any
) -> None:
    assert swtpm.ak_public is not None
    swtpm.plant(snp_hcl_report(sim_tee, swtpm.ak_public, REPORT_DATA))
    swtpm.undefine(USER_DATA_INDEX)
    vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti, imds_url=imds[0])
    assert swtpm.read_nv(USER_DATA_INDEX, 64) == REPORT_DATA


def test_vtpm_stale_hcl_report_is_refused(swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any) -> None:
    assert swtpm.ak_public is not None
    swtpm.plant(snp_hcl_report(sim_tee, swtpm.ak_public, bytes(64)))
    with pytest.raises(EvidenceError, match="paravisor did not refresh the report") as info:
        vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti, imds_url=imds[0], refresh_s=0)
    assert "runtime user-data is 00000000" in str(info.value)


def test_vtpm_hcl_report_naming_another_ak_is_refused(
    swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    swtpm.plant(snp_hcl_report(sim_tee, other, REPORT_DATA))
    with pytest.raises(EvidenceError, match="does not verify with the HCL report's HCLAkPub"):
        vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti, imds_url=imds[0])


def test_vtpm_unreachable_imds_is_one_sentence(swtpm: SoftTpm, sim_tee: Any) -> None:
    assert swtpm.ak_public is not None
    swtpm.plant(snp_hcl_report(sim_tee, swtpm.ak_public, REPORT_DATA))
    with pytest.raises(EvidenceError) as info:
        vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti, imds_url="http://127.0.0.1:9")
    text = str(info.value)
    assert text.startswith("azure-vtpm: IMDS THIM at http://127.0.0.1:9/metadata/THIM/amd/certification")
    assert "is unreachable" in text and "inside an Azure VM" in text


def test_vtpm_other_kind_than_requested(swtpm: SoftTpm, imds: tuple[str, type[Imds]], sim_tee: Any) -> None:
    assert swtpm.ak_public is not None
    swtpm.plant(snp_hcl_report(sim_tee, swtpm.ak_public, REPORT_DATA))
    with pytest.raises(EvidenceError, match="no source gives az-tdx-vtpm evidence: azure-vtpm: the HCL"):
        collectors.collect_cpu_evidence(
            REPORT_DATA, tee="az-tdx-vtpm", tpm_tcti=swtpm.tcti, imds_url=imds[0], root=Path("/nonexistent")
        )


def test_vtpm_without_hcl_index_is_not_an_azure_cvm(swtpm: SoftTpm) -> None:
    swtpm.undefine(0x01400001)
    try:
        with pytest.raises(SourceUnavailableError, match="no NV index 0x01400001"):
            vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti=swtpm.tcti)
        with pytest.raises(SourceUnavailableError, match="not an Azure CVM"):
            vtpm.probe_vtpm(tpm_tcti=swtpm.tcti)
    finally:
        swtpm.define(0x01400001, 2048)


def test_vtpm_without_tpm_or_tcti_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    with pytest.raises(SourceUnavailableError, match="dev/tpmrm0 does not exist"):
        vtpm.collect_azure_vtpm(REPORT_DATA, root=tmp_path)


def test_vtpm_unreachable_tpm_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("tpm2_nvreadpublic") is None:
        pytest.skip("tpm2-tools is not installed")
    with pytest.raises(EvidenceError) as info:
        vtpm.collect_azure_vtpm(REPORT_DATA, tpm_tcti="swtpm:host=127.0.0.1,port=9")
    assert str(info.value).startswith("azure-vtpm: tpm2_nvreadpublic ")


# --- choosing a source ------------------------------------------------------------------------


def test_auto_never_uses_the_simulated_tee(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    sim_dir = tmp_path / "sim"
    with pytest.raises(EvidenceError) as info:
        collectors.collect_cpu_evidence(REPORT_DATA, root=tmp_path, sim_dir=sim_dir)
    text = str(info.value)
    assert text.startswith("no TEE evidence source is available: configfs-tsm: ")
    assert "; sev-guest: " in text and "dev/sev-guest does not exist" in text
    assert "; azure-vtpm: " in text and "dev/tpmrm0 does not exist" in text
    assert text.endswith("the simulated TEE is used only with --tee sim.")
    assert not sim_dir.exists()


def test_tee_sim_uses_only_the_simulated_tee(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee))
    got, unavailable = collectors.collect_cpu_evidence(
        REPORT_DATA, tee="sim", root=tsm_root(tmp_path), tsm_fs=fs
    )
    assert (got.kind, got.source, got.notes) == ("sim-snp", "simulated", ("SIMULATED — not a hardware TEE",))
    assert unavailable == [] and fs.made == []
    assert set(got.evidence) == {"report"}
    report = base64.b64decode(got.evidence["report"])
    assert sim_tee.verify(report, at=datetime.now(timezone.utc)).simulated


def test_simulated_bundle_round_trips_through_the_verifier(sim_tee: Any) -> None:
    got, _ = collectors.collect_cpu_evidence(REPORT_DATA, tee="sim")
    bundle = serialize_bundle(
        got.kind, got.evidence, nonce=NONCE, host_key_sha256=bytes(32), source=got.source, collected_at="now"
    )
    claims = verify_bundle(parse_bundle(bundle), at=datetime.now(timezone.utc), nonce=NONCE)
    assert claims.simulated and claims.report_data == REPORT_DATA


def test_auto_prefers_configfs_tsm(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee))
    root = sev_root(tsm_root(tmp_path))
    fake = FakeSevGuest(sim_tee)
    got, unavailable = collectors.collect_cpu_evidence(REPORT_DATA, root=root, tsm_fs=fs, sev_ioctl=fake)
    assert got.source == "configfs-tsm" and unavailable == [] and fake.calls == []


def test_tee_snp_falls_through_to_sev_guest(tmp_path: Path, sim_tee: Any) -> None:
    fake = FakeSevGuest(sim_tee, certs=sim_table(sim_tee))
    got, unavailable = collectors.collect_cpu_evidence(
        REPORT_DATA, tee="snp", root=sev_root(tmp_path), sev_ioctl=fake
    )
    assert (got.kind, got.source) == ("snp", "sev-guest")
    assert [u.source for u in unavailable] == ["configfs-tsm"]


def test_tee_tdx_refuses_an_snp_provider(tmp_path: Path, sim_tee: Any) -> None:
    fs = FakeTsm("sev_guest", snp_maker(sim_tee))
    with pytest.raises(
        EvidenceError, match="no source gives tdx evidence: configfs-tsm: the TSM provider is sev_guest"
    ):
        collectors.collect_cpu_evidence(REPORT_DATA, tee="tdx", root=tsm_root(tmp_path), tsm_fs=fs)


def test_bad_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match="64 bytes, got 32"):
        collectors.collect_cpu_evidence(REPORT_DATA[:32], tee="sim")
    with pytest.raises(InputError, match="unknown TEE choice 'sgx'"):
        collectors.collect_cpu_evidence(REPORT_DATA, tee="sgx")


def test_probe_lists_every_source_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    items = collectors.probe(root=tmp_path)
    assert items[-1] == "simulated (only with --tee sim)"
    reasons = [i for i in items if isinstance(i, Unavailable)]
    assert [u.source for u in reasons] == ["configfs-tsm", "sev-guest", "azure-vtpm"]
    assert all(u.reason for u in reasons)


def test_collected_is_frozen() -> None:
    got = Collected(kind="snp", source="sev-guest", evidence={"report": ""})
    with pytest.raises(AttributeError):
        got.kind = "tdx"  # type: ignore[misc]


# --- NVML -------------------------------------------------------------------------------------

LEAF = "-----BEGIN CERTIFICATE-----\nMIIBleaf\n-----END CERTIFICATE-----\n"


class FakeNvml:
    """The part of pynvml the collector uses, with ctypes-like arrays padded past their size."""

    NVMLError = type("NVMLError", (Exception,), {})

    def __init__(
        self, *, cc: int = 1, count: int = 1, name: Any = "NVIDIA H100 80GB HBM3", init_fails: bool = False
    ):
        self.cc, self.count, self.name, self.init_fails = cc, count, name, init_fails
        self.shut_down = False
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return self.name

    def nvmlSystemGetConfComputeState(self) -> Any:
        return SimpleNamespace(environment=2, ccFeature=self.cc, devToolsMode=0)

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        self.nonces.append(bytes(nonce))
        data = bytes([0x11, 0xE0, 0x01, 0xFF]) + bytes(nonce) + b"\x00" + b"\x11\x60" + b"R" * 100
        return SimpleNamespace(attestationReport=list(data) + [0] * 64, attestationReportSize=len(data))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = LEAF.encode()
        return SimpleNamespace(
            attestationCertChain=list(chain) + [0] * 64, attestationCertChainSize=len(chain)
        )


def test_nvml_cc_mode_gpu_gives_a_bundle_entry() -> None:
    fake = FakeNvml(count=2)
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=fake)
    # Each GPU signs its own nonce, derived from the session nonce and its index.
    assert unavailable == [] and fake.shut_down and fake.nonces == [gpu_nonce(NONCE, 0), gpu_nonce(NONCE, 1)]
    assert len(entries) == 2
    entry = entries[0]
    assert (entry["kind"], entry["cc_mode"], entry["chain"]) == ("nvidia", "on", LEAF)
    assert base64.b64decode(entry["report"])[4:36] == gpu_nonce(NONCE, 0)


def test_nvml_h100_not_in_cc_mode_is_reported_and_gpu_required_refuses(sim_tee: Any) -> None:
    fake = FakeNvml(cc=0, name=b"NVIDIA H100 80GB HBM3")
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=fake)
    assert entries == [] and fake.nonces == [] and fake.shut_down
    assert unavailable == [
        Unavailable(
            "nvml", "GPU 0 (NVIDIA H100 80GB HBM3) is not in confidential computing mode (NVML ccFeature 0)"
        )
    ]
    got, _ = collectors.collect_cpu_evidence(REPORT_DATA, tee="sim")
    bundle = serialize_bundle(
        got.kind,
        got.evidence,
        nonce=NONCE,
        host_key_sha256=bytes(32),
        source=got.source,
        collected_at="now",
        gpus=entries,
        notes=[f"{u.source}: {u.reason}" for u in unavailable],
    )
    claims = verify_bundle(parse_bundle(bundle), at=datetime.now(timezone.utc), nonce=NONCE)
    verdict = appraise(claims, Policy.from_toml("allow_simulated = true\n[gpu]\nrequired = true\n"))
    assert not verdict.passed
    assert any("gpu.required" in str(r) for r in verdict.reasons)
    assert appraise(claims, Policy.from_toml("allow_simulated = true\n")).passed


def test_nvml_absent_or_broken_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)
    entries, unavailable = collectors.collect_gpu_evidence(NONCE)
    assert entries == [] and "nvidia-ml-py" in unavailable[0].reason
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=FakeNvml(init_fails=True))
    assert unavailable[0].reason == "NVML did not start (Driver Not Loaded): no NVIDIA driver or GPU here"
    entries, unavailable = nvml.collect_nvml(NONCE, nvml=FakeNvml(count=0))
    assert unavailable[0].reason == "NVML found no NVIDIA GPU"
    with pytest.raises(InputError, match="32 bytes, got 64"):
        nvml.collect_nvml(REPORT_DATA, nvml=FakeNvml())


def test_nvml_report_without_our_nonce_is_left_out() -> None:
    class Stale(FakeNvml):
        def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
            return super().nvmlDeviceGetConfComputeGpuAttestationReport(handle, bytes(32))

    entries, unavailable = nvml.collect_nvml(NONCE, nvml=Stale())
    assert entries == [] and "without the requested nonce" in unavailable[0].reason
