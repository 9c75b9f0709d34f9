"""Named CVM profiles in the user config: how to reach a confidential VM and appraise it.

Profiles live in ``~/.jupyter/jupyter_cc.toml`` (``JUPYTER_CC_CONFIG`` names another file; see
:func:`jupyter_cc.paths.config_path`), one table each::

    [profiles.lab-cvm]
    transport = "ssh"
    host = "cvm.example.org"
    port = 22
    ssh_user = "azureuser"
    identity_file = "/home/me/.ssh/id_ed25519"
    policy = "/home/me/policies/prod.toml"
    tee = "az-snp-vtpm"
    kbs = "http://kbs.example.org:8085"

``%cc connect NAME``, ``%attest NAME`` and ``jupyter-cc profile ...`` read them;
:meth:`Profile.to_guest_target` opens the guest and :meth:`Profile.provisioner_config` gives
the kernelspec provisioner's config. Profiles hold no secrets (an identity file is a path).

Profile names are letters, digits, ``-`` and ``_`` (no dots, so a name never looks like a host
name). Unknown keys are refused, so a typo never silently falls back to a default.

Writing: the stdlib reads TOML but does not write it, so :func:`save_profile` writes this flat
schema itself (basic strings with backslash, quote and control characters escaped). The rest of
the file (other tables such as policies or key brokers, their comments and layout) is kept
verbatim: only the ``[profiles.*]`` tables are re-emitted (comments inside them are not kept).
The result is parsed back and compared with what was meant; if the file's layout defeats that
(say ``profiles`` written as dotted keys or an inline table), nothing is written and the error
says to edit the file by hand. The file is replaced atomically and is mode 0600.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_cc.errors import InputError
from jupyter_cc.paths import config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from jupyter_cc.remote.guest import GuestTarget

__all__ = [
    "TEES",
    "TRANSPORTS",
    "Profile",
    "get_profile",
    "load_profiles",
    "remove_profile",
    "save_profile",
    "toml_string",
]

TRANSPORTS = ("ssh", "local")
TEES = ("auto", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sim")
KBS_SCHEMES = ("http", "https", "kbs")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_PYTHON = "python3"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_STRING_KEYS = (
    "host",
    "ssh_user",
    "identity_file",
    "known_hosts",
    "host_key_file",
    "policy",
    "python",
    "kbs",
    "sim_dir",
)
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


@dataclass(frozen=True)
class Profile:
    """One ``[profiles.NAME]`` table. ``None`` means "not set": the consumer's default applies.

    Attributes:
        name: the table's name.
        transport: ``ssh`` to a CVM, or ``local`` (this machine is the TEE).
        host, port, ssh_user, identity_file, known_hosts: how to reach the CVM's sshd.
        host_key_file: path ON THE CVM of the sshd public key whose hash the evidence binds.
        policy: absolute path of the TOML policy that appraises the evidence.
        python: path ON THE CVM of a Python with jupyter-cc installed.
        tee: which evidence to collect (``auto`` probes).
        kbs: the key broker's URL for key release.
        sim_dir: the simulated TEE's folder in the guest (tests; not shown by the CLI).
    """

    name: str
    transport: str = "ssh"
    host: str | None = None
    port: int | None = None
    ssh_user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_file: str | None = None
    policy: str | None = None
    python: str | None = None
    tee: str = "auto"
    kbs: str | None = None
    sim_dir: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        where = f"profile {self.name}"
        if self.transport not in TRANSPORTS:
            raise InputError(f"{where}: transport {self.transport!r} is not one of ssh, local")
        if self.tee not in TEES:
            raise InputError(f"{where}: tee {self.tee!r} is not one of {', '.join(TEES)}")
        if self.port is not None and (
            not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536
        ):
            raise InputError(f"{where}: port {self.port!r} is not a TCP port (1 to 65535)")
        for key in _STRING_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InputError(f"{where}: {key} is a {type(value).__name__}, expected a string")
            if not value:
                raise InputError(f"{where}: {key} is empty", hint="leave it out to use the default")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"{where}: {key} is not valid Unicode text") from None
        if self.transport == "ssh" and not self.host:
            raise InputError(f"{where}: transport ssh needs a host", hint="set host, or use transport local")
        if self.policy is not None and not os.path.isabs(os.path.expanduser(self.policy)):
            raise InputError(
                f"{where}: policy {self.policy!r} is not an absolute path",
                hint="a relative path would depend on the directory the kernel starts in",
            )
        if self.kbs is not None:
            url = urlsplit(self.kbs)
            if url.scheme not in KBS_SCHEMES or not url.netloc:
                raise InputError(
                    f"{where}: kbs {self.kbs!r} is not a key broker URL",
                    hint="write it like http://host:8085 or kbs://host:8085",
                )

    def to_guest_target(self) -> GuestTarget:
        """The :class:`~jupyter_cc.remote.guest.GuestTarget` that opens this profile's guest agent."""
        from jupyter_cc.remote.guest import GuestTarget

        local = self.transport == "local"
        return GuestTarget(
            transport=self.transport,
            host="" if local else (self.host or ""),
            port=self.port if self.port is not None else 22,
            user=self.ssh_user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts if self.known_hosts is not None else DEFAULT_KNOWN_HOSTS,
            host_key_file=self.host_key_file,
            python=self.python or DEFAULT_PYTHON,
            tee=self.tee,
            sim_dir=self.sim_dir,
        )

    def provisioner_config(self) -> dict[str, Any]:
        """The ``metadata.kernel_provisioner.config`` of a kernelspec for this profile.

        Keys are the provisioner's traits (``user``, ``remote_python``, ...); unset values are
        left out so the provisioner's defaults apply, as ``jupyter-cc kernelspec install`` does.
        """
        config: dict[str, Any] = {"transport": self.transport, "tee": self.tee}
        for key, value in (
            ("host", self.host if self.transport == "ssh" else None),
            ("port", self.port),
            ("user", self.ssh_user),
            ("identity_file", self.identity_file),
            ("known_hosts", self.known_hosts),
            ("host_key_file", self.host_key_file),
            ("policy", self.policy),
            ("remote_python", self.python),
            ("sim_dir", self.sim_dir),
        ):
            if value is not None:
                config[key] = value
        return config

    def to_json(self) -> dict[str, Any]:
        """The profile's set values (``name`` included), for ``profile list --json``."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], *, source: str = "") -> Profile:
        """A profile from its TOML table, refusing unknown keys and wrong types."""
        known = [f.name for f in fields(cls) if f.name != "name"]
        where = f"{source}: " if source else ""
        if not isinstance(table, Mapping):
            raise InputError(f"{where}profiles.{name} is a {type(table).__name__}, expected a table")
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise InputError(
                f"{where}profile {name} has unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}",
                hint="known keys are " + ", ".join(known),
            )
        for key, value in table.items():
            expected: type = int if key == "port" else str
            if not isinstance(value, expected) or isinstance(value, bool):
                raise InputError(
                    f"{where}profile {name}: {key} is a TOML {type(value).__name__}, "
                    f"expected {'an integer' if expected is int else 'a string'}"
                )
        try:
            return cls(name=name, **dict(table))
        except InputError as exc:
            raise InputError(f"{where}{exc.message}", hint=exc.hint) from None


def check_name(name: str) -> None:
    """Refuse a profile name that is not letters, digits, ``-`` and ``_`` (at most 64)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"profile name {name!r} is not letters, digits, '-' and '_' (starting with a letter or digit)",
            hint="a dot would make it look like a host name",
        )


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: backslash, quote and control characters escaped."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _render(profile: Profile) -> str:
    lines = [f"[profiles.{profile.name}]"]
    for f in fields(profile):
        value = getattr(profile, f.name)
        if f.name == "name" or value is None:
            continue
        lines.append(f"{f.name} = {value}" if f.name == "port" else f"{f.name} = {toml_string(value)}")
    return "\n".join(lines) + "\n"


def _read_config(path: Path) -> tuple[str, dict[str, Any]]:
    """The config file's text and parsed document; both empty when there is no file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return "", {}
    except IsADirectoryError:
        raise InputError(f"config {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise InputError(f"config {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read config {path} ({exc.strerror})") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config {path} is not valid TOML ({exc})") from None


def _profile_tables(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    tables = doc.get("profiles", {})
    if not isinstance(tables, dict):
        raise InputError(f"config {path}: profiles is a {type(tables).__name__}, expected a table")
    return tables


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, Profile]:
    """Every profile in the config (``path``, default :func:`~jupyter_cc.paths.config_path`).

    Raises:
        InputError: unreadable or invalid TOML, an unknown key, a wrong type or value.
    """
    config = Path(path) if path is not None else config_path()
    _, doc = _read_config(config)
    tables = _profile_tables(doc, config)
    return {name: Profile.from_table(name, table, source=str(config)) for name, table in tables.items()}


def get_profile(name: str, path: str | os.PathLike[str] | None = None) -> Profile:
    """The profile ``name``.

    Raises:
        InputError: there is no such profile (the error lists the known ones), or the config is bad.
    """
    config = Path(path) if path is not None else config_path()
    profiles = load_profiles(config)
    if name not in profiles:
        known = ", ".join(sorted(profiles)) if profiles else "none"
        raise InputError(
            f"there is no profile {name!r} in {config} (known profiles: {known})",
            hint=f"add one with 'jupyter-cc profile add {name} --host HOST'",
        )
    return profiles[name]


_HEADER = re.compile(r"^\s*\[\[?\s*(?:\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|([A-Za-z0-9_-]+))")


def _segments(text: str) -> list[tuple[bool, str]]:
    """``text`` cut before each table header: (is it a profiles table, its text), in order.

    Triple-quoted strings are skipped so a line inside one is never taken for a header; the
    caller checks the result by parsing it, so an unusual layout fails safe.
    """
    segments: list[tuple[bool, list[str]]] = [(False, [])]
    in_string: str | None = None
    for line in text.splitlines(keepends=True):
        if in_string is None:
            match = _HEADER.match(line)
            if match:
                first = match.group(1) if match.group(1) is not None else match.group(2) or match.group(3)
                segments.append((first == "profiles", []))
        segments[-1][1].append(line)
        for quote in ('"""', "'''"):
            if in_string in (None, quote) and line.count(quote) % 2 == 1:
                in_string = quote if in_string is None else None
    return [(is_profile, "".join(lines)) for is_profile, lines in segments]


def _write_profiles(config: Path, text: str, doc: dict[str, Any], profiles: Mapping[str, Profile]) -> None:
    """Replace the file's ``[profiles.*]`` tables with ``profiles``, keeping everything else."""
    rendered = "\n".join(_render(profiles[name]) for name in sorted(profiles))
    parts: list[str] = []
    placed = False
    for is_profile, segment in _segments(text):
        if is_profile:
            if not placed and rendered:
                parts.append(rendered + "\n")
            placed = True
        else:
            parts.append(segment)
    if not placed and rendered:
        head = "".join(parts)
        if head and not head.endswith("\n"):
            head += "\n"
        parts = [head, "\n" if head.strip() else "", rendered]
    new_text = "".join(parts)

    wanted = {k: v for k, v in doc.items() if k != "profiles"}
    if profiles:
        wanted["profiles"] = {name: _table(p) for name, p in profiles.items()}
    try:
        written = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        written = None
    if written != wanted:
        raise InputError(
            f"cannot update the profiles in {config} without changing its other settings "
            "(profiles there are not plain [profiles.NAME] tables)",
            hint="edit the file by hand",
        )
    _write_atomic(config, new_text.encode("utf-8"))


def _table(profile: Profile) -> dict[str, Any]:
    return {k: v for k, v in profile.to_json().items() if k != "name"}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` as mode 0600 by renaming a complete temporary file over it."""
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_profile(
    profile: Profile, *, replace: bool = True, path: str | os.PathLike[str] | None = None
) -> Path:
    """Add ``profile`` to the config (or replace the one of that name); returns the config path.

    Raises:
        InputError: ``replace`` is false and the profile exists; the config is unreadable, holds
            an invalid profile, or is laid out so that rewriting it would change other settings.
    """
    config = Path(path) if path is not None else config_path()
    text, doc = _read_config(config)
    profiles = {
        name: Profile.from_table(name, table, source=str(config))
        for name, table in _profile_tables(doc, config).items()
    }
    if not replace and profile.name in profiles:
        raise InputError(
            f"profile {profile.name} already exists in {config}",
            hint="remove it first, or pass --replace",
        )
    profiles[profile.name] = profile
    _write_profiles(config, text, doc, profiles)
    return config


def remove_profile(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Remove the profile ``name`` (even one that no longer validates); returns the config path.

    Raises:
        InputError: there is no such profile, or the config cannot be rewritten safely.
    """
    config = Path(path) if path is not None else config_path()
    text, doc = _read_config(config)
    tables = _profile_tables(doc, config)
    if name not in tables:
        known = ", ".join(sorted(tables)) if tables else "none"
        raise InputError(f"there is no profile {name!r} in {config} (known profiles: {known})")
    others = {n: t for n, t in tables.items() if n != name}
    profiles = {n: Profile.from_table(n, t, source=str(config)) for n, t in others.items()}
    _write_profiles(config, text, doc, profiles)
    return config
