"""%release_key, %seal and %unseal in an IPython shell: one line on success, one sentence on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_cc.keys import ReleasedKey
from jupyter_cc.notebook.key_magics import KeyMagics


@pytest.fixture
def shell() -> InteractiveShell:
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("jupyter_cc")
    return ip


@pytest.fixture
def magics(shell: InteractiveShell) -> KeyMagics:
    m = shell.magics_manager.registry["KeyMagics"]
    assert isinstance(m, KeyMagics)
    m.keys.put("k", ReleasedKey(os.urandom(32), key_id="test/key/k", uri="kbs://test/key/k", policy="p"))
    return m


def test_seal_and_unseal_a_value_in_memory_and_on_disk(shell, magics, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shell.user_ns["data"] = {"rows": [1, 2, 3]}
    shell.run_line_magic("seal", "data --key k")
    assert "sealed 'data' with key 'k'" in capsys.readouterr().out
    assert isinstance(shell.user_ns["data_sealed"], (bytes, bytearray))
    shell.run_line_magic("unseal", "data_sealed --key k --as back")
    assert shell.user_ns["back"] == {"rows": [1, 2, 3]}
    shell.run_line_magic("seal", f"data --key k --to {tmp_path / 'd.sealed'}")
    shell.run_line_magic("unseal", f"{tmp_path / 'd.sealed'} --key k")
    assert shell.user_ns["d"] == {"rows": [1, 2, 3]}


def test_failures_are_one_sentence(shell, magics, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="no released key named 'other'"):
        shell.run_line_magic("seal", "x --key other")
    with pytest.raises(UsageError, match="there is no variable 'missing'"):
        shell.run_line_magic("seal", "missing --key k")
    shell.user_ns["x"] = b"secret bytes"
    shell.run_line_magic("seal", f"x --key k --to {tmp_path / 'x.sealed'}")
    data = bytearray((tmp_path / "x.sealed").read_bytes())
    data[-5] ^= 1
    (tmp_path / "x.sealed").write_bytes(bytes(data))
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("unseal", f"{tmp_path / 'x.sealed'} --key k --as y")
    assert str(info.value).startswith("%unseal: ")
    assert "y" not in shell.user_ns
    with pytest.raises(UsageError, match="usage"):
        shell.run_line_magic("seal", "x")  # --key is required
    with pytest.raises(UsageError, match="release_key"):
        shell.run_line_magic("release_key", "https://example.invalid/k")


def test_keyring_repr_shows_ids_not_material(magics) -> None:  # type: ignore[no-untyped-def]
    key = magics.keys.get("k")
    assert key.material.hex() not in repr(magics.keys)
    assert key.fingerprint in repr(magics.keys)


#: Stacks a confidential kernel must not import while it starts (each magic imports what it
#: uses when it runs): together they cost several hundred ms of every kernel start.
KERNEL_START_MUST_NOT_IMPORT = (
    "jupyter_cc.keys.kbs_client",
    "jupyter_cc.attest",
    "paramiko",
    "tornado",
    "cryptography.x509",
    "ipywidgets",
    "urllib3",
)


def test_loading_the_extension_imports_no_heavy_stack() -> None:
    """What ``--ext=jupyter_cc`` costs a kernel start: the magics' modules, nothing behind them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "before = set(sys.modules)\n"
        "ip.extension_manager.load_extension('jupyter_cc')\n"
        "assert 'attest' in ip.magics_manager.magics['line'], 'the magics were not registered'\n"
        f"heavy = {KERNEL_START_MUST_NOT_IMPORT!r}\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
