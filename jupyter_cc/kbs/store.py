"""The key broker's resources: SQLite rows, key material sealed under a 0600 master key file.

Each resource (id ``repo/type/tag``) holds its key material, the TOML policy that guards it,
its creation and rotation times, a version (1, then +1 per rotation) and a revoked flag. The
material is stored only as AES-256-GCM ciphertext under a 32-byte master key kept in
``master.key`` beside the database (created with mode 0600 on first use, never logged); the GCM
additional data is ``jupyter-cc-kbs/v1|<id>|<version>``, so a ciphertext copied onto another
row or version fails to open instead of releasing the wrong key.

Used by :mod:`jupyter_cc.kbs.server` (read-only lookups on each release) and by
:mod:`jupyter_cc.cli.kbs` (``add-key``, ``list``, ``set-policy``, ``revoke``, ``rotate``).

>>> store = KeyStore(tmp / "kbs.sqlite")                              # doctest: +SKIP
>>> store.add("default/key/demo", os.urandom(32), policy_text=None)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jupyter_cc.errors import InputError, PolicyError
from jupyter_cc.files import write_private
from jupyter_cc.kbs.protocol import KbsError, ResourcePath
from jupyter_cc.paths import data_dir
from jupyter_cc.policy import Policy

__all__ = ["MASTER_KEY_NAME", "MAX_MATERIAL", "KeyStore", "Resource", "ResourceInfo", "default_db_path"]

MASTER_KEY_NAME = "master.key"
MAX_MATERIAL = 64 * 1024
_AAD_LABEL = b"jupyter-cc-kbs/v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    policy TEXT,
    created REAL NOT NULL,
    rotated REAL,
    revoked INTEGER NOT NULL DEFAULT 0
)
"""


def default_db_path() -> Path:
    """``<data dir>/kbs/kbs.sqlite``."""
    return data_dir() / "kbs" / "kbs.sqlite"


@dataclass(frozen=True)
class ResourceInfo:
    """What ``kbs list`` shows about a resource: everything but the key material."""

    id: str
    version: int
    size: int
    policy_name: str
    created: float
    rotated: float | None
    revoked: bool


@dataclass(frozen=True, repr=False)
class Resource:
    """A resource with its key material opened; ``repr`` never shows the material."""

    info: ResourceInfo
    material: bytes
    policy: Policy

    def __repr__(self) -> str:
        return f"Resource(id={self.info.id!r}, version={self.info.version}, size={self.info.size})"


@functools.lru_cache(maxsize=256)
def _parse_policy(text: str) -> Policy:
    # Policies are immutable and parsed on every release; the text is the cache key.
    return Policy.from_toml(text)


def _policy(text: str | None, where: str) -> Policy:
    if text is None:
        return Policy()
    try:
        return _parse_policy(text)
    except PolicyError as exc:
        raise PolicyError(exc.message, hint=exc.hint, source=where) from None


def _load_master_key(path: Path) -> bytes:
    """Read the master key, creating it (0600, 32 random bytes) when it does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_private(path, os.urandom(32))
        except FileExistsError:
            pass  # another process created it first; use theirs
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KbsError(
            f"the key broker's master key {path} is readable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run 'chmod 600 {path}'",
        )
    key = path.read_bytes()
    if len(key) != 32:
        raise KbsError(
            f"the key broker's master key {path} holds {len(key)} bytes, not 32",
            hint="restore it from a backup; the stored keys cannot be opened without it",
        )
    return key


class KeyStore:
    """Resources in one SQLite file; thread-safe (one connection guarded by a lock).

    Args:
        db_path: the database (created with its folder on first use); the master key file
            lives beside it as ``master.key``.
    """

    def __init__(self, db_path: Path | str | None = None) -> None:
        self.path = Path(db_path) if db_path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.master_key_path = self.path.parent / MASTER_KEY_NAME
        self._aead = AESGCM(_load_master_key(self.master_key_path))
        self._lock = threading.Lock()
        self._policies: tuple[int, tuple[Policy, ...]] | None = None
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise KbsError(f"cannot open the key broker database {self.path} ({exc})") from None
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass  # not ours to change (a shared file system); the material is sealed anyway

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- sealing ------------------------------------------------------------------------------

    @staticmethod
    def _aad(rid: str, version: int) -> bytes:
        return b"|".join((_AAD_LABEL, rid.encode(), str(version).encode()))

    def _seal(self, rid: str, version: int, material: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, material, self._aad(rid, version))

    def _open(self, rid: str, version: int, nonce: bytes, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, self._aad(rid, version))
        except InvalidTag:
            raise KbsError(
                f"stored key material of {rid} does not open with the master key",
                hint="the database or master.key was replaced or altered; restore both from one backup",
            ) from None

    @staticmethod
    def _check_material(material: bytes) -> None:
        if not material:
            raise InputError("key material is empty")
        if len(material) > MAX_MATERIAL:
            raise InputError(f"key material is {len(material)} bytes, more than the {MAX_MATERIAL} allowed")

    # --- queries ------------------------------------------------------------------------------

    def _row(self, rid: str) -> tuple[str, int, bytes, bytes, str | None, float, float | None, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT id, version, nonce, sealed, policy, created, rotated, revoked "
                "FROM resources WHERE id = ?",
                (rid,),
            ).fetchone()
        if row is None:
            raise KbsError(f"there is no resource {rid}", hint="add it with 'jupyter-cc kbs add-key'")
        return row  # type: ignore[no-any-return]

    @staticmethod
    def _info(row: tuple[str, int, bytes, bytes, str | None, float, float | None, int]) -> ResourceInfo:
        rid, version, _nonce, sealed, policy_text, created, rotated, revoked = row
        return ResourceInfo(
            id=rid,
            version=version,
            size=len(sealed) - 16,
            policy_name=_policy(policy_text, rid).name if policy_text else "default",
            created=created,
            rotated=rotated,
            revoked=bool(revoked),
        )

    def exists(self, rid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM resources WHERE id = ?", (rid,)).fetchone() is not None

    def get(self, rid: str) -> Resource:
        """The resource with its material opened; :class:`KbsError` when there is none."""
        row = self._row(str(ResourcePath.parse(rid)))
        return Resource(
            info=self._info(row),
            material=self._open(row[0], row[1], row[2], row[3]),
            policy=_policy(row[4], row[0]),
        )

    def list(self) -> list[ResourceInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, nonce, sealed, policy, created, rotated, revoked "
                "FROM resources ORDER BY id"
            ).fetchall()
        return [self._info(r) for r in rows]

    def policies(self) -> tuple[Policy, ...]:
        """The policy of every resource (the default one where none was set).

        Every ``attest`` asks (for ``allow_simulated`` and the collateral staleness), so the
        answer is kept until the database changes: SQLite's ``data_version`` moves when another
        connection (``jupyter-cc kbs set-policy``, another worker) commits, and this object's own
        changes drop the copy (:meth:`_update`, :meth:`add`).
        """
        with self._lock:
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            if self._policies is not None and self._policies[0] == version:
                return self._policies[1]
            rows = self._db.execute("SELECT id, policy FROM resources ORDER BY id").fetchall()
            policies = tuple(_policy(text, rid) for rid, text in rows)  # parsed texts are cached
            self._policies = (version, policies)
        return policies

    # --- changes ------------------------------------------------------------------------------

    def add(self, rid: str, material: bytes, *, policy_text: str | None = None) -> ResourceInfo:
        """Store a new resource; refuses an existing id (use :meth:`rotate`)."""
        rid = str(ResourcePath.parse(rid))
        self._check_material(material)
        if policy_text is not None:
            _policy(policy_text, "the policy")
        nonce, sealed = self._seal(rid, 1, material)
        with self._lock:
            self._policies = None
            try:
                self._db.execute(
                    "INSERT INTO resources (id, version, nonce, sealed, policy, created) "
                    "VALUES (?, 1, ?, ?, ?, ?)",
                    (rid, nonce, sealed, policy_text, time.time()),
                )
            except sqlite3.IntegrityError:
                raise KbsError(
                    f"resource {rid} already exists", hint="use 'jupyter-cc kbs rotate' to replace its key"
                ) from None
        return self._info(self._row(rid))

    def set_policy(self, rid: str, policy_text: str | None) -> ResourceInfo:
        """Replace the policy (None: the safe default policy)."""
        rid = str(ResourcePath.parse(rid))
        if policy_text is not None:
            _policy(policy_text, "the policy")
        self._update(rid, "UPDATE resources SET policy = ? WHERE id = ?", (policy_text, rid))
        return self._info(self._row(rid))

    def revoke(self, rid: str) -> ResourceInfo:
        """Mark the resource revoked: the broker refuses to release it from now on."""
        rid = str(ResourcePath.parse(rid))
        self._update(rid, "UPDATE resources SET revoked = 1 WHERE id = ?", (rid,))
        return self._info(self._row(rid))

    def rotate(self, rid: str, material: bytes) -> ResourceInfo:
        """Replace the key material with ``material`` (version + 1); clears a revocation."""
        rid = str(ResourcePath.parse(rid))
        self._check_material(material)
        version = self._row(rid)[1] + 1
        nonce, sealed = self._seal(rid, version, material)
        self._update(
            rid,
            "UPDATE resources SET version = ?, nonce = ?, sealed = ?, rotated = ?, revoked = 0 WHERE id = ?",
            (version, nonce, sealed, time.time(), rid),
        )
        return self._info(self._row(rid))

    def _update(self, rid: str, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._policies = None
            changed = self._db.execute(sql, params).rowcount
        if not changed:
            raise KbsError(f"there is no resource {rid}", hint="add it with 'jupyter-cc kbs add-key'")
