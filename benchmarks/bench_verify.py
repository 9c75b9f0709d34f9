"""Verification speed, as ratios measured in one run (design section 11).

SNP: median time of ``verify_report`` with the AMD chain already verified once (its links are
cached), against the raw signature check it contains (one ECDSA P-384 verification of the
report). Target: median <= 3 ms and <= 3x the raw check. TDX: ``verify_tdx`` against the two raw
ECDSA P-256 checks it contains (quote and QE report) plus the QE binding hash; ratio only.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_verify.py``); needs ../shared/vectors.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from jupyter_cc.attest import snp, tdx
from jupyter_cc.attest.certs import load_certificate, load_certificates
from jupyter_cc.decoding import decode_blob

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
AT_TDX = datetime(2023, 7, 1, tzinfo=timezone.utc)  # inside the sample PCK certificates' validity


def median_ms(fn: Callable[[], object], rounds: int = 400) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def bench_snp() -> tuple[float, float]:
    raw = decode_blob((VECTORS / "snp/milan-v2.report.hex").read_bytes())
    vcek = load_certificate((VECTORS / "snp/milan-v2.vcek.der").read_bytes())
    chain = load_certificates((VECTORS / "amd/ask_ark_milan.pem").read_bytes())
    report = snp.parse_report(raw)
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(report.signature_r, report.signature_s)

    def full() -> object:
        return snp.verify_report(snp.parse_report(raw), vcek, chain, at=AT)

    def raw_check() -> None:
        key.verify(der, raw[: snp.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))

    return median_ms(full), median_ms(raw_check)


def bench_tdx() -> tuple[float, float]:
    raw = (VECTORS / "tdx/spr-e4-v4.quote.bin").read_bytes()
    quote = tdx.parse_quote(raw)
    pck_key = tdx.pck_chain(quote)[0].public_key()
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)

    def der(sig: bytes) -> bytes:
        return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))

    quote_sig, qe_sig = der(quote.signature), der(quote.qe_report_signature)
    sha256 = ec.ECDSA(hashes.SHA256())

    def full() -> object:
        return tdx.verify_tdx(raw, at=AT_TDX)

    def raw_checks() -> None:
        att_key.verify(quote_sig, quote.signed_bytes, sha256)
        pck_key.verify(qe_sig, quote.qe_report.raw, sha256)
        hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()

    return median_ms(full), median_ms(raw_checks)


def main() -> int:
    if not VECTORS.is_dir():
        print(f"benchmarks need the evidence in {VECTORS}", file=sys.stderr)
        return 2
    cpu = platform.processor() or "cpu"
    print(f"machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    snp_full, snp_raw = bench_snp()
    ok = snp_full <= 3.0 and snp_full <= 3 * snp_raw
    print(
        f"SNP verify (chain cached): median {snp_full:.3f} ms; raw ECDSA P-384 check {snp_raw:.3f} ms; "
        f"ratio {snp_full / snp_raw:.2f}x (target <= 3 ms and <= 3x): {'MET' if ok else 'NOT MET'}"
    )
    tdx_full, tdx_raw = bench_tdx()
    print(
        f"TDX verify (chain cached): median {tdx_full:.3f} ms; raw checks {tdx_raw:.3f} ms; "
        f"ratio {tdx_full / tdx_raw:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
