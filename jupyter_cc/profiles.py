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
    kbs = "kbs://kbs.example.org:8085?cert-sha256=3f1c...e0"

``%cc connect NAME``, ``%attest NAME`` and ``jupyter-cc profile ...`` read them;
:meth:`Profile.to_guest_target` opens the guest and :meth:`Profile.provisioner_config` gives
the kernelspec provisioner's config. Profiles hold no secrets (an identity file is a path).

Profile names are letters, digits, ``-`` and ``_`` (no dots, so a name never looks like a host
name). Unknown keys are refused, so a typo never silently falls back to a default.

Writing: the stdlib reads TOML but does not write it, so :func:`save_profile` and
:func:`remove_profile` edit the file with tomlkit, which keeps the rest of it (other tables such
as policies or key brokers, comments, blank lines, the order of keys and tables, comments inside
profile tables) as the user wrote it; a new profile is added after the existing ones. Only plain
``[profiles.NAME]`` tables are edited: with another layout (say ``profiles`` written as dotted
keys or an inline table) nothing is written and the error says to edit the file by hand. The
result is parsed back and compared with what was meant before it is written. The file is
replaced atomically and is mode 0600.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from jupyter_cc.attest.kinds import TEE_CHOICES
from jupyter_cc.errors import InputError
from jupyter_cc.files import write_atomic
from jupyter_cc.paths import config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from jupyter_cc.azure.settings import AzureSettings
    from jupyter_cc.remote.guest import GuestTarget

__all__ = [
    "TRANSPORTS",
    "Profile",
    "get_profile",
    "load_profiles",
    "remove_profile",
    "save_profile",
]

TRANSPORTS = ("ssh", "local")
KBS_SCHEMES = ("kbs", "https", "kbs+http", "http")
"""``kbs://`` and ``https://`` are HTTPS (pin with ``?cert-sha256=``); the plain ones are loopback only."""

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


def _check_kbs(where: str, kbs: str) -> None:
    """Refuse a key broker that is not a URL, plain HTTP off loopback, or a malformed pin.

    The same rules as the ``kbs://`` client's (design section 13,
    :mod:`jupyter_cc.keys.broker_trust`), checked when the profile is read rather than when a
    key is first released.
    """
    from jupyter_cc.kbs.tls import is_loopback_host
    from jupyter_cc.keys.broker_trust import normalize_pin

    url = urlsplit(kbs)
    if url.scheme not in KBS_SCHEMES or not url.netloc or not url.hostname:
        raise InputError(
            f"{where}: kbs {kbs!r} is not a key broker URL",
            hint="write it like kbs://host:8085?cert-sha256=HEX (`jupyter-cc kbs info` prints the pin)",
        )
    if url.scheme in ("http", "kbs+http") and not is_loopback_host(url.hostname):
        raise InputError(
            f"{where}: kbs {kbs!r} is plain HTTP to a broker that is not on loopback, so anyone on "
            "the network could answer for it",
            hint="write kbs://host:8085?cert-sha256=HEX (`jupyter-cc kbs info` on the broker prints it)",
        )
    for name, values in parse_qs(url.query, keep_blank_values=True).items():
        if name != "cert-sha256":
            raise InputError(f"{where}: kbs {kbs!r} has an unknown query parameter {name!r}")
        normalize_pin(values[-1], f"{where}: kbs cert-sha256")


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
        azure: the ``[profiles.NAME.azure]`` table: a confidential VM jupyter-cc creates, starts
            and deallocates in Azure (:mod:`jupyter_cc.azure.settings`); ``host`` may then be
            left unset (the VM's address is looked up).
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
    azure: AzureSettings | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        where = f"profile {self.name}"
        if self.transport not in TRANSPORTS:
            raise InputError(f"{where}: transport {self.transport!r} is not one of ssh, local")
        if self.tee not in TEE_CHOICES:
            raise InputError(f"{where}: tee {self.tee!r} is not one of {', '.join(TEE_CHOICES)}")
        if self.port is not None and (
            not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536
        ):
            raise InputError(f"{where}: port {self.port!r} is not a TCP port (1 to 65535)")
        for key in _STRING_KEYS:
            _check_string(where, key, getattr(self, key))
        if self.transport == "ssh" and not self.host and self.azure is None:
            raise InputError(f"{where}: transport ssh needs a host", hint="set host, or use transport local")
        self._check_policy_and_kbs(where)

    def _check_policy_and_kbs(self, where: str) -> None:
        """Refuse a relative policy path and a key broker that is not a URL."""
        if self.policy is not None and not os.path.isabs(os.path.expanduser(self.policy)):
            raise InputError(
                f"{where}: policy {self.policy!r} is not an absolute path",
                hint="a relative path would depend on the directory the kernel starts in",
            )
        if self.kbs is not None:
            _check_kbs(where, self.kbs)

    def to_guest_target(self) -> GuestTarget:
        """The :class:`~jupyter_cc.remote.guest.GuestTarget` that opens this profile's guest agent.

        An unset ``known_hosts`` means ``~/.ssh/known_hosts`` here (a profile always checks one).
        """
        from jupyter_cc.remote.guest import DEFAULT_KNOWN_HOSTS, GuestTarget

        return GuestTarget.from_options(
            transport=self.transport,
            host=self.host,
            port=self.port,
            user=self.ssh_user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts if self.known_hosts is not None else DEFAULT_KNOWN_HOSTS,
            host_key_file=self.host_key_file,
            python=self.python,
            tee=self.tee,
            sim_dir=self.sim_dir,
        )

    def provisioner_config(self) -> dict[str, Any]:
        """The ``metadata.kernel_provisioner.config`` of a kernelspec for this profile.

        Keys are the provisioner's traits (``user``, ``remote_python``, ...); unset values are
        left out so the provisioner's defaults apply, as ``jupyter-cc kernelspec install`` does.
        """
        from jupyter_cc.kernelspec import provisioner_config

        return provisioner_config(
            self.transport,
            self.tee,
            host=self.host if self.transport == "ssh" else None,
            port=self.port,
            user=self.ssh_user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts,
            host_key_file=self.host_key_file,
            policy=self.policy,
            remote_python=self.python,
            sim_dir=self.sim_dir,
            azure_profile=self.name if self.azure is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The profile's set values (``name`` included), for ``profile list --json``."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.azure is not None:
            out["azure"] = self.azure.to_table()
        return out

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
        values = dict(table)
        if "azure" in values:
            from jupyter_cc.azure.settings import AzureSettings

            values["azure"] = AzureSettings.from_table(values["azure"], where=f"{where}profile {name}: azure")
        for key, value in table.items():
            if key == "azure":
                continue
            expected: type = int if key == "port" else str
            if not isinstance(value, expected) or isinstance(value, bool):
                raise InputError(
                    f"{where}profile {name}: {key} is a TOML {type(value).__name__}, "
                    f"expected {'an integer' if expected is int else 'a string'}"
                )
        try:
            return cls(name=name, **values)
        except InputError as exc:
            raise InputError(f"{where}{exc.message}", hint=exc.hint) from None


def check_name(name: str) -> None:
    """Refuse a profile name that is not letters, digits, ``-`` and ``_`` (at most 64)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"profile name {name!r} is not letters, digits, '-' and '_' (starting with a letter or digit)",
            hint="a dot would make it look like a host name",
        )


def _check_string(where: str, key: str, value: object) -> None:
    """Refuse a string setting that is not a non-empty string of valid Unicode (``None``: unset)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InputError(f"{where}: {key} is a {type(value).__name__}, expected a string")
    if not value:
        raise InputError(f"{where}: {key} is empty", hint="leave it out to use the default")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: {key} is not valid Unicode text") from None


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


def _layout_error(config: Path) -> InputError:
    return InputError(
        f"cannot update the profiles in {config} without changing its other settings "
        "(profiles there are not plain [profiles.NAME] tables)",
        hint="edit the file by hand",
    )


def _editable(config: Path, text: str) -> tomlkit.TOMLDocument:
    """The config as a tomlkit document, if its profiles are plain ``[profiles.NAME]`` tables."""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError:
        raise _layout_error(config) from None
    tables = document.get("profiles")
    if tables is None:
        return document
    # A table, or the proxy tomlkit gives for [profiles.*] tables with other tables between them;
    # never an inline table, and every profile its own header (not dotted keys, not inline).
    if not isinstance(tables, Table | OutOfOrderTableProxy):
        raise _layout_error(config)
    for table in tables.values():
        if not isinstance(table, Table) or table.is_super_table():
            raise _layout_error(config)
    return document


def _values(profile: Profile) -> dict[str, Any]:
    """The profile's set values as its table holds them, in field order."""
    return {k: v for k, v in profile.to_json().items() if k != "name"}


def _put(document: tomlkit.TOMLDocument, profile: Profile) -> None:
    """Set ``profile``'s table in ``document``: in place if it exists (its comments stay), else
    after the other profiles."""
    values = _values(profile)
    tables = document.get("profiles")
    if tables is None:
        if document.as_string().strip():
            document.add(tomlkit.nl())
        tables = tomlkit.table(is_super_table=True)
        document.add("profiles", tables)
    table = tables.get(profile.name)
    if table is None:
        table = tomlkit.table()
        table.update(values)
        table.add(tomlkit.nl())
        tables[profile.name] = table
        return
    for key in [k for k in table if k not in values]:
        del table[key]
    for key, value in values.items():
        if table.get(key) != value:
            table[key] = value


def _write(config: Path, old_text: str, document: tomlkit.TOMLDocument, wanted: dict[str, Any]) -> None:
    """Write ``document`` if it parses back to ``wanted``; refuse (writing nothing) otherwise."""
    new_text = document.as_string()
    if new_text.endswith("\n\n") and not old_text.endswith("\n\n"):
        new_text = new_text.rstrip("\n") + "\n"  # no blank line at the end that was not there
    try:
        written = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        written = None
    if written != wanted:
        raise _layout_error(config)
    target = config.resolve() if config.is_symlink() else config  # keep the link, replace its file
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, new_text.encode("utf-8"), fsync=True)


def _wanted(doc: Mapping[str, Any], tables: Mapping[str, Any]) -> dict[str, Any]:
    """What the file must parse to: ``doc`` with ``tables`` (name to table) as its profiles."""
    wanted = {k: v for k, v in doc.items() if k != "profiles"}
    if tables:
        wanted["profiles"] = dict(tables)
    return wanted


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
    tables = _profile_tables(doc, config)
    for name, table in tables.items():
        Profile.from_table(name, table, source=str(config))  # refuse to keep an invalid profile
    if not replace and profile.name in tables:
        raise InputError(
            f"profile {profile.name} already exists in {config}",
            hint="remove it first, or pass --replace",
        )
    document = _editable(config, text)
    _put(document, profile)
    _write(config, text, document, _wanted(doc, {**tables, profile.name: _values(profile)}))
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
    for other, table in others.items():
        Profile.from_table(other, table, source=str(config))  # the others must still be valid
    document = _editable(config, text)
    kept = document["profiles"]
    del kept[name]
    if not kept:
        del document["profiles"]
    _write(config, text, document, _wanted(doc, others))
    return config
