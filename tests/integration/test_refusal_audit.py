"""A confidential kernel refused at start is recorded in the audit log with its failed rules,
which the attestation panel shows under "Recent audit entries" (real Jupyter server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_cc import audit
from jupyter_cc.kernelspec import kernelspec
from tests.integration.test_server_ext import Server
from tests.support.jupyter_server import jupyter_server

pytestmark = pytest.mark.timeout(120)


def test_a_refused_start_writes_an_audit_entry_with_the_failed_rules(tmp_path: Path) -> None:
    spec_dir = tmp_path / "jupyter" / "kernels" / "cc-default"
    spec_dir.mkdir(parents=True)
    # The default policy refuses the simulated TEE: the start is refused after verification.
    spec = kernelspec("Confidential (default policy)", {"transport": "local", "tee": "sim"})
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    audit_log = tmp_path / "audit.jsonl"
    args = ["--ServerApp.jpserver_extensions={'jupyter_cc': True}"]
    with jupyter_server(tmp_path, env={"JUPYTER_CC_AUDIT_LOG": str(audit_log)}, args=args) as running:
        server = Server(running.url, running.token, running.log, audit_log, tmp_path / "unused")
        status, body = server.call("POST", "/api/kernels", body={"name": "cc-default"})
        assert status == 500 and "refused the sim-snp TEE" in json.dumps(body)
        status, body = server.call("GET", "/jupyter-cc/api/audit?limit=5")
        assert status == 200
        entry = body["entries"][-1]
        assert entry["event"] == "kernel-refused"
        assert entry["passed"] is False and entry["check"] == "policy" and entry["policy"] == "default"
        assert entry["kernel_name"] == "cc-default" and entry["evidence_kind"] == "sim-snp"
        assert entry["error"] == "Confidential kernel not started: policy 'default' refused the sim-snp TEE."
        rules = {rule["rule"]: rule for rule in entry["rules"]}
        assert rules["allow_simulated"]["expected"].startswith("a hardware TEE")
        status, refusals = server.call("GET", "/jupyter-cc/api/refusals")
        assert entry["target"] == f"kernel {refusals['refusals'][0]['kernel_id']}"
    assert audit.verify(audit_log).ok
