"""jupyter_cc.files: input files read into one InputError sentence, outputs written whole."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from jupyter_cc.errors import InputError
from jupyter_cc.files import AtomicOutput, read_if_present, read_input, write_atomic, write_private


def test_read_input_names_what_the_file_was_for(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"^policy file {tmp_path / 'none'} does not exist") as err:
        read_input(str(tmp_path / "none"), "policy file")
    assert err.value.exit_status == 2
    with pytest.raises(InputError, match="is a directory, not a file"):
        read_input(str(tmp_path), "report")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InputError, match=r"report .* is empty"):
        read_input(tmp_path / "empty", "report")
    assert read_input(tmp_path / "empty", "report", allow_empty=True) == b""


def test_read_input_refuses_a_file_over_the_limit_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"x" * 11)
    with pytest.raises(InputError, match="is larger than 10 bytes"):
        read_input(path, "key file", 10)
    assert read_input(path, "key file", 11) == b"x" * 11


def test_an_unreadable_input_says_why(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(InputError, match=r"^cannot read sealed file .*plain/x \(Not a directory\)"):
        read_input(tmp_path / "plain" / "x", "sealed file")


def test_read_if_present_is_none_for_a_missing_file_only(tmp_path: Path) -> None:
    assert read_if_present(tmp_path / "audit.jsonl", "audit log") is None
    (tmp_path / "audit.jsonl").write_bytes(b"")
    assert read_if_present(tmp_path / "audit.jsonl", "audit log") == b""
    with pytest.raises(InputError, match=f"^audit log {tmp_path} is a directory, not a file"):
        read_if_present(tmp_path, "audit log")


def test_write_atomic_replaces_the_file_whole_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    write_atomic(path, b"new", fsync=True)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    staged = AtomicOutput(path, suffix=".part")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]

    def fail_halfway() -> None:
        with staged as fh:
            fh.write(b"half")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        fail_halfway()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_output_in_a_missing_folder_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AtomicOutput(tmp_path / "nope" / "out.bin")


def test_write_private_creates_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    write_private(path, b"k" * 32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"k" * 32
    with pytest.raises(FileExistsError):
        write_private(path, b"other")
    assert path.read_bytes() == b"k" * 32
