"""The ``jupyter_cc`` server extension: its REST API on a real Jupyter server, and state.py.

A ``jupyter server`` subprocess runs with the extension enabled explicitly (the packaged
``jupyter_server_config.d`` file is not relied on here), unauthenticated access disallowed, a
token, and a JUPYTER_PATH holding the simulated confidential kernelspec and a plain python3
kernel. The tests start kernels through ``/api/kernels`` and read them through
``/jupyter-cc/api/`` as JupyterLab's front end does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_cc import audit
from jupyter_cc.kernelspec import kernelspec, simulated_policy_path
from jupyter_cc.server import state
from tests.support.jupyter_server import jupyter_server

pytestmark = pytest.mark.timeout(180)

CC_KERNEL = "cc-sim"
FLIP_KERNEL = "cc-flip"  # its policy file is rewritten to refuse while the kernel runs
PLAIN_KERNEL = "plain-py"


@dataclass
class Server:
    url: str
    token: str
    log: Path
    audit_log: Path
    flip_policy: Path

    def call(
        self, method: str, path: str, *, token: bool = True, body: Any = None, timeout: float = 60
    ) -> tuple[int, Any]:
        """One request; answers (status, parsed JSON body or None)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"token {self.token}"
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                raw = answer.read()
                status = answer.status
        except urllib.error.HTTPError as error:
            raw = error.read()
            status = error.code
            error.close()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def start_kernel(self, name: str) -> str:
        status, body = self.call("POST", "/api/kernels", body={"name": name})
        assert status == 201, (status, body, self.log.read_text()[-3000:])
        return str(body["id"])


def _write_kernels(root: Path) -> None:
    cc = root / "kernels" / CC_KERNEL
    cc.mkdir(parents=True)
    spec = kernelspec(
        "Confidential (simulated)",
        {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())},
    )
    (cc / "kernel.json").write_text(json.dumps(spec))
    flip = root / "kernels" / FLIP_KERNEL
    flip.mkdir(parents=True)
    policy = root / "flip.toml"
    policy.write_text(simulated_policy_path().read_text())
    spec = kernelspec(
        "Confidential (policy flips)", {"transport": "local", "tee": "sim", "policy": str(policy)}
    )
    (flip / "kernel.json").write_text(json.dumps(spec))
    plain = root / "kernels" / PLAIN_KERNEL
    plain.mkdir(parents=True)
    (plain / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Plain Python",
                "language": "python",
            }
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server-ext")
    _write_kernels(tmp / "jupyter")
    audit_log = tmp / "audit.jsonl"
    audit.record("seal", path=audit_log, file="before-1.sealed", key_id="demo")
    audit.record("unseal", path=audit_log, file="before-2.sealed", key_id="demo")
    args = [
        "--ServerApp.jpserver_extensions={'jupyter_cc': True}",
        "--ServerApp.allow_unauthenticated_access=False",
    ]
    with jupyter_server(tmp, env={"JUPYTER_CC_AUDIT_LOG": str(audit_log)}, args=args) as running:
        yield Server(running.url, running.token, running.log, audit_log, tmp / "jupyter" / "flip.toml")


@pytest.fixture(scope="module")
def cc_kernel(server: Server) -> str:
    return server.start_kernel(CC_KERNEL)


# --- the REST API on a real server ---------------------------------------------------------------


def test_extension_loaded_without_auth_warning(server: Server) -> None:
    text = server.log.read_text()
    assert "jupyter_cc: attestation API at /jupyter-cc/api/" in text
    # Other installed extensions (jupyter_lsp, ...) may warn about their own endpoints; none of
    # the reported endpoints may be ours.
    reported = [line for line in text.splitlines() if line.startswith("- ") and " registered for " in line]
    assert not [line for line in reported if "jupyter-cc" in line or "jupyter_cc" in line], reported


def test_confidential_kernel_state(server: Server, cc_kernel: str) -> None:
    status, body = server.call("GET", f"/jupyter-cc/api/kernels/{cc_kernel}")
    assert status == 200, body
    assert list(body) == list(state.KEYS)
    assert body["kernel_id"] == cc_kernel
    assert body["confidential"] is True
    assert body["simulated"] is True
    assert body["error"] is None
    assert body["evidence_kind"].startswith("sim")
    assert body["verdict"] == {"passed": True, "policy": "simulated-demo", "reasons": []}
    assert body["claims"]["tee"] == body["evidence_kind"]
    assert len(body["claims"]["measurement"]) == 96
    assert body["attested_at"].endswith("Z")
    assert len(body["evidence_sha256"]) == 64
    assert body["gpu"] is None


def test_reattest_gives_fresh_evidence_and_an_audit_entry(server: Server, cc_kernel: str) -> None:
    _, before = server.call("GET", f"/jupyter-cc/api/kernels/{cc_kernel}")
    time.sleep(1.1)  # attested_at has whole seconds
    status, after = server.call("POST", f"/jupyter-cc/api/kernels/{cc_kernel}/attest")
    assert status == 200, after
    assert after["confidential"] is True
    assert after["attested_at"] > before["attested_at"]
    assert after["evidence_sha256"] != before["evidence_sha256"]  # a fresh nonce, so new evidence
    assert after["claims"]["measurement"] == before["claims"]["measurement"]
    _, again = server.call("GET", f"/jupyter-cc/api/kernels/{cc_kernel}")
    assert again == after
    entries = audit.read(server.audit_log)
    assert entries[-1]["event"] == "attest"
    assert entries[-1]["target"] == f"kernel {cc_kernel}"
    assert entries[-1]["passed"] is True
    assert entries[-1]["evidence_sha256"] == after["evidence_sha256"]
    assert audit.verify(server.audit_log).ok


def test_plain_kernel_is_not_confidential(server: Server) -> None:
    kernel = server.start_kernel(PLAIN_KERNEL)
    try:
        status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel}")
        assert status == 200, body
        assert body == state.plain_state(kernel)
        assert body["confidential"] is False
        assert body["error"] is None
        status, body = server.call("POST", f"/jupyter-cc/api/kernels/{kernel}/attest")
        assert status == 400
        assert body["message"].endswith("is not a confidential kernel, so there is nothing to attest.")
    finally:
        server.call("DELETE", f"/api/kernels/{kernel}")


def test_unknown_kernel_is_a_json_404(server: Server) -> None:
    for method, path in (
        ("GET", "/jupyter-cc/api/kernels/00000000-0000-0000-0000-000000000000"),
        ("POST", "/jupyter-cc/api/kernels/00000000-0000-0000-0000-000000000000/attest"),
        ("GET", "/jupyter-cc/api/kernels/not-a-kernel"),
    ):
        status, body = server.call(method, path)
        assert status == 404, (method, path, body)
        assert body["message"].startswith("There is no kernel with id")


def test_audit_tail(server: Server, cc_kernel: str) -> None:
    status, body = server.call("GET", "/jupyter-cc/api/audit")
    assert status == 200, body
    assert body["limit"] == state.DEFAULT_AUDIT_LIMIT
    events = [e["event"] for e in body["entries"]]
    assert events[:2] == ["seal", "unseal"]
    assert body["entries"] == audit.read(server.audit_log, limit=50)
    status, body = server.call("GET", "/jupyter-cc/api/audit?limit=1")
    assert status == 200
    assert body["entries"] == audit.read(server.audit_log)[-1:]
    status, body = server.call("GET", "/jupyter-cc/api/audit?limit=0")
    assert (status, body["entries"]) == (200, [])
    for bad in ("-1", "abc", "1001", "1.5", "9" * 40):
        status, body = server.call("GET", f"/jupyter-cc/api/audit?limit={bad}")
        assert status == 400, (bad, body)
        assert body["message"].startswith("Limit must be a whole number from 0 to 1000")


def test_every_route_refuses_without_a_token(server: Server, cc_kernel: str) -> None:
    for method, path in (
        ("GET", f"/jupyter-cc/api/kernels/{cc_kernel}"),
        ("POST", f"/jupyter-cc/api/kernels/{cc_kernel}/attest"),
        ("GET", "/jupyter-cc/api/audit"),
        ("GET", "/jupyter-cc/api/audit?limit=5"),
    ):
        status, body = server.call(method, path, token=False)
        assert status in (401, 403), (method, path, status, body)
        assert not (body or {}).get("entries")
        assert "claims" not in (body or {})
    # A wrong token is no better than none.
    wrong = Server(server.url, "0" * 32, server.log, server.audit_log, server.flip_policy)
    status, _ = wrong.call("GET", f"/jupyter-cc/api/kernels/{cc_kernel}")
    assert status in (401, 403)


def test_failed_reattestation_stops_the_kernel(server: Server) -> None:
    kernel = server.start_kernel(FLIP_KERNEL)
    status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel}")
    assert (status, body["confidential"]) == (200, True)
    text = server.flip_policy.read_text()
    server.flip_policy.write_text(text.replace("allow_simulated = true", "allow_simulated = false"))
    try:
        status, body = server.call("POST", f"/jupyter-cc/api/kernels/{kernel}/attest")
        assert status == 200, body
        assert body == state.plain_state(kernel, body["error"])
        assert "allow_simulated" in body["error"], body
        entry = audit.read(server.audit_log)[-1]
        assert (entry["event"], entry["passed"], entry["error"]) == ("attest-refused", False, body["error"])
        # Fail closed: the kernel was stopped; a later GET still says it is not trusted.
        status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel}")
        assert status in (200, 404), body
        if status == 200:
            assert body["confidential"] is False, body
        assert "re-attestation failed, stopping the kernel" in server.log.read_text()
    finally:
        server.flip_policy.write_text(text)
        server.call("DELETE", f"/api/kernels/{kernel}")


def test_shut_down_kernel_is_a_404(server: Server) -> None:
    kernel = server.start_kernel(CC_KERNEL)
    status, _ = server.call("DELETE", f"/api/kernels/{kernel}")
    assert status == 204
    status, body = server.call("GET", f"/jupyter-cc/api/kernels/{kernel}")
    assert status == 404, body  # a shut-down kernel is gone from the server


# --- no auth warning at load (the extension template's check_auth) ---------------------------------


# Run in a child process, like the extension template's check_auth.py: ServerApp.initialize
# installs signal handlers and an event loop that must not leak into the test process.
CHECK_AUTH = """
import json, sys, warnings
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import JupyterServerAuthWarning

if sys.argv[1] == "with-open":
    from jupyter_server.base.handlers import APIHandler

    import jupyter_cc.server.handlers as handlers

    class Open(APIHandler):
        async def get(self):
            self.finish("{}")

    original = handlers.routes
    handlers.routes = lambda base: [*original(base), (base + "jupyter-cc/api/open", Open)]

app = ServerApp(jpserver_extensions={"jupyter_cc": True}, allow_unauthenticated_access=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    app.initialize(argv=["--ServerApp.root_dir=" + sys.argv[2]], new_httpserver=False)
print(json.dumps([
    line
    for w in caught
    if issubclass(w.category, JupyterServerAuthWarning)
    for line in str(w.message).splitlines()
    if "jupyter-cc" in line
]))
"""


def _reported_endpoints(tmp_path: Path, mode: str) -> list[str]:
    """Initialize a ServerApp with auth enforced and our extension on; answer the endpoints of
    ours that the server's auth check reported (other installed extensions may report theirs)."""
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHECK_AUTH, mode, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_check_auth_no_warning(tmp_path: Path) -> None:
    assert _reported_endpoints(tmp_path, "as-shipped") == []


def test_check_auth_would_catch_an_undecorated_handler(tmp_path: Path) -> None:
    """The check above can fail: a handler without @web.authenticated is reported."""
    found = _reported_endpoints(tmp_path, "with-open")
    assert any("GET of Open" in text for text in found), found


# --- ConfidentialProvisioner.reattest (what the POST calls) ---------------------------------------


class _Sentinel:
    pass


def _provisioner(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> tuple[Any, list[str]]:
    """A ConfidentialProvisioner with a running kernel whose next attestation gives ``outcome``."""
    from jupyter_cc.provisioner import ConfidentialProvisioner

    prov = ConfidentialProvisioner(kernel_id="k", kernel_spec=None, parent=None)
    prov._link = _Sentinel()  # type: ignore[assignment]
    prov._pid = 4242
    prov.attestation = "old"  # type: ignore[assignment]
    ops: list[str] = []

    def attest_now() -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def request(op: str, **fields: Any) -> dict[str, Any]:
        ops.append(op)
        return {"exit_code": -9}

    monkeypatch.setattr(prov, "_attest_now", attest_now)
    monkeypatch.setattr(prov, "_request", request)
    return prov, ops


def test_reattest_keeps_the_new_attestation(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    fresh = _Sentinel()
    prov, ops = _provisioner(monkeypatch, fresh)
    prov.attestation_error = "stale"
    assert asyncio.run(prov.reattest()) is fresh
    assert prov.attestation is fresh and prov.attestation_error is None
    assert ops == [] and prov.has_process


@pytest.mark.parametrize("failure", ["ccerror", "other"])
def test_reattest_fails_closed(monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    import asyncio

    from jupyter_cc.errors import CCError, EvidenceError

    exc: Exception = (
        EvidenceError("the report is bound to another nonce")
        if failure == "ccerror"
        else OSError("link reset")
    )
    prov, ops = _provisioner(monkeypatch, exc)
    with pytest.raises(CCError) as info:
        asyncio.run(prov.reattest())
    assert prov.attestation is None
    assert prov.attestation_error == info.value.diagnostics()
    assert ("another nonce" if failure == "ccerror" else "unexpected OSError (link reset)") in (
        prov.attestation_error or ""
    )
    assert ops == ["stop"] and not prov.has_process  # the kernel was stopped
    assert prov.attestation_state() == {"confidential": False, "error": prov.attestation_error}


def test_reattest_refuses_a_kernel_that_is_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jupyter_cc.errors import CCError

    prov, ops = _provisioner(monkeypatch, _Sentinel())
    prov._pid = None
    with pytest.raises(CCError, match="not running"):
        asyncio.run(prov.reattest())
    assert prov.attestation == "old" and ops == []


# --- state.py (pure) -------------------------------------------------------------------------------


GOOD = {
    "confidential": True,
    "simulated": True,
    "evidence_kind": "sim",
    "verdict": {"passed": True, "policy": "simulated-demo", "reasons": []},
    "claims": {"tee": "sim", "measurement": "ab" * 48},
    "attested_at": "2026-01-01T00:00:00Z",
    "evidence_sha256": "cd" * 32,
    "source": "sim",
    "gpu": None,
}


class FakeProvisioner:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.has_process = True

    def attestation_state(self) -> dict[str, Any]:
        return self.answer

    async def reattest(self) -> None:
        raise AssertionError("not called by state.py")


def _km(provisioner: Any, provisioner_name: str | None = None) -> SimpleNamespace:
    metadata = {"kernel_provisioner": {"provisioner_name": provisioner_name}} if provisioner_name else {}
    return SimpleNamespace(provisioner=provisioner, kernel_spec=SimpleNamespace(metadata=metadata))


def test_state_attested() -> None:
    got = state.kernel_state("k1", _km(FakeProvisioner(GOOD)))
    assert list(got) == list(state.KEYS)
    assert got == {"kernel_id": "k1", "agent": None, **GOOD, "gpus": [], "error": None, "refusal": None}


def test_state_drops_unknown_keys_and_fills_missing() -> None:
    raw = {k: v for k, v in GOOD.items() if k != "gpu"} | {"notes": ["x"]}
    got = state.normalize("k", raw)
    assert "notes" not in got
    assert got["gpu"] is None
    assert got["confidential"] is True


def test_state_plain_kernel() -> None:
    local = SimpleNamespace(has_process=True)  # LocalProvisioner: no attestation_state
    assert state.kernel_state("k2", _km(local)) == {
        "kernel_id": "k2",
        "confidential": False,
        "simulated": None,
        "evidence_kind": None,
        "verdict": None,
        "claims": None,
        "attested_at": None,
        "evidence_sha256": None,
        "source": None,
        "gpu": None,
        "gpus": None,
        "agent": None,
        "error": None,
        "refusal": None,
    }
    assert state.kernel_state("k3", _km(None)) == state.plain_state("k3")


def test_refusal_json_shows_only_a_path_under_the_root(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from jupyter_cc.policy import Reason
    from jupyter_cc.provisioner import Refusal

    def refusal(session: str | None, name: str = "cc") -> Refusal:
        return Refusal(
            kernel_id="k9",
            kernel_name=name,
            display_name="CC",
            refused_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            check="policy",
            message="Confidential kernel not started: policy 'p' refused the sim-snp TEE.\n"
            "- r: expected a, observed b",
            rules=(Reason("r", "a", "b"),),
            session_path=session,
        )

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    inside = refusal(str(root / "sub" / "n.ipynb"))
    body = state.refusal_json(inside, str(root))
    assert body["path"] == "sub/n.ipynb"
    assert body["sentence"] == "Confidential kernel not started: policy 'p' refused the sim-snp TEE."
    assert body["rules"] == [{"rule": "r", "expected": "a", "observed": "b"}]
    assert body["refused_at"] == "2026-01-02T03:04:05Z"
    assert "session_path" not in body
    for outside in (str(tmp_path / "elsewhere.ipynb"), str(root), None):
        assert state.refusal_json(refusal(outside), str(root))["path"] is None
    assert state.refusal_json(inside, None)["path"] is None
    got = state.refusal_state("k9", inside, str(root))
    assert list(got) == list(state.KEYS)
    assert (got["confidential"], got["error"], got["refusal"]) == (False, inside.sentence, body)
    kept = [refusal(str(root / "a.ipynb"), "x"), inside, refusal(None, "x")]
    assert [r["path"] for r in state.refusals(kept, root_dir=str(root))] == ["a.ipynb", "sub/n.ipynb", None]
    assert [r["path"] for r in state.refusals(kept, kernel_name="x", root_dir=str(root))] == ["a.ipynb", None]
    assert len(state.refusals(kept, path="/sub/n.ipynb", root_dir=str(root))) == 1
    assert len(state.refusals(kept, limit=1)) == 1


def test_state_refused_or_lost_attestation_has_the_sentence() -> None:
    sentence = "policy 'prod' rejected the sim TEE: allow_simulated: expected a hardware TEE."
    got = state.kernel_state("k4", _km(FakeProvisioner({"confidential": False, "error": sentence})))
    assert got == state.plain_state("k4", sentence)
    assert got["confidential"] is False and got["verdict"] is None


def test_state_fails_closed_without_a_passed_verdict() -> None:
    for verdict in (None, {"passed": False, "policy": "p", "reasons": ["r"]}, "yes"):
        got = state.normalize("k", {**GOOD, "verdict": verdict})
        assert got["confidential"] is False
        assert got["claims"] is None and got["attested_at"] is None
        assert got["error"] and "not trusted" in got["error"]
    assert state.normalize("k", {**GOOD, "confidential": "yes"})["confidential"] is False


def test_state_stopped_confidential_kernel() -> None:
    got = state.kernel_state("k5", _km(None, state.PROVISIONER_NAME))
    assert got["confidential"] is False
    assert got["error"] == "the confidential kernel is not running, so it has no current attestation"
    assert state.spec_is_confidential(_km(None, state.PROVISIONER_NAME))
    assert not state.spec_is_confidential(_km(None, "local-provisioner"))
    assert not state.spec_is_confidential(SimpleNamespace())


@pytest.mark.parametrize(
    ("text", "limit"), [(None, 50), ("", 50), ("0", 0), ("7", 7), (" 12 ", 12), ("1000", 1000)]
)
def test_parse_limit(text: str | None, limit: int) -> None:
    assert state.parse_limit(text) == limit


@pytest.mark.parametrize("text", ["-1", "1001", "abc", "1e3", "0x10", "٣", "9" * 5000, "1.0"])
def test_parse_limit_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="limit must be a whole number from 0 to 1000"):
        state.parse_limit(text)
