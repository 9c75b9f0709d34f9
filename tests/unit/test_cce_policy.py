"""What a confidential pod's evidence binds of its deployment: the CCE policy (Confidential ACI)
and the init-data (CoCo), checked on real SNP evidence where ../shared/vectors has it and on the
simulated TEE (HOST_DATA minted as the launcher would set it) everywhere else."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_cc.attest.certs import utcnow
from jupyter_cc.attest.pod import (
    cce_host_data,
    cce_policy_rego,
    check_cce_policy,
    check_pod_init_data,
    init_data_annotation_body,
)
from jupyter_cc.cli import main
from jupyter_cc.errors import BindingError, FormatError
from jupyter_cc.hub.kubernetes import aci_host_data, coco_initdata

REGO = b'package policy\n\napi_version := "0.10.0"\nframework_version := "0.2.3"\n'
OTHER = b'package policy\n\napi_version := "0.10.0"\nallow_exec_in_container := true\n'
AT = "2024-06-01T00:00:00Z"


def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "rego": tmp_path / "policy.rego",
        "b64": tmp_path / "policy.b64",
        "other": tmp_path / "other.rego",
        "sim-ok": tmp_path / "sim.toml",
    }
    out["rego"].write_bytes(REGO)
    out["b64"].write_text(base64.b64encode(REGO).decode() + "\n")
    out["other"].write_bytes(OTHER)
    out["sim-ok"].write_text('name = "sim"\nallow_simulated = true\n')
    return out


def sim_report(sim_tee: Any, tmp_path: Path, host_data: bytes) -> Path:
    path = tmp_path / "report.bin"
    path.write_bytes(sim_tee.mint(bytes(64), host_data=host_data))
    return path


def test_a_wrong_cce_policy_is_refused_naming_both_digests(sim_tee, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = files(tmp_path)
    report = sim_report(sim_tee, tmp_path, hashlib.sha256(REGO).digest())
    status = main(
        ["verify", "sim-snp", str(report), "--policy", str(f["sim-ok"]), "--cce-policy", str(f["other"])]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert hashlib.sha256(REGO).hexdigest() in err and hashlib.sha256(OTHER).hexdigest() in err


@pytest.mark.parametrize("form", ["rego", "b64"])
def test_the_deployed_cce_policy_is_accepted_as_rego_or_base64(sim_tee, tmp_path, capsys, form) -> None:  # type: ignore[no-untyped-def]
    f = files(tmp_path)
    report = sim_report(sim_tee, tmp_path, hashlib.sha256(REGO).digest())
    argv = [
        "verify",
        "sim-snp",
        str(report),
        "--policy",
        str(f["sim-ok"]),
        "--cce-policy",
        str(f[form]),
        "--json",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["claims"]["host_data"] == hashlib.sha256(REGO).hexdigest()


def test_real_snp_evidence_under_another_policy_is_refused(vectors, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = files(tmp_path)
    argv = [
        "verify",
        "snp",
        str(vectors / "snp/milan-v2.report.hex"),
        "--vcek",
        str(vectors / "snp/milan-v2.vcek.der"),
        "--chain",
        str(vectors / "amd/ask_ark_milan.pem"),
        "--at",
        AT,
        "--cce-policy",
        str(f["rego"]),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "HOST_DATA is" in err and hashlib.sha256(REGO).hexdigest() in err


def test_the_spawners_digest_is_the_verifiers() -> None:
    encoded = base64.b64encode(REGO).decode()
    assert aci_host_data(encoded) == cce_host_data(encoded.encode()).hex() == hashlib.sha256(REGO).hexdigest()
    assert cce_policy_rego(b"  " + encoded.encode() + b"\n") == REGO


def test_hostile_policies_are_format_errors() -> None:
    with pytest.raises(FormatError, match="neither base64"):
        cce_policy_rego(b"\xff\xfe not text")
    with pytest.raises(FormatError, match="more than"):
        cce_policy_rego(b"x" * (4 * 1024 * 1024 + 1))


def test_init_data_digest_must_be_host_data(sim_tee, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.kbs.tls import ensure_identity

    pem = ensure_identity(tmp_path).cert_path.read_text()
    annotation = coco_initdata("kbs://kbs.example:8085", kbs_cert=pem)
    body = init_data_annotation_body(annotation)
    digest = hashlib.sha256(body.encode()).digest()  # coco_initdata says algorithm = "sha256"
    good = sim_tee.verify(sim_tee.mint(bytes(64), host_data=digest), at=utcnow())
    assert "aa.toml" in check_pod_init_data(good, annotation)["data"]
    bad = sim_tee.verify(sim_tee.mint(bytes(64), host_data=hashlib.sha256(b"other").digest()), at=utcnow())
    with pytest.raises(BindingError, match="HOST_DATA is not the sha256 digest of the init-data"):
        check_pod_init_data(bad, annotation)
    with pytest.raises(BindingError, match="CCE policy"):
        check_cce_policy(bad, REGO)


def test_hostile_init_data_annotations_are_format_errors() -> None:
    import gzip

    with pytest.raises(FormatError, match="not base64"):
        init_data_annotation_body("%%%")
    bomb = base64.b64encode(gzip.compress(b"a" * (1 << 20))).decode()
    with pytest.raises(FormatError, match="larger than"):
        init_data_annotation_body(bomb)


def test_the_pod_reaches_the_broker_over_https_with_its_certificate_pinned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from jupyter_cc.errors import InputError
    from jupyter_cc.hub.kubernetes import coco_profile
    from jupyter_cc.kbs.tls import ensure_identity

    identity = ensure_identity(tmp_path)
    pem = identity.cert_path.read_text()
    body = init_data_annotation_body(coco_initdata("kbs://kbs.example:8085", kbs_cert=pem))
    assert 'url = "https://kbs.example:8085"' in body and "http://" not in body
    env = coco_profile("x", kbs="kbs://kbs.example:8085", kbs_cert=pem)["kubespawner_override"]["environment"]
    assert env["JUPYTER_CC_KBS_CERT_SHA256"] == identity.fingerprint
    for bad in ("http://kbs.example:8080", "kbs+http://kbs.example:8080"):
        with pytest.raises(InputError, match="plain HTTP"):
            coco_initdata(bad)
    with pytest.raises(InputError, match="no certificate to pin"):
        coco_initdata("kbs://kbs.example:8085")
    with pytest.raises(InputError, match="PEM certificate"):
        coco_initdata("kbs://kbs.example:8085", kbs_cert='-----BEGIN CERTIFICATE-----"""')
