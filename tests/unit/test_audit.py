"""The hash-chained audit log: appends, the chain's checks, concurrency, the secret guard, the CLI."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc import audit
from jupyter_cc.audit import GENESIS, AuditError, VerifyResult, read, record, verify
from jupyter_cc.cli import main
from jupyter_cc.errors import InputError
from jupyter_cc.kbs.broker import append_audit


def write_log(path: Path, count: int = 5) -> list[bytes]:
    for i in range(count):
        record("seal", path=path, file=f"out{i}.sealed", key_id="demo", size=i)
    return path.read_bytes().splitlines(keepends=True)


def rewritten(log: Path, lines: Sequence[bytes]) -> VerifyResult:
    """Write ``lines`` over ``log`` (an edited copy of its own) and verify it."""
    log.write_bytes(b"".join(lines))
    return verify(log)


# --- appending ----------------------------------------------------------------------------------


def test_entries_chain_and_file_is_private(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "audit.jsonl"
    first = record("attest", path=log, target="local", passed=True, tee="sim-snp")
    second = record("release", path=log, resource="default/key/demo", fingerprint="ab" * 8)
    assert first["seq"] == 1 and first["prev"] == GENESIS
    lines = log.read_bytes().splitlines()
    assert second["seq"] == 2
    assert second["prev"] == hashlib.sha256(lines[0]).hexdigest()
    assert list(first)[:3] == ["seq", "time", "event"] and list(first)[-1] == "prev"
    assert json.loads(lines[1]) == second
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    result = verify(log)
    assert result.ok and result.entries == 2 and result.first_broken is None
    assert result.head == hashlib.sha256(lines[1]).hexdigest()


def test_env_var_and_data_dir_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(audit.ENV_VAR, raising=False)
    assert audit.audit_path() == tmp_path / "data" / "jupyter_cc" / "audit.jsonl"
    record("push", variable="df")
    assert read()[0]["variable"] == "df"
    monkeypatch.setenv(audit.ENV_VAR, str(tmp_path / "other.jsonl"))
    record("pull", variable="total")
    assert [e["event"] for e in read(tmp_path / "other.jsonl")] == ["pull"]
    assert audit.audit_path(tmp_path / "x") == tmp_path / "x"


def test_read_limit_and_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    assert read(log) == []
    assert verify(log).ok and verify(log).entries == 0
    write_log(log, 5)
    assert [e["seq"] for e in read(log, limit=2)] == [4, 5]
    assert len(read(log, limit=0)) == 0
    assert len(read(log)) == 5


def test_values_are_json_data(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    entry = record("seal", path=log, file=tmp_path / "a b", reasons=("x", "y"), nested={"n": [1, 2.5, None]})
    assert entry["file"] == str(tmp_path / "a b")
    assert entry["reasons"] == ["x", "y"]
    with pytest.raises(InputError, match="is bytes"):
        record("seal", path=log, digest=b"\x00" * 32)
    with pytest.raises(InputError, match="JSON cannot hold"):
        record("seal", path=log, ratio=float("nan"))
    with pytest.raises(InputError, match="reserved"):
        record("seal", path=log, seq=7)
    with pytest.raises(InputError, match="short lowercase name"):
        record("Seal Now", path=log)
    assert verify(log).entries == 1  # refusals write nothing


# --- the secret guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["key", "material", "secret", "token", "password", "private_key", "api_token", "apiKey", "key_material"],
)
def test_secret_named_fields_are_refused(tmp_path: Path, name: str) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(InputError, match="named like a secret"):
        record("release", path=log, **{name: "x"})
    with pytest.raises(InputError, match="named like a secret"):
        record("release", path=log, details={"inner": {name: "x"}})
    assert not log.exists() or log.read_bytes() == b""


@pytest.mark.parametrize(
    "name",
    ["key_id", "key_fingerprint", "token_id", "key_uri", "host_key_sha256", "public_key", "tee_pubkey"],
)
def test_references_to_secrets_are_allowed(tmp_path: Path, name: str) -> None:
    assert record("release", path=tmp_path / "a.jsonl", **{name: "ref"})[name] == "ref"


def test_private_key_values_are_refused(tmp_path: Path) -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE...\n-----END EC PRIVATE KEY-----\n"
    with pytest.raises(InputError, match="PEM private key"):
        record("seal", path=tmp_path / "a.jsonl", note=pem)


# --- the chain's checks ---------------------------------------------------------------------------


def test_edited_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    lines[2] = lines[2].replace(b"out2.sealed", b"evil.sealed")
    result = rewritten(log, lines)
    assert not result.ok and result.first_broken == 3
    assert result.reason is not None and "line 3 was edited" in result.reason
    assert hashlib.sha256(lines[2][:-1]).hexdigest() in result.reason  # found
    assert json.loads(lines[3])["prev"] in result.reason  # expected
    assert result.head == hashlib.sha256(lines[1][:-1]).hexdigest()


def test_edited_seq_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    lines[1] = lines[1].replace(b'"seq": 2', b'"seq": "2"')
    result = rewritten(log, lines)
    assert result.first_broken == 2 and "expected 2" in (result.reason or "")


def test_removed_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    del lines[1]
    result = rewritten(log, lines)
    assert result.first_broken == 2
    assert "has seq 3, expected 2" in (result.reason or "") and "removed" in (result.reason or "")


def test_removed_first_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    assert rewritten(log, lines[1:]).first_broken == 1


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    lines[2], lines[3] = lines[3], lines[2]
    result = rewritten(log, lines)
    assert result.first_broken == 3 and "has seq 4, expected 3" in (result.reason or "")


def test_duplicated_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    lines.insert(2, lines[1])
    result = rewritten(log, lines)
    assert result.first_broken == 3 and "duplicated" in (result.reason or "")


def test_truncated_tail_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    log.write_bytes(b"".join(lines)[:-20])
    result = verify(log)
    assert result.first_broken == 5 and "truncated" in (result.reason or "")
    with pytest.raises(AuditError, match="incomplete line"):
        record("seal", path=log, file="more")


def test_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    lines.insert(1, b"hello\n")
    result = rewritten(log, lines)
    assert result.first_broken == 2 and "not a JSON object" in (result.reason or "")
    with pytest.raises(AuditError, match="line 2"):
        read(log)
    log.write_bytes(b"".join(lines[:1]) + b"\n" + b"".join(lines[2:]))
    assert "empty line" in (verify(log).reason or "")


def test_rewritten_prev_on_line_one_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 2)
    lines[0] = lines[0].replace(GENESIS.encode(), b"1" * 64)
    result = rewritten(log, lines)
    # Line 1's own prev is wrong; line 2 then also no longer matches line 1, but line 1 comes first.
    assert result.first_broken == 1 and "does not start" in (result.reason or "")


def test_unreadable_log_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        verify(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        record("seal", path=tmp_path)


# --- concurrency ----------------------------------------------------------------------------------


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        record("push", path=path, worker=worker, n=i)


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers, count = 6, 40
    procs = [ctx.Process(target=_append_many, args=(str(log), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    result = verify(log)
    assert result.ok, result.reason
    assert result.entries == workers * count
    entries = read(log)
    assert sorted((e["worker"], e["n"]) for e in entries) == [
        (w, i) for w in range(workers) for i in range(count)
    ]


def _threads(count: int, fn: Any) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]


def test_group_commit_entries_are_durable_before_record_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads appending together share flushes, and none returns before a flush covered its line."""
    log = tmp_path / "audit.jsonl"
    flushed = [0]  # bytes of the log known to be on disk (the size when a finished flush began)
    flushes: list[int] = []
    real_sync = audit._sync

    def slow_sync(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.01)  # a slow disk: writers arriving meanwhile wait for the next flush
        real_sync(fd)
        flushes.append(size)
        flushed[0] = max(flushed[0], size)

    monkeypatch.setattr(audit, "_sync", slow_sync)
    seen: dict[int, int] = {}

    def append(i: int) -> None:
        for n in range(5):
            entry = record("release", path=log, worker=i, n=n)
            seen[entry["seq"]] = flushed[0]  # what was durable when record returned

    _threads(16, append)
    result = verify(log)
    assert result.ok, result.reason
    assert result.entries == 80
    ends = list(itertools.accumulate(len(line) for line in log.read_bytes().splitlines(keepends=True)))
    for seq, durable in seen.items():
        assert ends[seq - 1] <= durable, f"entry {seq} was returned before a flush covered it"
    assert len(flushes) < 80  # flushes were shared


def test_lock_is_not_held_while_flushing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer (another process's worker) can take the log's lock during a flush."""
    log = tmp_path / "audit.jsonl"
    record("seal", path=log, file="a.sealed")
    taken: list[bool] = []
    real_sync = audit._sync

    def probing_sync(fd: int) -> None:
        with open(log, "rb") as other:  # a separate open file: its flock conflicts with ours
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken.append(True)
                fcntl.flock(other, fcntl.LOCK_UN)
            except BlockingIOError:
                taken.append(False)
        real_sync(fd)

    monkeypatch.setattr(audit, "_sync", probing_sync)
    record("seal", path=log, file="b.sealed")
    assert taken == [True]


def test_failed_flush_is_an_audit_error_and_the_next_entry_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    record("seal", path=log, file="a.sealed")
    real_sync = audit._sync
    calls = [0]

    def failing_once(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(audit, "_sync", failing_once)
    with pytest.raises(AuditError, match="could not be flushed"):
        record("seal", path=log, file="b.sealed")
    record("seal", path=log, file="c.sealed")
    result = verify(log)
    assert result.ok and result.entries == 3
    assert not audit._flushers  # nothing left behind per file


def test_a_failed_flush_fails_every_writer_it_was_to_cover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer waiting behind a failed flush fails too: the kernel may have dropped its bytes."""
    log = tmp_path / "audit.jsonl"
    record("seal", path=log, file="a.sealed")
    real_sync = audit._sync
    calls = [0]
    flushing = threading.Event()

    def failing_first(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            flushing.set()
            time.sleep(0.5)  # long enough for the second writer to write and wait, even under load
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(audit, "_sync", failing_first)
    outcomes: dict[str, str] = {}

    def write(name: str) -> None:
        try:
            record("seal", path=log, file=f"{name}.sealed")
            outcomes[name] = "durable"
        except AuditError as exc:
            outcomes[name] = str(exc)

    first = threading.Thread(target=write, args=("b",))
    first.start()
    assert flushing.wait(10)
    write("c")  # written while the failing flush runs: it waits behind it
    first.join(10)
    assert outcomes["b"].startswith("audit log") and "Input/output error" in outcomes["b"]
    assert "could not be flushed" in outcomes["c"]
    record("seal", path=log, file="d.sealed")  # the next writer is flushed afresh
    assert verify(log).ok


# --- the broker's log -----------------------------------------------------------------------------


def test_broker_append_audit_is_chained(tmp_path: Path) -> None:
    log = tmp_path / "kbs" / "audit.jsonl"
    append_audit(log, {"event": "release", "resource": "default/key/demo", "fingerprint": "ab12"})
    append_audit(log, {"event": "deny", "resource": "default/key/x", "reasons": ["debug is on"]})
    assert verify(log).ok
    assert [e["event"] for e in read(log)] == ["release", "deny"]
    with pytest.raises(InputError, match="named like a secret"):
        append_audit(log, {"event": "release", "material": "00"})


# --- the CLI --------------------------------------------------------------------------------------


def run_cli(argv: Sequence[str]) -> int:
    """The real ``jupyter-cc`` entry point: its exit status, and its one sentence on stderr."""
    return main(list(argv))


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    assert run_cli(["audit", "verify", "--log", str(log)]) == 0
    assert "no entries" in capsys.readouterr().out
    lines = write_log(log, 3)
    assert run_cli(["audit", "verify", "--log", str(log)]) == 0
    assert "3 entries, chain intact" in capsys.readouterr().out
    lines[1] = lines[1].replace(b"out1", b"outX")
    log.write_bytes(b"".join(lines))
    assert run_cli(["audit", "verify", "--log", str(log)]) == 1
    err = capsys.readouterr().err
    assert "broken at line 2" in err and err.count("\n") == 1
    assert run_cli(["audit", "verify", "--log", str(tmp_path)]) == 2


def test_cli_verify_honours_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "env.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    write_log(log, 2)
    assert run_cli(["audit", "verify"]) == 0
    assert str(log) in capsys.readouterr().out


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    assert run_cli(["audit", "show", "--log", str(log)]) == 0
    assert "no audit entries" in capsys.readouterr().out
    write_log(log, 4)
    assert run_cli(["audit", "show", "--log", str(log), "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "seal" in out[0] and "file=out2.sealed" in out[0]
    assert run_cli(["audit", "show", "--log", str(log), "--json"]) == 0
    entries: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    with pytest.raises(SystemExit) as exc:
        run_cli(["audit", "show", "--limit", "-1"])
    assert exc.value.code == 2
