"""Verification with collateral, as ratios measured in one run (design section 11, issue 11).

What is timed (medians; every pair interleaved in alternating blocks, the order swapped each
block, after warm-up calls of each):

- **TDX, collateral from the warm cache**: ``CollateralService.tdx`` answering from a cache
  warmed once through a loopback fake Intel PCS (``tests/support/fake_pcs.py``, the production
  fetch path with only the base URLs changed; the server is stopped before timing, so every
  item must come from the cache), then ``evidence.verify`` of the quote with that TCB info, QE
  identity, issuer chain and the two CRLs, as ``jupyter-cc verify tdx`` does. Against the same
  ``evidence.verify`` of the same quote without collateral. Target <= 1.5x.

  Two quotes. *Synthetic*: a quote and collateral from ``tests/support/tdx_builder.py`` (test
  PKI with Intel's names, trusted through the service's injectable trust store), for which the
  whole appraisal runs and gives ``tcb_status`` UpToDate. *Real*: the Sapphire Rapids quote and
  PCS collateral in ../shared/vectors/tdx at 2023-07-01, whose TCB info matches no TCB level
  for this quote (go-tdx-guest's own test expects that), so the collateral side runs every
  check up to the TCB level match and stops there with ``TcbError``; the baseline is the
  complete verify without collateral.
- **SNP verify**: ``evidence.verify`` of the real Milan v2 report with its VCEK and the AMD
  Milan ASK/ARK chain, against its raw signature checks done directly with ``cryptography``:
  the report's ECDSA P-384 signature with the VCEK key, the VCEK's RSA-PSS signature with the
  ASK key and the ASK's with the ARK key. Target <= 1.5x. Measured twice: as a long-running
  verifier sees it (successful certificate links are cached by certificate, so each call
  checks validity times, the report signature, TCB and hwID, not the two RSA signatures), and
  from scratch (the link cache cleared before each call, so the call checks both RSA
  signatures too, and the ARK's self-signature, which the raw checks leave out).
- **SNP, VCEK and chain from the warm cache**: ``CollateralService.snp`` (no CRL: the CLI
  asks for none) from a cache warmed through a loopback fake AMD KDS, the certificates
  loaded as the CLI loads them, then the same ``evidence.verify``; against ``evidence.verify``
  with the certificates given. Target <= 1.5x (collateral cached against the same verify
  without fetched collateral).
- **Cold fetch** (no target): an empty cache and a new service each time, everything fetched
  from the loopback fake PCS (TCB info, QE identity, PCK CRL, Root CA CRL: four requests, each
  checked to the pinned Intel root and written to the cache with fsync) or fake KDS (cert_chain
  and VCEK); milliseconds, median of 15 with min and max.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_collateral.py [--profile]``); needs
../shared/vectors. ``--profile`` prints the top of a cProfile of the TDX warm-cache verify.
Exits 0 whatever the figures (non-zero only when it cannot run).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from jupyter_cc.attest import certs, snp  # noqa: E402
from jupyter_cc.attest.certs import load_certificate, load_certificates  # noqa: E402
from jupyter_cc.attest.evidence import Evidence, verify  # noqa: E402
from jupyter_cc.attest.roots import TrustStore  # noqa: E402
from jupyter_cc.collateral import Client, CollateralService, Settings  # noqa: E402
from jupyter_cc.decoding import decode_blob  # noqa: E402
from jupyter_cc.errors import TcbError  # noqa: E402
from tests.support.fake_kds import kds_routes  # noqa: E402
from tests.support.fake_pcs import FakeService, Route, pcs_routes, serve  # noqa: E402
from tests.support.tdx_builder import build_quote, make_pki, qe_identity, tcb_info  # noqa: E402

VECTORS = ROOT.parent / "shared" / "vectors"
AT_TDX = datetime(2023, 7, 1, tzinfo=timezone.utc)  # inside the real PCS collateral's validity
AT_SYNTH = datetime(2024, 6, 1, tzinfo=timezone.utc)
AT_SNP = datetime(2024, 6, 1, tzinfo=timezone.utc)
TARGET = 1.5
BLOCKS, PER_BLOCK, WARMUP = 30, 20, 30
COLD_ROUNDS = 15


def machine() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__}"
    )


def interleaved(a: Callable[[], object], b: Callable[[], object]) -> tuple[float, float]:
    """Median ms of ``a`` and of ``b``, in alternating blocks (order swapped each block)."""
    for _ in range(WARMUP):
        a()
        b()
    samples: dict[int, list[float]] = {0: [], 1: []}
    fns = (a, b)
    for block in range(BLOCKS):
        for which in (0, 1) if block % 2 == 0 else (1, 0):
            fn, out = fns[which], samples[which]
            for _ in range(PER_BLOCK):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(samples[0]) * 1000, statistics.median(samples[1]) * 1000


def line(what: str, full: float, base: float, base_name: str, *, target: float | None = TARGET) -> float:
    ratio = full / base
    verdict = f" (target <= {target:g}x): {'PASS' if ratio <= target else 'MISS'}" if target else ""
    print(f"{what}: median {full:.3f} ms; {base_name} {base:.3f} ms; ratio {ratio:.2f}x{verdict}")
    return ratio


def _quoted(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe="")


def _service(url: str, cache: Path, **kwargs: object) -> CollateralService:
    settings = Settings(intel_pcs=url, intel_certs=url, amd_kds=url, cache=cache)
    return CollateralService(settings, client=Client(None, timeout=5.0, backoff=0.05), **kwargs)  # type: ignore[arg-type]


# --- TDX ------------------------------------------------------------------------------------------


def synthetic_tdx(cache: Path) -> tuple[Callable[[], object], Callable[[], object], Callable[[], object]]:
    """(warm-cache verify, verify without collateral, the warm-cache verify with a profile hook)."""
    pki = make_pki()
    quote = build_quote(pki)
    roots = TrustStore.of(pki.anchor)
    pck_crl_chain = b"".join(c.public_bytes(Encoding.PEM) for c in (pki.platform, pki.root))
    fmspc = pki.fmspc.hex()
    routes = {
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": Route(
            tcb_info(pki), {"TCB-Info-Issuer-Chain": _quoted(pki.collateral_chain_pem())}
        ),
        "/tdx/certification/v4/qe/identity": Route(
            qe_identity(pki), {"SGX-Enclave-Identity-Issuer-Chain": _quoted(pki.collateral_chain_pem())}
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Route(
            pki.crl("platform", [12345]), {"SGX-PCK-CRL-Issuer-Chain": _quoted(pck_crl_chain)}
        ),
        "/IntelSGXRootCA.der": Route(pki.crl("root")),
    }
    with serve(FakeService(routes)) as pcs:
        service = _service(pcs.url, cache, intel_roots=roots)
        assert [i.origin for i in service.tdx(quote, at=AT_SYNTH).items] == ["fetched"] * 4

    def with_collateral() -> object:
        ev = Evidence(kind="tdx", report=quote, **service.tdx(quote, at=AT_SYNTH).inputs())
        return verify(ev, at=AT_SYNTH, roots=roots)

    def without() -> object:
        return verify(Evidence(kind="tdx", report=quote), at=AT_SYNTH, roots=roots)

    claims = with_collateral()
    assert claims.get("tcb_status") == "UpToDate", claims  # type: ignore[attr-defined]
    assert claims.get("revocation") == "checked", claims  # type: ignore[attr-defined]
    assert [i.origin for i in service.tdx(quote, at=AT_SYNTH).items] == ["cache"] * 4
    return with_collateral, without, with_collateral


def real_tdx(cache: Path) -> tuple[Callable[[], object], Callable[[], object]]:
    tdx = VECTORS / "tdx"
    quote = (tdx / "spr-e4-v4.quote.bin").read_bytes()
    with serve(FakeService(pcs_routes(tdx))) as pcs:
        service = _service(pcs.url, cache)
        service.tdx(quote, at=AT_TDX)

    def with_collateral() -> object:
        ev = Evidence(kind="tdx", report=quote, **service.tdx(quote, at=AT_TDX).inputs())
        try:
            return verify(ev, at=AT_TDX)
        except TcbError:  # every check up to the TCB level match passed
            return None

    def without() -> object:
        return verify(Evidence(kind="tdx", report=quote), at=AT_TDX)

    failure = ""
    try:
        verify(Evidence(kind="tdx", report=quote, **service.tdx(quote, at=AT_TDX).inputs()), at=AT_TDX)
    except TcbError as exc:
        failure = exc.message
    if "no TCB level" not in failure:
        raise AssertionError(f"the real collateral should stop at the TCB level match, not {failure!r}")
    return with_collateral, without


def cold_tdx(root: Path) -> list[float]:
    tdx = VECTORS / "tdx"
    quote = (tdx / "spr-e4-v4.quote.bin").read_bytes()
    out = []
    with serve(FakeService(pcs_routes(tdx))) as pcs:
        for i in range(COLD_ROUNDS + 1):
            start = time.perf_counter()
            files = _service(pcs.url, root / f"cold-tdx-{i}").tdx(quote, at=AT_TDX)
            elapsed = time.perf_counter() - start
            assert [item.origin for item in files.items] == ["fetched"] * 4
            if i:  # the first warms imports and the server's thread pool
                out.append(elapsed * 1000)
    return out


# --- SNP ------------------------------------------------------------------------------------------


def snp_inputs() -> tuple[bytes, object, list[object]]:
    raw = decode_blob((VECTORS / "snp/milan-v2.report.hex").read_bytes())
    vcek = load_certificate((VECTORS / "snp/milan-v2.vcek.der").read_bytes())
    chain = load_certificates((VECTORS / "amd/ask_ark_milan.pem").read_bytes())
    return raw, vcek, chain  # type: ignore[return-value]


def snp_pair() -> tuple[Callable[[], object], Callable[[], object], Callable[[], object]]:
    """(verify, verify with the link cache cleared, the raw signature checks)."""
    raw, vcek, chain = snp_inputs()
    ev = Evidence(kind="snp", report=raw, vek=vcek, chain=tuple(chain))  # type: ignore[arg-type]
    report = snp.parse_report(raw)
    vcek_key = vcek.public_key()  # type: ignore[attr-defined]
    ask, ark = chain
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey)
    ask_key, ark_key = ask.public_key(), ark.public_key()  # type: ignore[attr-defined]
    assert isinstance(ask_key, rsa.RSAPublicKey)
    assert isinstance(ark_key, rsa.RSAPublicKey)
    der = encode_dss_signature(report.signature_r, report.signature_s)
    pss = padding.PSS(padding.MGF1(hashes.SHA384()), 48)

    def full() -> object:
        return verify(ev, at=AT_SNP)

    def from_scratch() -> object:
        certs._check_issued_by.cache_clear()
        certs._check_structure.cache_clear()
        return verify(ev, at=AT_SNP)

    def raw_checks() -> None:
        vcek_key.verify(der, raw[: snp.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
        ask_key.verify(vcek.signature, vcek.tbs_certificate_bytes, pss, hashes.SHA384())  # type: ignore[attr-defined]
        ark_key.verify(ask.signature, ask.tbs_certificate_bytes, pss, hashes.SHA384())  # type: ignore[attr-defined]

    full()
    raw_checks()
    return full, from_scratch, raw_checks


def snp_cached(cache: Path) -> tuple[Callable[[], object], Callable[[], object]]:
    raw, vcek, chain = snp_inputs()
    with serve(FakeService(kds_routes(VECTORS))) as kds:
        service = _service(kds.url, cache)
        service.snp(raw, at=AT_SNP, product="Milan", crl=False)

    def with_cache() -> object:
        got = service.snp(raw, at=AT_SNP, product="Milan", crl=False)
        ev = Evidence(
            kind="snp",
            report=raw,
            vek=load_certificate(got.vcek, what="VCEK"),
            chain=tuple(load_certificates(got.chain, what="cached cert_chain")),
        )
        return verify(ev, at=AT_SNP)

    given = Evidence(kind="snp", report=raw, vek=vcek, chain=tuple(chain))  # type: ignore[arg-type]

    def with_files() -> object:
        return verify(given, at=AT_SNP)

    with_cache()
    return with_cache, with_files


def cold_snp(root: Path) -> list[float]:
    raw = decode_blob((VECTORS / "snp/milan-v2.report.hex").read_bytes())
    out = []
    with serve(FakeService(kds_routes(VECTORS))) as kds:
        for i in range(COLD_ROUNDS + 1):
            start = time.perf_counter()
            got = _service(kds.url, root / f"cold-snp-{i}").snp(raw, at=AT_SNP, product="Milan", crl=False)
            elapsed = time.perf_counter() - start
            assert [item.origin for item in got.items] == ["fetched"] * 2
            if i:
                out.append(elapsed * 1000)
    return out


def cold_line(what: str, samples: list[float]) -> None:
    print(
        f"{what}: median {statistics.median(samples):.2f} ms "
        f"(min {min(samples):.2f}, max {max(samples):.2f}, {len(samples)} fetches; no target)"
    )


def profile(fn: Callable[[], object], rounds: int = 2000) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the TDX warm-cache verify")
    args = parser.parse_args()
    if not VECTORS.is_dir():
        print(f"benchmarks need the evidence in {VECTORS}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-collateral-") as tmp:
        root = Path(tmp)
        synth_full, synth_base, synth_profiled = synthetic_tdx(root / "synthetic")
        real_full, real_base = real_tdx(root / "real")
        snp_full, snp_scratch, snp_raw = snp_pair()
        snp_cache, snp_files = snp_cached(root / "snp")
        raw = "raw checks (ECDSA P-384 + 2 RSA-PSS)"
        without = "same verify without collateral"
        pairs = {
            "tdx-synthetic": (
                "TDX verify, collateral from the warm cache (synthetic quote, full appraisal)",
                synth_full,
                synth_base,
                without,
            ),
            "tdx-real": (
                "TDX verify, collateral from the warm cache (real SPR quote, up to the TCB match)",
                real_full,
                real_base,
                without,
            ),
            "snp": ("SNP verify (links cached)", snp_full, snp_raw, raw),
            "snp-scratch": ("SNP verify (from scratch, link cache cleared)", snp_scratch, snp_raw, raw),
            "snp-cache": (
                "SNP verify, VCEK and chain from the warm cache",
                snp_cache,
                snp_files,
                "same verify with the certificates given",
            ),
        }
        ratios = {}
        for name, (what, measured, baseline, baseline_name) in pairs.items():
            full, base = interleaved(measured, baseline)
            ratios[name] = line(what, full, base, baseline_name)
        cold_line("TDX cold fetch (4 items from the loopback fake PCS, checked, cached)", cold_tdx(root))
        cold_line(
            "SNP cold fetch (cert_chain and VCEK from the loopback fake KDS, checked, cached)", cold_snp(root)
        )
        misses = [k for k, v in ratios.items() if v > TARGET]
        print(f"targets: {'all met' if not misses else 'MISSED: ' + ', '.join(misses)}")
        if args.profile:
            profile(synth_profiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
