"""What JupyterLab's kernel error dialog shows when a confidential kernel is refused.

A real Jupyter server (with the ``jupyter_cc`` server extension) starts kernelspecs whose
evidence fails the policy, or whose policy file is broken. The REST answer that JupyterLab turns
into its "Error Starting Kernel" dialog must carry a short first sentence and then each failed
rule on its own line (name, expected, observed), on both paths JupyterLab uses: a new session
(``POST /api/sessions``, ``POST /api/kernels``) and a kernel change (``PATCH /api/sessions/<id>``,
which jupyter_server quotes with ``repr``). The server extension keeps the refusal although no
kernel exists and serves it under ``/jupyter-cc/api/``. No secret ever appears in either.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.attest.claims import Claims
from jupyter_cc.errors import CCError, PolicyError
from jupyter_cc.kernelspec import kernelspec, simulated_policy_path
from jupyter_cc.paths import data_dir
from jupyter_cc.policy import Policy, appraise
from jupyter_cc.provisioner import KernelRefusedError, refusal_message
from jupyter_cc.remote.attestation import PolicyRejectedError
from tests.support.jupyter_server import jupyter_server

pytestmark = pytest.mark.timeout(180)

FIRST = "Confidential kernel not started: policy 'default' refused the sim-snp TEE."
RULE = "- allow_simulated: expected a hardware TEE"
SECRET = "s3cret-value-never-shown-0123456789"


@dataclass
class Server:
    url: str
    token: str
    root: Path

    def call(self, method: str, path: str, *, body: Any = None, token: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"token {self.token}"
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=90) as answer:
                raw, status = answer.read(), answer.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
            error.close()
        return status, json.loads(raw) if raw else None


def _spec(root: Path, name: str, display: str, config: dict[str, Any]) -> None:
    folder = root / "jupyter" / "kernels" / name
    folder.mkdir(parents=True)
    spec = kernelspec(display, config)
    # A kernelspec variable that looks like a secret: it must never reach a message or the API.
    spec["env"] = {"CC_TEST_API_TOKEN": SECRET}
    (folder / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server-dialog")
    sim = {"transport": "local", "tee": "sim", "sim_dir": str(data_dir() / "sim")}
    # The local simulated TEE under the default policy: genuine evidence, refused by policy.
    _spec(root, "cc-refused", "Refused", sim)
    # A policy file broken after install: a failed check that is not a policy verdict.
    broken = root / "broken.toml"
    broken.write_text("allow_simulated = true\n")
    _spec(root, "cc-broken", "Broken policy", {**sim, "policy": str(broken)})
    broken.write_text('allow_simulated = "yes"\n')
    _spec(root, "cc-sim", "Simulated", {**sim, "policy": str(simulated_policy_path())})
    (root / "sub").mkdir()
    args = [
        "--ServerApp.jpserver_extensions={'jupyter_cc': True}",
        "--ServerApp.allow_unauthenticated_access=False",
    ]
    with jupyter_server(root, args=args) as running:
        yield Server(running.url, running.token, root)


def _lines(message: str) -> list[str]:
    return message.split("\n")


def _assert_no_secret(server: Server, *bodies: Any) -> None:
    for body in bodies:
        text = json.dumps(body)
        assert SECRET not in text
        assert server.token not in text


# --- the message, in process ------------------------------------------------------------------


def test_policy_refusal_is_a_sentence_then_one_rule_a_line() -> None:
    claims = Claims(kind="sim-snp", simulated=True, debug=True, report_data=bytes(64))
    policy = Policy(name="prod")
    verdict = appraise(claims, policy)
    assert not verdict.passed
    message, rules = refusal_message(PolicyRejectedError(verdict, claims))
    lines = _lines(message)
    assert lines[0] == "Confidential kernel not started: policy 'prod' refused the sim-snp TEE."
    assert lines[1:] == [f"- {r.rule}: expected {r.expected}, observed {r.observed}" for r in rules]
    assert rules == verdict.reasons and [r.rule for r in rules] == ["allow_simulated", "tee", "allow_debug"]
    error = KernelRefusedError(message, rules)
    assert str(error) == message and error.log_message == message
    # jupyter_server's kernel-change path quotes the error with repr(): the lines must survive.
    assert repr(str(error)) == f'"{message}"'


def test_other_refusals_keep_their_one_sentence() -> None:
    exc = PolicyError("broken.toml: allow_simulated must be true or false, found 'yes'")
    message, rules = refusal_message(exc)
    assert message == f"Confidential kernel not started: {exc.sentence()}"
    assert "\n" not in message and rules == ()
    message, _ = refusal_message(CCError("the guest agent returned no shell_port"))
    assert (
        message
        == "Confidential kernel not started: jupyter-cc check failed: the guest agent returned no shell_port."
    )


# --- the dialog's text on a real server -------------------------------------------------------


def test_refused_kernel_error_names_the_failed_rule_on_its_own_line(server: Server) -> None:
    status, body = server.call("POST", "/api/kernels", body={"name": "cc-refused"})
    assert status == 500, body
    lines = _lines(body["message"])
    assert lines[0] == FIRST
    assert lines[1].startswith(RULE)
    assert len(lines) >= 2 and all(line.startswith("- ") and ": expected " in line for line in lines[1:]), (
        lines
    )
    assert "observed SIMULATED evidence" in lines[1]
    assert body["reason"] == "Confidential kernel not started"
    _assert_no_secret(server, body)
    status, running = server.call("GET", "/api/kernels")
    assert (status, running) == (200, [])


def test_new_session_and_kernel_change_both_keep_the_lines(server: Server) -> None:
    # A new notebook with the refused kernel (what JupyterLab's "New notebook" does).
    status, body = server.call(
        "POST",
        "/api/sessions",
        body={
            "path": "sub/new.ipynb",
            "name": "new.ipynb",
            "type": "notebook",
            "kernel": {"name": "cc-refused"},
        },
    )
    assert status == 500, body
    assert _lines(body["message"])[0] == FIRST
    assert _lines(body["message"])[1].startswith(RULE)
    # Kernel > Change Kernel… on a running notebook: jupyter_server wraps and repr()s the error.
    status, session = server.call(
        "POST",
        "/api/sessions",
        body={
            "path": "sub/change.ipynb",
            "name": "change.ipynb",
            "type": "notebook",
            "kernel": {"name": "cc-sim"},
        },
    )
    assert status == 201, session
    try:
        status, body = server.call(
            "PATCH", f"/api/sessions/{session['id']}", body={"kernel": {"name": "cc-refused"}}
        )
        assert status == 501, body
        lines = _lines(body["message"])
        assert lines[0] == f"The 'cc-refused' kernel could not be started: \"{FIRST}"
        assert lines[1].startswith(RULE) and lines[-1].endswith('"')
        assert "\\n" not in body["message"]
        _assert_no_secret(server, body)
        # The refusal the panel reads names that notebook.
        status, found = server.call(
            "GET", "/jupyter-cc/api/refusals?kernel_name=cc-refused&path=sub/change.ipynb"
        )
        assert status == 200 and found["refusals"], found
        assert found["refusals"][0]["path"] == "sub/change.ipynb"
    finally:
        server.call("DELETE", f"/api/sessions/{session['id']}")


def test_other_refusals_keep_one_sentence_on_a_real_server(server: Server) -> None:
    status, body = server.call("POST", "/api/kernels", body={"name": "cc-broken"})
    assert status == 500, body
    message = body["message"]
    assert message.startswith("Confidential kernel not started: policy check failed:")
    assert "allow_simulated must be true or false" in message
    assert "\n" not in message


# --- the kept refusal over REST ---------------------------------------------------------------


def test_refusal_is_kept_and_served(server: Server) -> None:
    status, body = server.call("POST", "/api/kernels", body={"name": "cc-refused"})
    assert status == 500
    status, listing = server.call("GET", "/jupyter-cc/api/refusals?kernel_name=cc-refused")
    assert status == 200, listing
    assert listing["limit"] == 50
    refusal = listing["refusals"][0]
    assert set(refusal) == {
        "kernel_id",
        "kernel_name",
        "display_name",
        "path",
        "refused_at",
        "check",
        "sentence",
        "message",
        "rules",
        "policy",
        "evidence_kind",
        "simulated",
        "claims",
    }
    assert refusal["kernel_name"] == "cc-refused" and refusal["display_name"] == "Refused"
    assert refusal["message"] == body["message"]
    assert refusal["sentence"] == FIRST
    assert refusal["check"] == "policy" and refusal["policy"] == "default"
    assert refusal["evidence_kind"] == "sim-snp" and refusal["simulated"] is True
    assert refusal["path"] is None  # started through /api/kernels: no notebook
    assert refusal["refused_at"].endswith("Z")
    rule = refusal["rules"][0]
    assert set(rule) == {"rule", "expected", "observed"}
    assert rule["rule"] == "allow_simulated"
    assert rule["expected"].startswith("a hardware TEE")
    assert rule["observed"].startswith("SIMULATED evidence")
    assert refusal["claims"]["tee"] == "sim-snp"
    _assert_no_secret(server, listing)

    # The refused kernel's id answers a state with the refusal (no kernel exists).
    kernel_id = refusal["kernel_id"]
    status, kernel = server.call("GET", f"/jupyter-cc/api/kernels/{kernel_id}")
    assert status == 200, kernel
    assert kernel["confidential"] is False and kernel["error"] == FIRST
    assert kernel["refusal"] == refusal
    assert kernel["verdict"] is None and kernel["claims"] is None
    status, answer = server.call("POST", f"/jupyter-cc/api/kernels/{kernel_id}/attest")
    assert status == 409 and answer["message"] == f"Kernel {kernel_id} was refused at start: {FIRST}"

    # Filters and limit; another kernelspec's refusals are not listed under this one.
    server.call("POST", "/api/kernels", body={"name": "cc-broken"})
    status, only = server.call("GET", "/jupyter-cc/api/refusals?kernel_name=cc-broken&limit=1")
    assert status == 200 and len(only["refusals"]) == 1 and only["limit"] == 1
    broken = only["refusals"][0]
    assert broken["check"] == "policy" and broken["rules"] == [] and broken["claims"] is None
    assert "\n" not in broken["message"]
    status, everything = server.call("GET", "/jupyter-cc/api/refusals")
    names = [r["kernel_name"] for r in everything["refusals"]]
    assert names[0] == "cc-broken" and "cc-refused" in names  # newest first
    status, none = server.call("GET", "/jupyter-cc/api/refusals?path=nowhere.ipynb")
    assert (status, none["refusals"]) == (200, [])
    status, bad = server.call("GET", "/jupyter-cc/api/refusals?limit=abc")
    assert status == 400 and bad["message"].startswith("Limit must be a whole number")

    # Authenticated like every route of the API.
    for path in ("/jupyter-cc/api/refusals", f"/jupyter-cc/api/kernels/{kernel_id}"):
        status, denied = server.call("GET", path, token=False)
        assert status in (401, 403), (path, status)
        assert "refusals" not in (denied or {}) and "refusal" not in (denied or {})
