"""``kbs://`` key release: the Trustee KBS protocol from inside the TEE.

``release_kbs("kbs://host[:port]/repo/type/tag")`` runs the three protocol steps against
``jupyter-cc kbs serve`` or an upstream Trustee broker (see :mod:`jupyter_cc.kbs.protocol`):

1. ``auth``: an ephemeral key pair is made in this process (EC P-256 by default, RSA-3072 on
   request); the request is protocol 0.4.0 with the ``kbs_types::Tee`` name of the evidence to
   come, and the broker answers with a session cookie and a fresh nonce.
2. ``attest``: REPORT_DATA = HASH(canonical JSON of ``additional-evidence`` (empty), the nonce
   and the public key JWK), zero padded to 64 bytes; the evidence is collected in this process
   by the guest collector (``tee``, default ``$JUPYTER_CC_TEE`` or ``auto``; ``sim_dir``, default
   ``$JUPYTER_CC_SIM_DIR``) and sent as composite ``tee-evidence`` in the shape
   guest-components' attester for that TEE sends (``snp``, ``tdx``, ``az-snp-vtpm``,
   ``az-tdx-vtpm``; the simulated TEE as ``sample`` with its signed report beside it), so the same
   request works against ``jupyter-cc kbs serve`` and a Trustee KBS.
3. ``resource``: the key comes back as a JWE to the ephemeral key and is opened here; the
   private key is dropped right after, or kept in memory with the session's token by a
   :class:`KbsClient` until the token expires (Python cannot wipe memory; it is never written
   or shown).

Transport: ``kbs://host[:port]/...`` is HTTPS, default port 8085 (the port
``jupyter-cc kbs serve`` listens on; a Trustee KBS usually listens on 8080, so name it). The
broker must be authenticated before anything is sent: by a pinned certificate fingerprint
(``?cert-sha256=HEX``, ``$JUPYTER_CC_KBS_CERT_SHA256`` or ``[brokers."host:port"]`` in
``jupyter_cc.toml``), a CA file (``ca_file`` or ``$JUPYTER_CC_KBS_CA``) or the system trust store
(:mod:`jupyter_cc.keys.broker_trust`). The JWE alone proves nothing, since anyone can encrypt to
the TEE's public key: a resource from an unauthenticated broker is never accepted.
``kbs+http://`` is plain HTTP, accepted only to ``localhost`` or a loopback address.

Kept sessions: :func:`release_kbs` alone makes a whole release and keeps nothing. A
:class:`KbsClient` (the ``%release_key`` magic holds one per kernel) keeps, per broker, the
connection, the attestation token ``attest`` answered and that session's TEE key, so a later
release from the same broker is one ``resource`` request on the kept connection (as
guest-components keeps its token until it expires); the token is re-earned with a whole release
on a fresh connection (the broker authenticated again) when it nears expiry, is refused, or the
connection dropped, and on any other doubt. Every such request is still appraised by the
broker against the resource's policy and revocation state.

Every failure is one :class:`~jupyter_cc.keys.KeyReleaseError` naming the step, the HTTP
status and the broker's reason (for 403, the policy's failed rules).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.decoding import b64decode_any
from jupyter_cc.errors import InputError
from jupyter_cc.guest.collectors import collect_cpu_evidence
from jupyter_cc.kbs.protocol import (
    API_PREFIX,
    DEFAULT_HASH,
    HASH_ALGORITHMS,
    POLICY_HEADER,
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    KbsError,
    ResourcePath,
    decrypt_response,
    report_data_for,
    runtime_data_digest,
    tee_pubkey_jwk,
)
from jupyter_cc.keys import KeyReleaseError, ReleasedKey
from jupyter_cc.keys.broker_trust import BrokerTrust, normalize_pin, resolve_trust

__all__ = ["KbsClient", "KbsTarget", "parse_kbs_uri", "release_kbs"]

step_timer: Callable[[str, float], None] | None = None
"""Benchmarks set this to be told how long each step of a release took, in seconds: ``connect``
(TCP, TLS handshake and the pin check), ``auth``, ``evidence`` (collecting it here), ``attest``,
``resource`` (each request and its answer) and ``open`` (the JWE). Called in the releasing
thread; None (the default) times nothing."""


def _timed(step: str, started: float) -> None:
    if step_timer is not None:
        step_timer(step, time.perf_counter() - started)


DEFAULT_PORT = 8085
"""The broker's port when a URI names none, for ``kbs://`` (HTTPS) and ``kbs+http://`` alike."""
SCHEMES = ("kbs", "kbs+http")
_MAX_RESPONSE = 2 * 1024 * 1024
# Trustee's `tee` names for the collector choices (the broker checks each against the evidence),
# and the collector choice that gives each evidence kind.
_TRUSTEE_TEE = {k.tee_choice: k.trustee_tee for k in KINDS if k.tee_choice and k.trustee_tee}
_CHOICE_OF = {k.name: k.tee_choice for k in KINDS if k.tee_choice}


@dataclass(frozen=True)
class KbsTarget:
    """A parsed ``kbs://`` (HTTPS) or ``kbs+http://`` (plain, loopback only) URI."""

    host: str
    port: int
    tls: bool
    resource: ResourcePath
    pin: str | None = None
    """The ``?cert-sha256=`` fingerprint, normalized to lower-case hex, if the URI pins one."""

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def broker_uri(self) -> str:
        """``kbs://host:port`` (or ``kbs+http://``): the broker, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'kbs' if self.tls else 'kbs+http'}://{host}:{self.port}"


def parse_kbs_uri(uri: str) -> KbsTarget:
    """Parse ``kbs[+http]://host[:port]/repo/type/tag[?cert-sha256=HEX]``.

    Raises:
        InputError: malformed URI, unknown query parameter, a pin on plain HTTP, a bad pin.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        hint = "HTTPS is kbs://host[:port]/... now; pin the broker with ?cert-sha256=HEX"
        raise InputError(f"{uri!r} is not a kbs:// or kbs+http:// URI", hint=hint)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"cert-sha256"}
    if unknown:
        raise InputError(f"{uri!r} has unknown query parameters: {', '.join(sorted(unknown))}")
    tls = scheme == "kbs"
    pins = query.get("cert-sha256")
    if pins and not tls:
        raise InputError(f"{uri!r}: cert-sha256 pins an HTTPS broker; kbs+http:// has no certificate")
    if not parts.hostname:
        raise InputError(f"{uri!r} names no broker host", hint="write kbs://host[:port]/repo/type/tag")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InputError(f"{uri!r} has an invalid port") from None
    pin = normalize_pin(pins[-1], f"{uri!r} cert-sha256") if pins else None
    return KbsTarget(parts.hostname, port, tls, ResourcePath.parse(parts.path), pin)


class _Session:
    """One keep-alive connection to an authenticated broker and its session cookie.

    How the broker is authenticated is :func:`~jupyter_cc.keys.broker_trust.resolve_trust`'s
    decision, made here before any connection: plain HTTP off loopback is refused outright.
    """

    def __init__(self, target: KbsTarget, timeout: float, trust: BrokerTrust) -> None:
        self.target = target
        self.trust = trust
        self.conn: http.client.HTTPConnection = self.trust.connection(timeout)
        self.cookie: str | None = None

    def close(self) -> None:
        self.conn.close()

    def _exchange(
        self, step: str, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One request and its (bounded) body; the broker is authenticated as the connection opens."""
        try:
            if self.conn.sock is None:  # the connection opens (and the broker is authenticated) first
                started = time.perf_counter()
                self.conn.connect()
                _timed("connect", started)
            started = time.perf_counter()
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            answer = resp, resp.read(_MAX_RESPONSE + 1)
            _timed(step, started)
            return answer
        except KeyReleaseError:
            raise  # the pin did not match: already one sentence naming the broker
        except ssl.SSLError as exc:
            raise self.trust.handshake_refusal(exc) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail(
                step, f"cannot reach the broker at {self.target.base_url} ({exc.__class__.__name__}: {exc})"
            ) from None

    def call(
        self, step: str, method: str, path: str, body: Any = None
    ) -> tuple[Any, http.client.HTTPResponse]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        resp, raw = self._exchange(step, method, path, data, headers)
        if len(raw) > _MAX_RESPONSE:
            raise self._fail(step, f"the broker's response is larger than {_MAX_RESPONSE} bytes")
        self._take_cookie(resp)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if resp.status != 200:
            raise self._fail(step, f"HTTP {resp.status} {resp.reason}{_detail(doc)}")
        if not isinstance(doc, dict):
            raise self._fail(step, "the broker's answer is not a JSON object")
        return doc, resp

    def _take_cookie(self, resp: http.client.HTTPResponse) -> None:
        for header in resp.headers.get_all("Set-Cookie") or ():
            try:
                jar = SimpleCookie(header)
            except CookieError:
                continue
            if SESSION_COOKIE in jar:
                self.cookie = jar[SESSION_COOKIE].value

    def _fail(self, step: str, why: str) -> KeyReleaseError:
        return KeyReleaseError(
            f"key release of {self.target.resource} from {self.target.broker_uri} failed at {step}: {why}"
        )


def _detail(doc: Any) -> str:
    if not isinstance(doc, dict):
        return ""
    detail = str(doc.get("detail", "")).strip().rstrip(".")
    return f": {detail[:500]}" if detail else ""


def _selected_hash(challenge: dict[str, Any], offered: list[str] | None = None) -> str:
    """The broker's ``selected-hash-algorithm`` (sha384 when it names none, as upstream).

    ``extra-params`` may be an object or, from trustee's generic challenge, an empty string.
    """
    extra = challenge.get("extra-params")
    name = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
    if name is None:
        return DEFAULT_HASH
    name = str(name).lower()
    if name not in HASH_ALGORITHMS or (offered is not None and name not in offered):
        raise KbsError(f"the broker selected hash algorithm {name[:20]!r}, which this client did not offer")
    return name


def _offered_hashes(choice: str) -> list[str]:
    """Azure vTPM quotes carry the first 32 bytes of REPORT_DATA: ask for sha256 there."""
    return ["sha256"] if choice.startswith("az-") else list(HASH_ALGORITHMS)


def _cert_entries(vcek_pem: str | None, chain_pem: str | None) -> list[dict[str, Any]]:
    """sev's ``CertTableEntry`` list (``cert_type``, DER ``data`` as bytes) for upstream snp evidence."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from jupyter_cc.attest.certs import load_certificates

    entries: list[dict[str, Any]] = []
    for pem, leaf in ((vcek_pem, True), (chain_pem, False)):
        if not pem:
            continue
        for cert in load_certificates(pem.encode("ascii"), what="the SNP certificates"):
            cn = cert.subject.rfc4514_string()
            if leaf:
                cert_type = "VLEK" if "VLEK" in cn else "VCEK"
            elif cert.subject == cert.issuer:
                cert_type = "ARK"
            else:
                cert_type = "ASVK" if "VLEK" in cn else "ASK"
            entries.append({"cert_type": cert_type, "data": list(cert.public_bytes(Encoding.DER))})
            leaf = False
    return entries


def _upstream_evidence(kind: str, fields: dict[str, str], digest: bytes) -> tuple[str, dict[str, Any]]:
    """The ``tee`` and ``primary_evidence`` guest-components' attester for ``kind`` would send."""
    import base64

    from jupyter_cc.kbs.upstream import serialize_snp_report

    def raw(name: str) -> bytes:
        return base64.b64decode(fields[name])

    if kind == "sim-snp":  # upstream's sample shape, with the simulated TEE's signed report beside it
        sample = {"svn": "1", "report_data": base64.b64encode(digest).decode("ascii")}
        return "sample", {**sample, "jupyter-cc": {"kind": kind, "evidence": fields}}
    if kind == "snp":
        entries = _cert_entries(fields.get("vcek"), fields.get("chain"))
        return "snp", {
            "attestation_report": serialize_snp_report(raw("report")),
            "cert_chain": entries or None,
        }
    if kind == "tdx":
        return "tdx", {"cc_eventlog": None, "quote": fields["report"], "aa_eventlog": None}
    quote = {"signature": raw("tpm_sig").hex(), "message": raw("tpm_quote").hex(), "pcrs": []}
    if kind == "az-snp-vtpm":
        vcek = _cert_entries(fields.get("vcek"), None)
        der = bytes(vcek[0]["data"]) if vcek else b""
        b64u = base64.urlsafe_b64encode
        return kind, {
            "version": 1,
            "tpm_quote": quote,
            "hcl_report": b64u(raw("report")).decode("ascii"),
            "vcek": b64u(der).decode("ascii"),
        }
    if kind == "az-tdx-vtpm":
        return kind, {
            "tpm_quote": quote,
            "hcl_report": list(raw("report")),
            "td_quote": list(raw("td_quote")),
        }
    raise KbsError(f"{kind} evidence has no Trustee KBS form")


def _auth(session: _Session, tee: str, offered: list[str]) -> tuple[str, str]:
    """``auth`` as guest-components sends it; the challenge's nonce and the hash algorithm to use."""
    request = {
        "version": PROTOCOL_VERSION,
        "tee": tee,
        "extra-params": {"supported-hash-algorithms": offered},
    }
    challenge, _ = session.call("auth", "POST", f"{API_PREFIX}/auth", request)
    nonce = challenge.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise session._fail("auth", "the broker's challenge has no nonce")
    if session.cookie is None:
        raise session._fail("auth", f"the broker set no {SESSION_COOKIE} cookie")
    try:
        return nonce, _selected_hash(challenge, offered)
    except KbsError as exc:
        raise session._fail("auth", exc.message) from None


def _rcar(
    session: _Session,
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    choice: str,
    sim: str | Path | None,
) -> str:
    """``auth`` then ``attest`` exactly as guest-components 0.4.x does; the cookie is then
    attested, and the broker's attestation token is returned.

    ``auth`` names the TEE before any evidence exists; with ``tee="auto"`` the guess is ``snp``,
    and when the evidence found is another TEE's the handshake starts again once under its name.
    """
    jwk = tee_pubkey_jwk(private)
    additional = ""  # no device evidence from this client
    announced = _TRUSTEE_TEE.get(choice, "snp")
    for attempt in (1, 2):
        nonce, algorithm = _auth(session, announced, _offered_hashes(choice))
        digest = runtime_data_digest(nonce, jwk, algorithm, additional_evidence=additional)
        started = time.perf_counter()
        collected, _unavailable = collect_cpu_evidence(
            report_data_for(digest), tee=choice, sim_dir=Path(sim) if sim else None
        )
        _timed("evidence", started)
        try:
            tee, primary = _upstream_evidence(collected.kind, dict(collected.evidence), digest)
        except (KbsError, KeyError, ValueError) as exc:
            raise session._fail("attest", f"the {collected.kind} evidence cannot be sent ({exc})") from None
        if tee == announced:
            break
        if choice != "auto" or attempt == 2:
            raise session._fail("attest", f"the evidence collected is {tee}, not the {announced} announced")
        announced, choice = tee, _CHOICE_OF.get(collected.kind, collected.kind)
    attestation = {
        "init-data": None,
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": additional},
    }
    answer, _ = session.call("attest", "POST", f"{API_PREFIX}/attest", attestation)
    token = answer.get("token")
    if not isinstance(token, str):
        raise session._fail("attest", "the broker's answer has no attestation token")
    return token


def _resource_path(target: KbsTarget) -> str:
    r = target.resource
    return f"{API_PREFIX}/resource/{r.repository}/{r.type}/{r.tag}"


def _ephemeral_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A fresh TEE key of ``key_type`` ("ec" or "rsa", checked by :meth:`_Options.of`)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _open(session: _Session, doc: Any, private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    started = time.perf_counter()
    try:
        material = decrypt_response(doc, private)
    except KbsError as exc:
        raise session._fail("resource", exc.diagnostics().rstrip(".")) from None
    _timed("open", started)
    return material


@dataclass(frozen=True)
class _Options:
    """Everything besides the URI that decides how a release is made (part of the cache key)."""

    choice: str
    sim: str | None
    key_type: str
    timeout: float
    ca_file: str | None

    @classmethod
    def of(
        cls, tee: str | None, sim_dir: str | Path | None, key_type: str, timeout: float, ca_file: str | None
    ) -> _Options:
        if key_type not in ("ec", "rsa"):
            raise InputError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")
        sim = sim_dir or os.environ.get("JUPYTER_CC_SIM_DIR") or None
        return cls(
            tee or os.environ.get("JUPYTER_CC_TEE", "auto"),
            str(sim) if sim else None,
            key_type,
            timeout,
            ca_file or os.environ.get("JUPYTER_CC_KBS_CA") or None,
        )


def _trust(target: KbsTarget, options: _Options) -> BrokerTrust:
    return resolve_trust(
        target.host, target.port, tls=target.tls, uri_pin=target.pin, ca_file=options.ca_file
    )


class _Attested:
    """A full release's attested state kept for later releases from the same broker.

    The open connection (authenticated when it opened), the broker's attestation token for
    this session, the session's TEE private key (every JWE on this session is opened with it,
    and with nothing else) and the monotonic time after which the token is not used. Never
    shown: ``repr`` names the broker only.
    """

    __slots__ = ("expires", "private", "session", "token")

    def __init__(
        self,
        session: _Session,
        token: str,
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        expires: float,
    ) -> None:
        self.session = session
        self.token = token
        self.private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = private
        self.expires = expires

    def __repr__(self) -> str:
        return f"<attested session with {self.session.target.broker_uri}>"

    def __reduce__(self) -> Any:
        raise TypeError("an attested broker session cannot be pickled")

    def drop(self) -> None:
        """Close the connection and forget the token and the TEE key."""
        self.token = ""
        self.private = None
        self.session.close()


def _token_lifetime(token: str, now: float) -> float | None:
    """Seconds until the token's ``exp`` (read, not verified: the broker judges the token), or
    None when it has no usable ``exp``: such a token is never kept."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 65536:
        return None
    try:
        payload = json.loads(b64decode_any(parts[1], what="the token's payload"))
    except (InputError, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp) - now


def _readable(conn: http.client.HTTPConnection) -> bool:
    """True if an idle kept connection has something to read: the broker closed it (or spoke
    out of turn). Either way it is not used again."""
    import select

    sock = conn.sock
    if sock is None:
        return True
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class KbsClient:
    """``kbs://`` releases that keep, per broker, the connection and the attestation token.

    The first release from a broker is a full one (:func:`release_kbs`: a fresh connection with
    the broker authenticated, ``auth``, ``attest``, ``resource``). Its connection, the token the
    broker answered at ``attest`` and the session's TEE key are then kept, so a later release
    from the same broker is one ``resource`` request on that connection with
    ``Authorization: Bearer <token>``, its JWE opened with that session's key. The broker
    appraises each such request with the resource's policy and its revocation state exactly as
    a fresh one (:meth:`jupyter_cc.kbs.broker.Broker.release`).

    What is kept is keyed by the broker's origin and how it is authenticated (scheme, host,
    port, pin or CA file: :class:`~jupyter_cc.keys.broker_trust.BrokerTrust`) and by the
    evidence source and key type asked for, so a token is only ever sent on the connection it
    was issued on, to the broker that issued it. The kept state is dropped, and the release
    made in full on a fresh connection (the broker authenticated again), when:

    * the token is within ``margin`` seconds of its ``exp`` (or was kept ``max_age``);
    * the connection was closed or has unexpected data waiting (checked before the token is
      sent; a closed connection is never reopened with the token);
    * the broker answers anything but 200 or 404 (401: token refused, for example after a
      broker restart; 403: the full release appraises fresh evidence and its answer stands);
    * the answer does not open with the session's key, or the request fails in any way.

    Threads may share a client: a kept session serves one release at a time (it is taken out
    while in use), and a release from another thread meanwhile makes a whole release of its
    own. A kernel holds one client for its lifetime (the ``%release_key`` magic does);
    :meth:`close` drops every kept connection, token and key.

    >>> with KbsClient() as client:                                  # doctest: +SKIP
    ...     a = client.release("kbs://broker:8085/default/key/a?cert-sha256=...")
    ...     b = client.release("kbs://broker:8085/default/key/b?cert-sha256=...")  # one request
    """

    def __init__(
        self, *, margin: float = 10.0, max_age: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.margin = margin
        self.max_age = max_age
        self.clock = clock
        self._kept: dict[tuple[BrokerTrust, _Options], _Attested] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            brokers = sorted({key[0].broker for key in self._kept})
        return f"KbsClient(kept={brokers})"

    def __reduce__(self) -> Any:
        raise TypeError("a KbsClient cannot be pickled: its tokens and keys stay in this process")

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every kept connection and forget every token and TEE key."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        for entry in kept:
            entry.drop()

    def release(
        self,
        uri: str,
        *,
        tee: str | None = None,
        sim_dir: str | Path | None = None,
        timeout: float = 30.0,
        key_type: str = "ec",
        ca_file: str | None = None,
    ) -> ReleasedKey:
        """Release ``uri`` (arguments as :func:`release_kbs`), reusing a kept session if it can."""
        target = parse_kbs_uri(uri)
        options = _Options.of(tee, sim_dir, key_type, timeout, ca_file)
        trust = _trust(target, options)
        key = (trust, options)
        with self._lock:
            entry = self._kept.pop(key, None)  # taken out while in use: one request at a time
        if entry is not None:
            try:
                got = self._kept_release(entry, target, uri)
            except KeyReleaseError:  # a definite answer (404): the session stays good
                self._keep(key, entry)
                raise
            except BaseException:
                entry.drop()
                raise
            if got is not None:
                self._keep(key, entry)
                return got
            entry.drop()
        released, fresh = _full_release(target, uri, options, trust, keep=True)
        if fresh is not None:
            lifetime = _token_lifetime(fresh.token, time.time())
            if lifetime is None or lifetime - self.margin <= 0:
                fresh.drop()
            else:
                fresh.expires = self.clock() + min(lifetime - self.margin, self.max_age)
                self._keep(key, fresh)
        return released

    def _keep(self, key: tuple[BrokerTrust, _Options], entry: _Attested) -> None:
        with self._lock:
            old = self._kept.pop(key, None)
            self._kept[key] = entry
        if old is not None:
            old.drop()

    def _kept_release(self, entry: _Attested, target: KbsTarget, uri: str) -> ReleasedKey | None:
        """The resource over the kept connection with the kept token; None on any doubt."""
        session, private = entry.session, entry.private
        conn = session.conn
        if private is None or not entry.token or self.clock() >= entry.expires or _readable(conn):
            return None
        conn.auto_open = 0  # never reconnect silently with the token
        # The token, and the session cookie beside it: this broker reads the bearer token first,
        # a Trustee KBS its session's token by the cookie first, then the bearer token.
        headers = {"Accept": "application/json", "Authorization": f"Bearer {entry.token}"}
        if session.cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={session.cookie}"
        started = time.perf_counter()
        try:
            conn.request("GET", _resource_path(target), headers=headers)
            resp = conn.getresponse()
            raw = resp.read(_MAX_RESPONSE + 1)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        _timed("resource", started)
        if resp.will_close:
            conn.close()  # the broker ends the connection: this answer counts, the next starts afresh
            entry.expires = 0.0
        if len(raw) > _MAX_RESPONSE:
            return None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            return None
        if resp.status == 404:  # no such resource: a fresh attestation would not change that
            raise session._fail("resource", f"HTTP 404 {resp.reason}{_detail(doc)}")
        if resp.status != 200 or not isinstance(doc, dict):
            return None
        try:
            material = _open(session, doc, private)
        except KeyReleaseError:
            return None
        return ReleasedKey(
            material, key_id=str(target.resource), uri=uri, policy=resp.headers.get(POLICY_HEADER)
        )


def _full_release(
    target: KbsTarget, uri: str, options: _Options, trust: BrokerTrust, *, keep: bool
) -> tuple[ReleasedKey, _Attested | None]:
    """A whole release on a fresh connection; with ``keep``, its attested state for later ones."""
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = _ephemeral_key(options.key_type)
    assert private is not None
    session = _Session(target, options.timeout, trust)
    kept: _Attested | None = None
    try:
        token = _rcar(session, private, options.choice, options.sim)
        doc, resp = session.call("resource", "GET", _resource_path(target))
        material = _open(session, doc, private)
        policy = resp.headers.get(POLICY_HEADER)
        if keep and not resp.will_close and session.conn.sock is not None:
            kept = _Attested(session, token, private, 0.0)
    finally:
        private = None  # the ephemeral private key goes with this frame unless kept
        if kept is None:
            session.close()
    return ReleasedKey(material, key_id=str(target.resource), uri=uri, policy=policy), kept


def release_kbs(
    uri: str,
    *,
    tee: str | None = None,
    sim_dir: str | Path | None = None,
    timeout: float = 30.0,
    key_type: str = "ec",
    ca_file: str | None = None,
    client: KbsClient | None = None,
) -> ReleasedKey:
    """Release the resource ``uri`` names (see the module docstring for the steps).

    Args:
        tee: evidence source, one of :data:`jupyter_cc.attest.kinds.TEE_CHOICES`; default
            ``$JUPYTER_CC_TEE`` or ``auto``.
        sim_dir: the simulated TEE's folder for ``tee="sim"``; default ``$JUPYTER_CC_SIM_DIR``.
        timeout: seconds per network operation.
        key_type: the ephemeral key, ``ec`` (P-256, ECDH-ES+A256KW; upstream guest-components'
            default since December 2024) or ``rsa`` (3072 bits, RSA-OAEP-256).
        ca_file: PEM bundle to trust for HTTPS instead of the system CAs.
        client: a :class:`KbsClient` whose kept connection and token for this broker are used
            when still good (and kept for next time); None: a whole release, nothing kept.

    Raises:
        InputError: malformed URI or options.
        KeyReleaseError: a protocol step failed; the message names it and the broker's reason.
        EvidenceError: no evidence source works here.
    """
    if client is not None:
        return client.release(
            uri, tee=tee, sim_dir=sim_dir, timeout=timeout, key_type=key_type, ca_file=ca_file
        )
    target = parse_kbs_uri(uri)
    options = _Options.of(tee, sim_dir, key_type, timeout, ca_file)
    released, _ = _full_release(target, uri, options, _trust(target, options), keep=False)
    return released
