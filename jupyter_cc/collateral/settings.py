"""Where collateral comes from: the vendor base URLs, offline mode and the cache folder.

Design section 12 is the contract. Each setting is read from its environment variable first,
then from the same key in the ``[collateral]`` table of ``jupyter_cc.toml``
(:func:`jupyter_cc.paths.config_path`), then its default:

========================== ================= ==============================================
env var                    ``[collateral]``  default
========================== ================= ==============================================
JUPYTER_CC_INTEL_PCS_URL   intel_pcs         https://api.trustedservices.intel.com
JUPYTER_CC_INTEL_CERTS_URL intel_certs       https://certificates.trustedservices.intel.com
JUPYTER_CC_AMD_KDS_URL     amd_kds           https://kdsintf.amd.com
JUPYTER_CC_NVIDIA_RIM_URL  nvidia_rim        https://rim.attestation.nvidia.com
JUPYTER_CC_NVIDIA_OCSP_URL nvidia_ocsp       https://ocsp.ndis.nvidia.com
JUPYTER_CC_OFFLINE=1       offline = true    off
========================== ================= ==============================================

The cache is ``$JUPYTER_DATA_DIR/jupyter_cc/collateral/``. An ``http://`` base is allowed:
everything fetched is signed and checked to the pinned roots before it is used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jupyter_cc.errors import InputError
from jupyter_cc.files import read_if_present
from jupyter_cc.paths import config_path, data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULTS", "ENV_VARS", "Settings", "cache_dir", "load_settings"]

DEFAULTS: Mapping[str, str] = {
    "intel_pcs": "https://api.trustedservices.intel.com",
    "intel_certs": "https://certificates.trustedservices.intel.com",
    "amd_kds": "https://kdsintf.amd.com",
    "nvidia_rim": "https://rim.attestation.nvidia.com",
    "nvidia_ocsp": "https://ocsp.ndis.nvidia.com",
}
ENV_VARS: Mapping[str, str] = {
    "intel_pcs": "JUPYTER_CC_INTEL_PCS_URL",
    "intel_certs": "JUPYTER_CC_INTEL_CERTS_URL",
    "amd_kds": "JUPYTER_CC_AMD_KDS_URL",
    "nvidia_rim": "JUPYTER_CC_NVIDIA_RIM_URL",
    "nvidia_ocsp": "JUPYTER_CC_NVIDIA_OCSP_URL",
    "offline": "JUPYTER_CC_OFFLINE",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def cache_dir() -> Path:
    """``$JUPYTER_DATA_DIR/jupyter_cc/collateral/``."""
    return data_dir() / "collateral"


@dataclass(frozen=True)
class Settings:
    """The collateral settings in force (see the module docstring for where each comes from)."""

    intel_pcs: str = DEFAULTS["intel_pcs"]
    intel_certs: str = DEFAULTS["intel_certs"]
    amd_kds: str = DEFAULTS["amd_kds"]
    nvidia_rim: str = DEFAULTS["nvidia_rim"]
    nvidia_ocsp: str = DEFAULTS["nvidia_ocsp"]
    offline: bool = False
    cache: Path = field(default_factory=cache_dir)

    def with_offline(self, offline: bool) -> Settings:
        """These settings, offline when ``offline`` (a ``--offline`` flag only ever adds it)."""
        return replace(self, offline=self.offline or offline)


def _url(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise InputError(
            f"{where} sets {name} to {value!r}, which is not an http(s):// base URL",
            hint=f"set it like {DEFAULTS[name]}",
        )
    return value.rstrip("/")


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"{where} sets offline to {value!r}, expected 1/true or 0/false")


def _config_table(path: Path) -> dict[str, Any]:
    raw = read_if_present(path, "config file")
    if raw is None:
        return {}
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML ({exc})") from None
    table = doc.get("collateral", {})
    if not isinstance(table, dict):
        raise InputError(f"config file {path}: [collateral] must be a table")
    unknown = sorted(set(table) - set(ENV_VARS))
    if unknown:
        raise InputError(
            f"config file {path}: unknown [collateral] key(s) {', '.join(unknown)}",
            hint=f"use {', '.join(ENV_VARS)}",
        )
    return dict(table)


def load_settings(env: Mapping[str, str] | None = None, config: Path | None = None) -> Settings:
    """The settings from ``env`` (default ``os.environ``) over ``[collateral]`` of ``config``.

    Raises:
        InputError: a URL that is not http(s), an offline value that is not a boolean, an
            unreadable config file or an unknown ``[collateral]`` key.
    """
    env = os.environ if env is None else env
    path = config if config is not None else config_path()
    table = _config_table(path)
    values: dict[str, Any] = {}
    for name, var in ENV_VARS.items():
        if env.get(var) is not None:
            raw, where = env[var], f"environment variable {var}"
        elif name in table:
            raw, where = table[name], f"[collateral] of {path}"
        else:
            continue
        values[name] = _flag(raw, where) if name == "offline" else _url(raw, name, where)
    return Settings(**values)
