"""The simulated TEE (``sim-snp``): SEV-SNP reports signed by a locally generated AMD-like chain.

It is not a hardware TEE, and every face labels its evidence SIMULATED. It exists so the
demo, Binder, tests and anyone without TEE hardware run the very same parse and verify code as
real evidence: reports are minted in the exact 1184-byte SNP layout, signed with ECDSA P-384
by a VCEK that carries AMD's extensions, itself issued by an ASK and ARK signing with RSA-PSS
(SHA-384, salt 48), like AMD's.

What keeps it honest: its ARK is never a pinned hardware root, so its reports fail verification
as ``snp``; verified as ``sim-snp`` their claims say ``simulated: true``, and only a policy with
``allow_simulated = true`` accepts them (:mod:`jupyter_cc.policy`).

The chain, the VCEK and ARK private keys and a CRL issued by the ARK (``crl.der``, renewed
when past its nextUpdate) live in ``<data dir>/sim/`` (key files 0600), created on first use;
``sim-snp`` verification checks that CRL, so simulated claims say ``revocation: checked``.
Anyone who can read that folder can mint accepted simulated evidence: that is the point of a
simulator, and the reason no policy accepts it by default.

>>> tee = SimulatedTee.load_or_create()              # doctest: +SKIP
>>> report = tee.mint(report_data=b"\\x00" * 64)       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from jupyter_cc.attest import snp
from jupyter_cc.attest.certs import fingerprint, load_certificate, load_certificates
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.revocation import load_amd_crls, load_crl, stale_days
from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.errors import InputError
from jupyter_cc.files import write_atomic, write_private
from jupyter_cc.paths import data_dir

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence

__all__ = [
    "CRL_LIFETIME",
    "SIM_MEASUREMENT",
    "SIM_PRODUCT",
    "SIM_TCB",
    "SimulatedTee",
    "build_crl",
    "verify_evidence",
]

SIM_PRODUCT = "Milan"
SIM_CPUID = (0x19, 0x01, 0x01)  # family, model, stepping of a Milan part
SIM_TCB = snp.TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
SIM_MEASUREMENT = hashlib.sha384(b"jupyter-cc simulated guest v1").digest()
SIM_ORG = "jupyter-cc SIMULATED TEE (not a hardware TEE)"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_LOADED: dict[tuple[str, int, int, int], SimulatedTee] = {}
CRL_LIFETIME = dt.timedelta(days=30)
_CRLS: dict[tuple[str, int, int, int], x509.CertificateRevocationList] = {}


def _name(cn: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return bytes([0x16, len(body)]) + body


def _amd_ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _tcb_bytes(tcb: snp.TcbVersion) -> bytes:
    return bytes([tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode])


def _build_chain(
    chip_id: bytes, organization: str
) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    until = now + dt.timedelta(days=25 * 365)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    vcek_key = ec.generate_private_key(ec.SECP384R1())

    def builder(subject: str, issuer: str, key: object) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject, organization))
            .issuer_name(_name(issuer, organization))
            .public_key(key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
        )

    ca = x509.BasicConstraints(ca=True, path_length=None)
    ark = (
        builder(f"ARK-{SIM_PRODUCT}", f"ARK-{SIM_PRODUCT}", ark_key.public_key())
        .add_extension(ca, critical=True)
        .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
    )
    ask = (
        builder(f"SEV-{SIM_PRODUCT}", f"ARK-{SIM_PRODUCT}", ask_key.public_key())
        .add_extension(ca, critical=True)
        .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
    )
    oid = snp.AMD_OID
    vcek = (
        builder("SEV-VCEK", f"SEV-{SIM_PRODUCT}", vcek_key.public_key())
        .add_extension(_amd_ext(f"{oid}.1", _der_int(1)), critical=False)
        .add_extension(_amd_ext(snp.OID_PRODUCT_NAME, _der_ia5(f"{SIM_PRODUCT}-B0")), critical=False)
        .add_extension(_amd_ext(snp.OID_BL_SPL, _der_int(SIM_TCB.bootloader)), critical=False)
        .add_extension(_amd_ext(snp.OID_TEE_SPL, _der_int(SIM_TCB.tee)), critical=False)
        .add_extension(_amd_ext(snp.OID_SNP_SPL, _der_int(SIM_TCB.snp)), critical=False)
        .add_extension(_amd_ext(snp.OID_UCODE_SPL, _der_int(SIM_TCB.microcode)), critical=False)
        .add_extension(_amd_ext(snp.OID_HWID, chip_id), critical=False)
        .sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
    )
    return [vcek, ask, ark], vcek_key, ark_key


def build_crl(
    ark: x509.Certificate,
    ark_key: rsa.RSAPrivateKey,
    *,
    revoked: Sequence[int] = (),
    now: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
) -> bytes:
    """A DER CRL issued by the simulated ARK (RSA-PSS, SHA-384, as AMD KDS signs), listing
    ``revoked`` serials; current for :data:`CRL_LIFETIME` unless ``next_update`` says otherwise."""
    now = now or dt.datetime.now(dt.timezone.utc)
    until = next_update or now + CRL_LIFETIME
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(min(now, until) - dt.timedelta(days=1))
        .next_update(until)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
    return crl.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class SimulatedTee:
    """A loaded simulated TEE: its chain, its chip id and its VCEK signing key."""

    vcek: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # ASK, ARK
    chip_id: bytes
    _key: ec.EllipticCurvePrivateKey
    directory: Path | None = None

    def __repr__(self) -> str:
        return f"SimulatedTee(root={fingerprint(self.chain[-1])[:16]}..., SIMULATED)"

    @classmethod
    def load_or_create(cls, directory: Path | None = None, *, organization: str = SIM_ORG) -> SimulatedTee:
        """Load the simulated TEE from ``directory`` (default ``<data dir>/sim``), creating it once.

        ``organization`` names the chain's subjects; tests set it to AMD's to show that a chain
        which imitates AMD's names still fails, since only the root fingerprint counts.

        Creation happens in a private temporary folder renamed into place, so concurrent first
        uses never see a half-written chain: the loser of the race loads the winner's.
        """
        directory = directory or data_dir() / "sim"
        if not (directory / "vcek.key").exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".sim-", dir=directory.parent))
            try:
                chip_id = os.urandom(64)
                certs, key, ark_key = _build_chain(chip_id, organization)
                pem = serialization.Encoding.PEM
                pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                (tmp / "vcek.pem").write_bytes(certs[0].public_bytes(pem))
                (tmp / "ask_ark.pem").write_bytes(certs[1].public_bytes(pem) + certs[2].public_bytes(pem))
                write_private(tmp / "ark.key", ark_key.private_bytes(pem, pkcs8, plain))
                write_atomic(tmp / "crl.der", build_crl(certs[2], ark_key))
                # The VCEK key last: its presence says the folder is complete.
                write_private(tmp / "vcek.key", key.private_bytes(pem, pkcs8, plain))
                try:
                    os.rename(tmp, directory)
                except OSError:
                    if not (directory / "vcek.key").exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path | None = None) -> SimulatedTee:
        """Load an existing simulated TEE; :class:`InputError` when there is none.

        Loaded TEEs are cached by folder and key-file identity (inode, size, mtime), so a broker
        or verifier handling many reports reads and parses the chain once, and a recreated
        folder is noticed.
        """
        directory = directory or data_dir() / "sim"
        try:
            st = (directory / "vcek.key").stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            stamp = (str(directory), st.st_ino, st.st_size, st.st_mtime_ns)
            cached = _LOADED.get(stamp)
            if cached is None:
                cached = cls._load_files(directory)
                _LOADED.clear()  # one simulated TEE in use at a time; keep the cache tiny
                _LOADED[stamp] = cached
            return cached
        return cls._load_files(directory)

    @classmethod
    def _load_files(cls, directory: Path) -> SimulatedTee:
        try:
            vcek = load_certificate((directory / "vcek.pem").read_bytes(), what=str(directory / "vcek.pem"))
            chain = load_certificates(
                (directory / "ask_ark.pem").read_bytes(), what=str(directory / "ask_ark.pem")
            )
            key = serialization.load_pem_private_key((directory / "vcek.key").read_bytes(), password=None)
        except FileNotFoundError:
            raise InputError(
                f"there is no simulated TEE in {directory}",
                hint="simulated evidence can only be verified on the machine whose data dir minted it",
            ) from None
        except ValueError:
            raise InputError(
                f"the simulated TEE in {directory} is damaged", hint="remove that folder"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(
                f"the simulated TEE key in {directory} is not an EC key", hint="remove that folder"
            )
        info = snp.parse_vek(vcek)
        assert info.hwid is not None
        return cls(vcek=vcek, chain=tuple(chain), chip_id=info.hwid, _key=key, directory=directory)

    # --- the simulator's CRL ------------------------------------------------------------------

    def _ark_key(self) -> rsa.RSAPrivateKey | None:
        if self.directory is None:
            return None
        try:
            key = serialization.load_pem_private_key((self.directory / "ark.key").read_bytes(), password=None)
        except (OSError, ValueError):
            return None  # a simulator made before it had a CRL keeps no ARK key
        return key if isinstance(key, rsa.RSAPrivateKey) else None

    def _read_crl(self) -> x509.CertificateRevocationList | None:
        if self.directory is None:
            return None
        path = self.directory / "crl.der"
        try:
            st = path.stat()
            stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
            cached = _CRLS.get(stamp)
            if cached is None:
                cached = load_crl(path.read_bytes(), what=str(path))
                _CRLS.clear()
                _CRLS[stamp] = cached
        except (OSError, InputError):
            return None
        return cached

    def write_crl(
        self, revoked: Sequence[int] = (), *, next_update: dt.datetime | None = None
    ) -> x509.CertificateRevocationList | None:
        """Issue a new CRL with the ARK listing ``revoked`` serials and store it in the data dir.

        Returns the CRL (None when this simulator keeps no ARK key). A data dir that cannot be
        written still gets the CRL for this verification, in memory.
        """
        key = self._ark_key()
        if key is None or self.directory is None:
            return None
        data = build_crl(self.chain[-1], key, revoked=revoked, next_update=next_update)
        with contextlib.suppress(OSError):
            write_atomic(self.directory / "crl.der", data)
        return load_crl(data, what="the simulated TEE's CRL")

    def crl(self, at: dt.datetime | None = None) -> x509.CertificateRevocationList | None:
        """The simulator's CRL, issued by its ARK; renewed (keeping its entries) when missing or
        past its nextUpdate at ``at`` (default now). None for a simulator without an ARK key."""
        now = dt.datetime.now(dt.timezone.utc)
        when = max(at or now, now)
        crl = self._read_crl()
        if crl is not None and stale_days(crl.next_update_utc, when) == 0:
            return crl
        revoked = [entry.serial_number for entry in crl] if crl is not None else []
        return self.write_crl(revoked, next_update=when + CRL_LIFETIME)

    def trust_store(self) -> TrustStore:
        """The only roots ``sim-snp`` evidence is verified against: this simulator's ARK."""
        ark = self.chain[-1]
        return TrustStore.of(
            TrustAnchor(
                name=f"ARK-{SIM_PRODUCT} (SIMULATED)",
                fingerprint=fingerprint(ark),
                simulated=True,
                product=SIM_PRODUCT,
            )
        )

    def mint(
        self,
        report_data: bytes,
        *,
        measurement: bytes = SIM_MEASUREMENT,
        host_data: bytes = b"\x00" * 32,
        vmpl: int = 0,
        debug: bool = False,
        guest_svn: int = 0,
        version: int = 3,
    ) -> bytes:
        """A signed SNP report (version 2, 3 or 5 layout) carrying ``report_data`` (64 bytes)."""
        if version not in (2, 3, 5):
            raise InputError(f"the simulated TEE mints report versions 2, 3 and 5, not {version}")
        if len(report_data) != 64:
            raise InputError(f"REPORT_DATA must be 64 bytes, got {len(report_data)}")
        if len(measurement) != 48 or len(host_data) != 32:
            raise InputError("a measurement is 48 bytes and host data 32 bytes")
        policy = (1 << 17) | (1 << 16) | (int(debug) << 19)
        tcb = _tcb_bytes(SIM_TCB)
        body = bytearray(snp.REPORT_SIZE)
        struct.pack_into("<IIQ", body, 0x000, version, guest_svn, policy)
        struct.pack_into("<II", body, 0x030, vmpl, 1)
        body[0x038:0x040] = tcb
        struct.pack_into("<Q", body, 0x040, 0x3)  # SMT and TSME enabled
        struct.pack_into("<I", body, 0x048, 0)  # VCEK signs, chip id not masked
        body[0x050:0x090] = report_data
        body[0x090:0x0C0] = measurement
        body[0x0C0:0x0E0] = host_data
        body[0x140:0x160] = hashlib.sha256(report_data + measurement).digest()
        body[0x160:0x180] = b"\xff" * 32
        body[0x180:0x188] = tcb
        if version >= 3:
            body[0x188:0x18B] = bytes(SIM_CPUID)
        body[0x1A0:0x1E0] = self.chip_id
        body[0x1E0:0x1E8] = tcb
        body[0x1E8:0x1EB] = bytes([1, 55, 1])
        body[0x1EC:0x1EF] = bytes([1, 55, 1])
        body[0x1F0:0x1F8] = tcb
        if version >= 5:
            struct.pack_into("<QQ", body, 0x1F8, 0x1, 0x1)  # launch and current mitigation vectors
        der = self._key.sign(bytes(body[: snp.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        body[0x2A0:0x2E8] = r.to_bytes(72, "little")
        body[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(body)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def verify(
        self,
        report: bytes,
        *,
        at: dt.datetime,
        chain: Sequence[x509.Certificate] | None = None,
        crls: Sequence[x509.CertificateRevocationList] = (),
        allow_stale_days: int = 0,
    ) -> Claims:
        """Verify a simulated report with the same code as real SNP evidence (kind ``sim-snp``).

        The simulator's own CRL (:meth:`crl`) is checked with any ``crls`` given, so its claims
        say ``revocation: checked``, and a VCEK its CRL lists is refused.
        """
        parsed = snp.parse_report(report)
        own = self.crl(at)
        return snp.verify_report(
            parsed,
            self.vcek,
            list(chain or self.chain),
            at=at,
            roots=self.trust_store(),
            kind="sim-snp",
            crls=[*(() if own is None else (own,)), *crls],
            allow_stale_days=allow_stale_days,
        )


def verify_evidence(ev: Evidence, *, at: dt.datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``sim-snp``: the report must come from this data dir's TEE.

    ``roots`` is not used: simulated evidence is checked against the local chain only.
    """
    report = snp.parse_report(ev.binary())
    crls = load_amd_crls(ev.crls)
    return SimulatedTee.load().verify(report.raw, at=at, crls=crls, allow_stale_days=ev.allow_stale_days)
