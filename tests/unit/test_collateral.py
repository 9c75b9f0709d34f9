"""The collateral service against a local Intel PCS v4: real collateral, faults, forgeries, cache."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jupyter_cc.attest.tdx import verify_tdx
from jupyter_cc.cli import main
from jupyter_cc.collateral import Cache, Client, CollateralService, Settings, load_settings
from jupyter_cc.collateral.cache import Entry
from jupyter_cc.collateral.fetch import Response, _retry_after
from jupyter_cc.errors import CollateralError, InputError, TcbError
from tests.support.fake_pcs import FakeService, Route, pcs_routes, serve

AT = datetime(2023, 7, 1, tzinfo=timezone.utc)
AT_TEXT = "2023-07-01T00:00:00Z"
TCB_PATH = "/tdx/certification/v4/tcb?fmspc=50806f000000"


@pytest.fixture
def tdx(vectors: Path) -> Path:
    return vectors / "tdx"


@pytest.fixture
def quote(tdx: Path) -> bytes:
    return (tdx / "spr-e4-v4.quote.bin").read_bytes()


@pytest.fixture
def pcs(tdx: Path) -> Iterator[FakeService]:
    with serve(FakeService(pcs_routes(tdx))) as service:
        yield service


def service_for(
    pcs: FakeService, cache: Path, *, offline: bool = False, **client: float
) -> CollateralService:
    settings = Settings(intel_pcs=pcs.url, intel_certs=pcs.url, cache=cache, offline=offline)
    waits: list[float] = []
    options = {"timeout": 2.0, "backoff": 0.01, **client}
    return CollateralService(settings, client=Client(None, sleep=waits.append, **options))  # type: ignore[arg-type]


# --- the production path, only the base URL changed -------------------------------------------


def test_fetch_verify_cache_then_cache_hit(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    service = service_for(pcs, tmp_path)
    files = service.tdx(quote, at=AT)
    assert [i.origin for i in files.items] == ["fetched"] * 4
    assert len(pcs.hits) == 4
    # The real vectors: go-tdx-guest's own test expects no TCB level to match this quote.
    with pytest.raises(TcbError, match="no TCB level"):
        verify_tdx(quote, at=AT, **files.inputs())
    again = service.tdx(quote, at=AT)
    assert [i.origin for i in again.items] == ["cache"] * 4
    assert len(pcs.hits) == 4
    assert again.inputs() == files.inputs()


def test_stale_entries_are_refreshed_online_and_marked_offline(
    pcs: FakeService, quote: bytes, tmp_path: Path
) -> None:
    service_for(pcs, tmp_path).tdx(quote, at=AT)
    later = datetime(2023, 7, 20, tzinfo=timezone.utc)  # past the TCB info's nextUpdate 07-18
    offline = service_for(pcs, tmp_path, offline=True).tdx(quote, at=later)
    stale = {i.entry.kind: i.stale_days for i in offline.items}
    assert stale["tdx-tcb-info"] == 2 and stale["tdx-qe-identity"] == 12
    assert len(pcs.hits) == 4
    hits = len(pcs.hits)
    service_for(pcs, tmp_path).tdx(quote, at=later)
    assert len(pcs.hits) == hits + 3  # the root CA CRL is fresh until 2024


def test_offline_with_an_empty_cache_names_what_is_missing(
    pcs: FakeService, quote: bytes, tmp_path: Path
) -> None:
    with pytest.raises(CollateralError, match=r"offline.*TDX TCB info for FMSPC 50806f000000") as info:
        service_for(pcs, tmp_path, offline=True).tdx(quote, at=AT)
    assert "collateral import" in info.value.diagnostics()
    assert pcs.hits == []


# --- faults -----------------------------------------------------------------------------------


def test_unknown_fmspc_is_404(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    del pcs.routes[TCB_PATH]
    with pytest.raises(
        CollateralError, match=r"Intel PCS has no TDX TCB info for FMSPC 50806f000000.*404"
    ) as info:
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert "--offline" in info.value.diagnostics()


def test_429_retry_after_is_honoured(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    pcs.rate_limit = 2
    waits: list[float] = []
    settings = Settings(intel_pcs=pcs.url, intel_certs=pcs.url, cache=tmp_path)
    service = CollateralService(settings, client=Client(None, backoff=0.01, sleep=waits.append))
    service.tdx(quote, at=AT)
    assert waits[:2] == [1.0, 1.0]


def test_429_with_a_long_retry_after_fails_at_once(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    pcs.rate_limit, pcs.retry_after = 5, "3600"
    with pytest.raises(CollateralError, match=r"rate-limits.*3600 s"):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert len(pcs.hits) == 1


def test_slow_service(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    pcs.delay = 0.5
    with pytest.raises(CollateralError, match=r"Intel PCS did not answer in time.*3 tries") as info:
        service_for(pcs, tmp_path, timeout=0.1).tdx(quote, at=AT)
    assert "collateral import" in info.value.diagnostics()
    assert not list(tmp_path.rglob("*.json"))


def test_service_down(quote: bytes, tmp_path: Path) -> None:
    dead = FakeService()
    with serve(dead):
        url = dead.url
    settings = Settings(intel_pcs=url, intel_certs=url, cache=tmp_path)
    with pytest.raises(CollateralError, match=r"Intel PCS (could not be reached|did not answer)"):
        CollateralService(settings, client=Client(None, timeout=1, backoff=0.01, sleep=lambda _: None)).tdx(
            quote, at=AT
        )


def test_server_errors_are_retried(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    pcs.status = 503
    with pytest.raises(CollateralError, match="answered 503"):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert len(pcs.hits) == 3


def test_corrupt_body_is_refused_and_not_cached(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    route = pcs.routes[TCB_PATH]
    pcs.routes[TCB_PATH] = Route(b"<html>oops</html>", route.headers)
    with pytest.raises(CollateralError, match="does not verify to the pinned roots, so it was not cached"):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert Cache(tmp_path).get("intel/tcb-info/50806f000000") is None


# --- forged collateral ------------------------------------------------------------------------


def test_one_byte_edited(tdx: Path, quote: bytes, tmp_path: Path) -> None:
    raw = (tdx / "tcb-info-50806f000000.json").read_bytes()
    edited = raw.replace(b'"pcesvn":11', b'"pcesvn":12', 1)
    with (
        serve(FakeService(pcs_routes(tdx, tcb_info=edited))) as pcs,
        pytest.raises(CollateralError, match="signature does not verify"),
    ):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert not list(tmp_path.rglob("*.json"))


def test_another_fmspc(tdx: Path, quote: bytes, tmp_path: Path) -> None:
    # Intel's genuine TCB info, but for another platform than the one asked for.
    raw = (tdx / "tcb-info-50806f000000.json").read_bytes()
    routes = pcs_routes(tdx)
    routes[TCB_PATH] = Route(raw, routes[TCB_PATH].headers)
    routes = {k.replace("50806f000000", "00906ed50000"): v for k, v in routes.items()}
    with serve(FakeService(routes)) as pcs:
        service = service_for(pcs, tmp_path)
        with pytest.raises(CollateralError, match="FMSPC 50806f000000, not the 00906ed50000"):
            service.obtain("tdx-tcb-info", {"fmspc": "00906ed50000"}, at=AT)
    assert not list(tmp_path.rglob("*.json"))


def test_resigned_by_a_self_made_key(tdx: Path, quote: bytes, tmp_path: Path) -> None:
    from tests.support.collateral_forge import resign_tcb_info

    forged, chain = resign_tcb_info((tdx / "tcb-info-50806f000000.json").read_bytes())
    with (
        serve(FakeService(pcs_routes(tdx, tcb_info=forged, tcb_chain=chain))) as pcs,
        pytest.raises(CollateralError, match="not pinned"),
    ):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    assert not list(tmp_path.rglob("*.json"))


def test_expired_issuer_chain(tdx: Path, tmp_path: Path) -> None:
    # go-tdx-guest's TCB Signing certificate expired 2025-05-21: collateral issued after that
    # (here: the real TCB info, served and judged as of 2025-06) is refused with it.
    with serve(FakeService(pcs_routes(tdx))) as pcs:
        service = service_for(pcs, tmp_path)
        with pytest.raises(CollateralError, match=r"expired|not valid"):
            service.obtain(
                "tdx-tcb-info", {"fmspc": "50806f000000"}, at=datetime(2025, 6, 1, tzinfo=timezone.utc)
            )
    assert not list(tmp_path.rglob("*.json"))


# --- the cache --------------------------------------------------------------------------------


def test_ten_concurrent_fetches_share_one_cache(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    results: list[object] = []

    def work() -> None:
        try:
            results.append(service_for(pcs, tmp_path).tdx(quote, at=AT).inputs())
        except Exception as exc:  # collected, asserted below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, dict) for r in results), results
    assert all(r == results[0] for r in results)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 4 and not any(n.startswith(".") for n in files)
    for path in tmp_path.rglob("*.json"):
        Entry.from_json(json.loads(path.read_bytes()))


def test_read_only_cache(
    pcs: FakeService, quote: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: make the file system refuse
        import errno
        import tempfile

        real_mkdir, real_mkstemp = Path.mkdir, tempfile.mkstemp

        def read_only(path: Path) -> None:
            if path == cache or cache in path.parents:
                raise OSError(errno.EROFS, "Read-only file system", str(path))

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            read_only(self)
            real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

        def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
            read_only(Path(str(kwargs["dir"])) / "x")
            return real_mkstemp(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        with pytest.raises(CollateralError, match=r"cannot write the collateral cache.*nothing was written"):
            service_for(pcs, cache).tdx(quote, at=AT)
        assert list(cache.iterdir()) == []
    finally:
        cache.chmod(0o700)


def test_full_cache_leaves_no_half_written_file(
    pcs: FakeService, quote: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jupyter_cc.files as files

    real = files.AtomicOutput.__exit__

    def full(self, kind, exc, tb):  # type: ignore[no-untyped-def]
        self._fh.write(b"partial")
        self._fh.close()
        self._tmp.unlink()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.AtomicOutput, "__exit__", full)
    with pytest.raises(CollateralError, match="No space left on device"):
        service_for(pcs, tmp_path).tdx(quote, at=AT)
    monkeypatch.setattr(files.AtomicOutput, "__exit__", real)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_damaged_entry_is_absent(pcs: FakeService, quote: bytes, tmp_path: Path) -> None:
    service = service_for(pcs, tmp_path)
    service.tdx(quote, at=AT)
    path = Cache(tmp_path).path("intel/tcb-info/50806f000000")
    path.write_bytes(path.read_bytes()[:50])
    assert Cache(tmp_path).get("intel/tcb-info/50806f000000") is None
    assert service.tdx(quote, at=AT).items[0].origin == "fetched"


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_env_and_config(tmp_path: Path) -> None:
    config = tmp_path / "jupyter_cc.toml"
    config.write_text('[collateral]\nintel_pcs = "http://pcs.example/"\noffline = true\n')
    s = load_settings({}, config)
    assert s.intel_pcs == "http://pcs.example" and s.offline
    assert s.amd_kds == "https://kdsintf.amd.com"
    s = load_settings({"JUPYTER_CC_INTEL_PCS_URL": "https://other", "JUPYTER_CC_OFFLINE": "0"}, config)
    assert s.intel_pcs == "https://other" and not s.offline
    assert load_settings({}, tmp_path / "none.toml").cache.name == "collateral"
    with pytest.raises(InputError, match="not an http"):
        load_settings({"JUPYTER_CC_AMD_KDS_URL": "ftp://x"}, config)
    config.write_text("[collateral]\nintel = 1\n")
    with pytest.raises(InputError, match="unknown"):
        load_settings({}, config)


# --- parsers (hypothesis) ---------------------------------------------------------------------


@given(st.binary(max_size=400))
def test_cache_entry_parser_never_crashes(data: bytes) -> None:
    try:
        Entry.from_json(json.loads(data))
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass


@given(
    st.dictionaries(
        st.sampled_from(["format", "version", "key", "kind", "params", "body", "chain"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.just({})),
    )
)
def test_cache_entry_fields_are_checked(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Entry.from_json(doc | {"format": "jupyter-cc-collateral-entry", "version": 1, "next_update": 5})


@given(st.text(max_size=40))
@example("²")  # a Unicode digit that float() refuses
def test_retry_after_parser(text: str) -> None:
    value = _retry_after(text)
    assert value is None or value >= 0
    assert Response(200, {"retry-after": text}).header("Retry-After") == text


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(pcs: FakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("JUPYTER_CC_INTEL_PCS_URL", pcs.url)
    monkeypatch.setenv("JUPYTER_CC_OFFLINE", "0")
    monkeypatch.setenv("JUPYTER_CC_INTEL_CERTS_URL", pcs.url)
    return tmp_path


def test_verify_tdx_fetches_from_the_configured_pcs(cli_env: Path, tdx: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    quote = str(tdx / "spr-e4-v4.quote.bin")
    status = main(["verify", "tdx", quote, "--at", AT_TEXT, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 1 and "no TCB level in the TCB info matches" in doc["errors"][0]
    assert [c["origin"] for c in doc["collateral"]] == ["fetched"] * 4


def test_verify_offline_with_an_empty_cache(cli_env: Path, tdx: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    status = main(["verify", "tdx", str(tdx / "spr-e4-v4.quote.bin"), "--at", AT_TEXT, "--offline"])
    err = capsys.readouterr().err
    assert status == 1 and "offline" in err and "TCB info for FMSPC 50806f000000" in err


def test_fetch_export_import_offline(cli_env: Path, tdx: Path, pcs: FakeService, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    quote = str(tdx / "spr-e4-v4.quote.bin")
    assert main(["collateral", "fetch", quote, "--at", AT_TEXT]) == 0
    capsys.readouterr()
    assert main(["collateral", "show", "--at", AT_TEXT, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown) == 4 and all(row["stale_days"] == 0 for row in shown)
    export = cli_env / "collateral.json"
    assert main(["collateral", "export", str(export)]) == 0
    # Another machine: no network, empty cache.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(cli_env / "airgap"))
    monkeypatch.setenv("JUPYTER_CC_INTEL_PCS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("JUPYTER_CC_OFFLINE", "0")
    capsys.readouterr()
    assert main(["collateral", "import", str(export), "--at", AT_TEXT]) == 0
    assert "imported 4 verified" in capsys.readouterr().out
    hits = len(pcs.hits)
    status = main(["verify", "tdx", quote, "--at", AT_TEXT, "--offline", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 1 and "no TCB level" in doc["errors"][0]  # verified with the imported collateral
    assert [c["origin"] for c in doc["collateral"]] == ["cache"] * 4
    assert len(pcs.hits) == hits


def test_import_refuses_a_forged_entry_and_imports_nothing(  # type: ignore[no-untyped-def]
    cli_env: Path, tdx: Path, capsys, monkeypatch
) -> None:
    assert main(["collateral", "fetch", str(tdx / "spr-e4-v4.quote.bin"), "--at", AT_TEXT]) == 0
    export = cli_env / "collateral.json"
    assert main(["collateral", "export", str(export)]) == 0
    doc = json.loads(export.read_text())
    import base64

    for entry in doc["entries"]:
        if entry["kind"] == "tdx-tcb-info":
            body = base64.b64decode(entry["body"]).replace(b'"pcesvn":11', b'"pcesvn":12', 1)
            entry["body"] = base64.b64encode(body).decode()
    export.write_text(json.dumps(doc))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(cli_env / "airgap"))
    capsys.readouterr()
    assert main(["collateral", "import", str(export), "--at", AT_TEXT]) == 2
    err = capsys.readouterr().err
    assert "does not verify" in err and "nothing was imported" in err and "Traceback" not in err
    assert not (cli_env / "airgap" / "jupyter_cc" / "collateral").exists()


@pytest.mark.parametrize("content", [b"", b"not evidence at all", b'{"format": "x"}'])
def test_fetch_bad_input_is_one_sentence_exit_2(cli_env: Path, content: bytes, capsys) -> None:  # type: ignore[no-untyped-def]
    path = cli_env / "bad.bin"
    path.write_bytes(content)
    assert main(["collateral", "fetch", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_import_bad_file_exit_2(cli_env: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = cli_env / "bad.json"
    path.write_text('{"format": "jupyter-cc-collateral", "version": 1, "entries": [{"x": 1}]}')
    assert main(["collateral", "import", str(path)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_prune(cli_env: Path, tdx: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["collateral", "fetch", str(tdx / "spr-e4-v4.quote.bin"), "--at", AT_TEXT]) == 0
    root = cli_env / "data" / "jupyter_cc" / "collateral"
    (root / "intel" / ".leftover.tmp").write_bytes(b"x")
    capsys.readouterr()
    assert main(["collateral", "prune", "--at", "2023-07-10T00:00:00Z"]) == 0
    assert "removed 3 file(s)" in capsys.readouterr().out  # the leftover, QE identity, PCK CRL
    assert main(["collateral", "prune", "--all"]) == 0
    assert not list(root.rglob("*.json"))
