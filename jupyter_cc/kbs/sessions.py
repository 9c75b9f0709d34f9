"""The key broker's sessions, nonces and ``/attest`` rate limits, in one store every worker shares.

:class:`SessionStore` keeps what :class:`~jupyter_cc.kbs.broker.Broker` knows between the
protocol steps of one TEE: the nonce ``auth`` handed out (and whether it was used), and, after
``attest``, the verified claims, the TEE's public key and the token id. It is SQLite: a WAL-mode
file in the broker's data dir when ``jupyter-cc kbs serve --workers N`` runs several processes
(each opens its own connection; writes are short ``BEGIN IMMEDIATE`` transactions), or an
in-memory database for one process (tests, the demo). :meth:`SessionStore.reset` empties it when
a broker starts, so sessions never outlive the broker that opened them: after a restart a TEE
with an old cookie or token gets 401 and starts again (keys and policies are in
:class:`~jupyter_cc.kbs.store.KeyStore` and survive).

Abuse resistance (issue 12: ten thousand unauthenticated ``/auth`` calls must not lock TEEs out):

* an unattested session is reclaimed when its nonce expires (``nonce_ttl``, 60 s): after that
  it can never attest, so holding it serves no one;
* each client (peer address) holds at most ``max_per_client`` unattested sessions; its next
  ``auth`` evicts its own oldest unattested one, so a flooding client only churns its own;
* all clients together hold at most ``max_sessions`` unattested sessions; beyond that the
  oldest unattested one anywhere is evicted (never a 503);
* attested sessions are never evicted by new ones: they live to ``session_ttl``; there are only
  as many as evidence verified, which the ``/attest`` rate limit bounds;
* ``/attest`` (the expensive step: evidence verification) is a token bucket per client,
  ``attest_rate`` per second with bursts of ``attest_burst``; :meth:`SessionStore.attest_wait`
  says how long to wait (the server answers 429 with ``Retry-After``).

>>> sessions = SessionStore(None)                     # doctest: +SKIP
>>> sessions.open(session)                            # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_cc.attest.claims import Claims
from jupyter_cc.files import create_private_db
from jupyter_cc.kbs.protocol import KbsError

__all__ = ["SESSIONS_NAME", "Session", "SessionStore"]

SESSIONS_NAME = "sessions.sqlite"
_PRUNE_EVERY = 1.0
"""Seconds between sweeps of expired rows (each lookup also checks expiry itself)."""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        peer TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        nonce_expires REAL NOT NULL,
        nonce TEXT NOT NULL,
        tee TEXT NOT NULL,
        hash_algorithm TEXT NOT NULL,
        nonce_used INTEGER NOT NULL DEFAULT 0,
        attested INTEGER NOT NULL DEFAULT 0,
        claims TEXT,
        tee_pubkey TEXT,
        token_id TEXT UNIQUE,
        extra TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_open ON sessions (attested, created)",
    "CREATE INDEX IF NOT EXISTS sessions_peer ON sessions (peer, attested, created)",
    "CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires)",
    "CREATE INDEX IF NOT EXISTS sessions_nonce_expires ON sessions (nonce_expires)",
    """CREATE TABLE IF NOT EXISTS attest_rate (
        peer TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL
    )""",
)
_COLUMNS = (
    "id, peer, expires, nonce_expires, nonce, tee, hash_algorithm, nonce_used, "
    "claims, tee_pubkey, token_id, extra"
)
_LOOKUPS = {
    "id": f"SELECT {_COLUMNS} FROM sessions WHERE id = ? AND expires > ?",  # noqa: S608 - constants
    "token_id": f"SELECT {_COLUMNS} FROM sessions WHERE token_id = ? AND expires > ?",  # noqa: S608
}


@dataclass
class Session:
    """One client's protocol state, from ``auth`` until it expires.

    A copy of the store's row: :class:`~jupyter_cc.kbs.broker.Broker` changes the store through
    :meth:`SessionStore.consume_nonce` and :meth:`SessionStore.save_attested`, not by editing it.
    """

    id: str
    nonce: str
    tee: str
    hash_algorithm: str
    expires: float
    nonce_expires: float
    peer: str
    nonce_used: bool = False
    claims: Claims | None = None
    tee_pubkey: dict[str, Any] | None = None
    token_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """Frozen claim values back to JSON types (mappings to dicts, tuples to lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def claims_to_doc(claims: Claims) -> dict[str, Any]:
    """Claims as a JSON document that :func:`claims_from_doc` turns back into equal Claims."""
    return {
        "kind": claims.kind,
        "simulated": claims.simulated,
        "debug": claims.debug,
        "report_data": claims.report_data.hex(),
        "details": _plain(claims.details),
        "gpu": claims_to_doc(claims.gpu) if claims.gpu is not None else None,
        "gpus": [claims_to_doc(g) for g in claims.gpus],
    }


def claims_from_doc(doc: Mapping[str, Any]) -> Claims:
    """The inverse of :func:`claims_to_doc`."""
    gpu = doc.get("gpu")
    gpus = tuple(claims_from_doc(g) for g in doc.get("gpus") or () if isinstance(g, Mapping))
    return Claims(
        kind=str(doc["kind"]),
        simulated=bool(doc["simulated"]),
        debug=bool(doc["debug"]),
        report_data=bytes.fromhex(doc["report_data"]),
        details=_unplain(doc["details"]),
        gpu=claims_from_doc(gpu) if isinstance(gpu, Mapping) else None,
        gpus=gpus,
    )


@functools.lru_cache(maxsize=512)
def _claims_of(text: str) -> Claims:
    """The claims stored as ``text``, parsed once: a session is read at every step after
    ``attest``, and Claims are frozen, so sessions with equal claims may share one object."""
    return claims_from_doc(json.loads(text))


def _row_session(row: tuple[Any, ...]) -> Session:
    sid, peer, expires, nonce_expires, nonce, tee, algorithm, used, claims, jwk, jti, extra = row
    return Session(
        id=sid,
        nonce=nonce,
        tee=tee,
        hash_algorithm=algorithm,
        expires=expires,
        nonce_expires=nonce_expires,
        peer=peer,
        nonce_used=bool(used),
        claims=_claims_of(claims) if claims else None,
        tee_pubkey=json.loads(jwk) if jwk else None,
        token_id=jti,
        extra=json.loads(extra),
    )


class SessionStore:
    """Sessions and rate buckets in SQLite (see the module docstring for the limits).

    Args:
        path: the shared database file (WAL mode), or None for a private in-memory one.
        clock: seconds since the epoch (the broker's, so tests move both together).
        max_sessions: unattested sessions kept at most, all clients together.
        max_per_client: unattested sessions kept at most per peer address.
        attest_rate, attest_burst: the per-client ``/attest`` token bucket.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        max_sessions: int = 10_000,
        max_per_client: int = 64,
        attest_rate: float = 10.0,
        attest_burst: int = 20,
    ) -> None:
        if max_sessions < 1 or max_per_client < 1 or attest_rate <= 0 or attest_burst < 1:
            raise ValueError("session limits must be positive")
        self.path = path
        self.clock = clock
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self.attest_rate = attest_rate
        self.attest_burst = attest_burst
        self._lock = threading.Lock()
        self._last_prune = 0.0
        try:
            if path is not None:
                create_private_db(path)  # session ids are bearer secrets
            self._db = sqlite3.connect(
                str(path) if path else ":memory:", check_same_thread=False, isolation_level=None, timeout=10
            )
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # sessions die with the broker anyway
            for statement in _SCHEMA:
                self._db.execute(statement)
        except sqlite3.Error as exc:
            raise KbsError(
                f"cannot open the key broker's session store {path or ':memory:'} ({exc})"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction (atomic across worker processes)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise KbsError(f"the key broker's session store failed ({exc})") from None
            return result

    def reset(self) -> None:
        """Forget every session and bucket (a broker start: old cookies and tokens get 401)."""
        self._write(lambda db: (db.execute("DELETE FROM sessions"), db.execute("DELETE FROM attest_rate")))

    def prune(self, now: float, *, force: bool = False) -> None:
        """Drop expired sessions: attested at ``expires``, unattested when their nonce expires."""
        if not force and now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        idle = now - self.attest_burst / self.attest_rate  # a full bucket is no bucket

        def sweep(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("DELETE FROM sessions WHERE attested = 0 AND nonce_expires <= ?", (now,))
            db.execute("DELETE FROM attest_rate WHERE updated <= ?", (idle,))

        self._write(sweep)

    def open(self, session: Session) -> None:
        """Store a new unattested session, evicting as the caps say (never refusing)."""
        now = self.clock()
        self.prune(now)

        def insert(db: sqlite3.Connection) -> None:
            (mine,) = db.execute(
                "SELECT COUNT(*) FROM sessions WHERE peer = ? AND attested = 0", (session.peer,)
            ).fetchone()
            if mine >= self.max_per_client:
                db.execute(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions "
                    "WHERE peer = ? AND attested = 0 ORDER BY created LIMIT ?)",
                    (session.peer, mine - self.max_per_client + 1),
                )
            (total,) = db.execute("SELECT COUNT(*) FROM sessions WHERE attested = 0").fetchone()
            if total >= self.max_sessions:
                db.execute(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE attested = 0 "
                    "ORDER BY created LIMIT ?)",
                    (total - self.max_sessions + 1,),
                )
            db.execute(
                "INSERT INTO sessions (id, peer, created, expires, nonce_expires, nonce, tee, "
                "hash_algorithm, nonce_used, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.peer,
                    now,
                    session.expires,
                    session.nonce_expires,
                    session.nonce,
                    session.tee,
                    session.hash_algorithm,
                    int(session.nonce_used),
                    json.dumps(session.extra),
                ),
            )

        self._write(insert)

    def _one(self, where: str, value: str) -> Session | None:
        with self._lock:
            try:
                row = self._db.execute(_LOOKUPS[where], (value, self.clock())).fetchone()
            except sqlite3.Error as exc:
                raise KbsError(f"the key broker's session store failed ({exc})") from None
        return _row_session(row) if row else None

    def get(self, session_id: str) -> Session | None:
        """The session with this id unless it expired or was evicted."""
        return self._one("id", session_id)

    def by_token(self, token_id: str) -> Session | None:
        """The attested session whose token has this id (``jti``), if it is still live."""
        return self._one("token_id", token_id)

    def consume_nonce(self, session: Session) -> bool:
        """Mark the session's nonce used; True only for the one call that found it unused."""
        cur = self._write(
            lambda db: db.execute(
                "UPDATE sessions SET nonce_used = 1 WHERE id = ? AND nonce_used = 0", (session.id,)
            )
        )
        session.nonce_used = True
        return bool(cur.rowcount == 1)

    def save_attested(self, session: Session) -> None:
        """Record ``session``'s claims, TEE key, token id and extra members: it is attested now.

        Raises:
            KbsError: the session is gone (expired or evicted between the steps).
        """
        if session.claims is None or session.tee_pubkey is None or not session.token_id:
            raise ValueError("an attested session needs claims, a TEE key and a token id")
        values = (
            json.dumps(claims_to_doc(session.claims)),
            json.dumps(session.tee_pubkey),
            session.token_id,
            json.dumps(session.extra),
            session.id,
        )
        cur = self._write(
            lambda db: db.execute(
                "UPDATE sessions SET attested = 1, claims = ?, tee_pubkey = ?, token_id = ?, extra = ? "
                "WHERE id = ?",
                values,
            )
        )
        if cur.rowcount != 1:
            raise KbsError(
                "the session expired while its evidence was verified; start again with /kbs/v0/auth"
            )

    def attest_wait(self, peer: str) -> float:
        """Take one ``/attest`` from ``peer``'s bucket: 0 if allowed, else seconds until it would be."""
        now = self.clock()

        def take(db: sqlite3.Connection) -> float:
            row = db.execute("SELECT tokens, updated FROM attest_rate WHERE peer = ?", (peer,)).fetchone()
            tokens = float(self.attest_burst)
            if row is not None:
                tokens = min(tokens, row[0] + max(0.0, now - row[1]) * self.attest_rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.attest_rate
            db.execute(
                "INSERT INTO attest_rate (peer, tokens, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(peer) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
                (peer, tokens, now),
            )
            return wait

        return float(self._write(take))

    def counts(self) -> tuple[int, int]:
        """(unattested, attested) sessions held now, expired ones swept first."""
        self.prune(self.clock(), force=True)
        with self._lock:
            rows = dict(
                self._db.execute("SELECT attested, COUNT(*) FROM sessions GROUP BY attested").fetchall()
            )
        return int(rows.get(0, 0)), int(rows.get(1, 0))
