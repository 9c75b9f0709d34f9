"""Where jupyter-cc keeps its state: the data dir and the user config file (design section 3).

How files there are written (whole, or private from the start) is :mod:`jupyter_cc.files`.
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_core.paths import jupyter_config_dir, jupyter_data_dir

__all__ = ["config_path", "data_dir"]


def data_dir() -> Path:
    """``$JUPYTER_DATA_DIR/jupyter_cc/``: simulated TEE roots, certificate cache, audit log."""
    return Path(jupyter_data_dir()) / "jupyter_cc"


def config_path() -> Path:
    """The user config, ``~/.jupyter/jupyter_cc.toml`` unless ``JUPYTER_CC_CONFIG`` names another."""
    override = os.environ.get("JUPYTER_CC_CONFIG")
    return Path(override) if override else Path(jupyter_config_dir()) / "jupyter_cc.toml"
