"""Policy files (design section 5): safe defaults, every failed rule named, typos refused."""

from __future__ import annotations

import pytest

from jupyter_cc.attest.claims import Claims
from jupyter_cc.errors import InputError, PolicyError
from jupyter_cc.policy import Policy, appraise

M1 = "a" * 96
M2 = "b" * 96


def snp_claims(**overrides: object) -> Claims:
    details = {
        "measurement": M1,
        "host_data": "0" * 64,
        "vmpl": 0,
        "product": "Milan",
        "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "revocation": "checked",
    }
    kind = str(overrides.pop("kind", "snp"))
    simulated = bool(overrides.pop("simulated", False))
    debug = bool(overrides.pop("debug", False))
    gpu = overrides.pop("gpu", None)
    gpus = overrides.pop("gpus", ())
    details.update(overrides)
    return Claims(
        kind=kind,
        simulated=simulated,
        debug=debug,
        report_data=bytes(64),
        details=details,
        gpu=gpu,
        gpus=gpus,
    )  # type: ignore[arg-type]


def tdx_claims(**details: object) -> Claims:
    base = {"mrtd": M1, "rtmr": [M1, M1, M2, M2], "revocation": "checked"}
    base.update(details)
    return Claims(kind="tdx", simulated=False, debug=False, report_data=bytes(64), details=base)


def rules(verdict) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.rule for r in verdict.reasons]


def test_the_default_policy_accepts_valid_hardware_evidence_only() -> None:
    assert appraise(snp_claims()).passed
    assert rules(appraise(snp_claims(debug=True))) == ["allow_debug"]
    assert "allow_simulated" in rules(appraise(snp_claims(kind="sim-snp", simulated=True)))


def test_an_empty_policy_file_is_the_safe_default() -> None:
    policy = Policy.from_toml("")
    assert not policy.allow_debug
    assert not policy.allow_simulated
    assert not appraise(snp_claims(kind="sim-snp", simulated=True), policy).passed


def test_simulated_evidence_passes_only_when_the_policy_asks_for_it() -> None:
    sim = snp_claims(kind="sim-snp", simulated=True)
    assert appraise(sim, Policy.from_toml("allow_simulated = true")).passed
    # Even a policy listing sim-snp as a kind does not accept it without allow_simulated.
    verdict = appraise(sim, Policy.from_toml('tee = ["sim-snp"]'))
    assert rules(verdict) == ["allow_simulated"]
    # A simulated flag on any kind is refused by default, whatever the kind says.
    assert rules(appraise(snp_claims(simulated=True))) == ["allow_simulated"]


def test_every_failed_rule_is_reported_with_expected_and_observed() -> None:
    policy = Policy.from_toml(
        f"""
name = "prod-snp"
[snp]
measurement = ["{M2}"]
host_data = "{"1" * 64}"
vmpl = 1
min_tcb = {{ bootloader = 4, snp = 8, microcode = 200 }}
product = ["Genoa"]
"""
    )
    verdict = appraise(snp_claims(debug=True), policy)
    assert not verdict.passed
    assert verdict.policy == "prod-snp"
    assert rules(verdict) == [
        "allow_debug",
        "snp.measurement",
        "snp.host_data",
        "snp.vmpl",
        "snp.product",
        "snp.min_tcb.bootloader",
        "snp.min_tcb.microcode",
    ]
    text = [str(r) for r in verdict.reasons]
    assert f"snp.measurement: expected one of ['{M2}'], observed {M1}" in text
    assert "snp.min_tcb.microcode: expected >= 200, observed 115" in text
    assert verdict.to_json()["passed"] is False


def test_matching_rules_pass_and_hex_is_case_insensitive() -> None:
    policy = Policy.from_toml(f'[snp]\nmeasurement = "{M1.upper()}"\nvmpl = 0\nmin_tcb = {{ snp = 8 }}')
    assert appraise(snp_claims(), policy).passed


def test_hardware_sections_narrow_the_accepted_kinds() -> None:
    pin_snp = Policy.from_toml(f'[snp]\nmeasurement = "{M1}"')
    assert rules(appraise(tdx_claims(), pin_snp)) == ["tee"]
    pin_tdx = Policy.from_toml(f'[tdx]\nmrtd = ["{M1}"]')
    assert rules(appraise(snp_claims(), pin_tdx)) == ["tee"]
    assert appraise(tdx_claims(), pin_tdx).passed
    explicit = Policy.from_toml('tee = ["tdx"]')
    assert rules(appraise(snp_claims(), explicit)) == ["tee"]


def test_tdx_rules() -> None:
    policy = Policy.from_toml(
        f'[tdx]\nmrtd = ["{M1}"]\nrtmr = [["{M1}", "{M1}", "{M2}", "{M2}"]]\ntcb_status = ["UpToDate"]'
    )
    verdict = appraise(tdx_claims(), policy)
    assert rules(verdict) == ["tdx.tcb_status"]
    assert "not evaluated" in str(verdict.reasons[0])
    assert appraise(tdx_claims(tcb_status="UpToDate"), policy).passed
    assert rules(appraise(tdx_claims(tcb_status="OutOfDate", rtmr=[M2] * 4), policy)) == [
        "tdx.rtmr",
        "tdx.tcb_status",
    ]


def test_azure_rules_fail_closed_when_the_claim_is_absent() -> None:
    policy = Policy.from_toml('[azure]\ncompliance_status = "azure-compliant-cvm"\nsecure_boot = true')
    # Without tee, only the kind that carries both claims is accepted (MAA tokens).
    assert policy.accepted_kinds() == ("maa",)
    assert rules(appraise(snp_claims(), policy)) == ["tee", "azure.compliance_status", "azure.secure_boot"]
    assert rules(appraise(snp_claims(kind="maa"), policy)) == ["azure.compliance_status", "azure.secure_boot"]
    good = snp_claims(kind="maa", compliance_status="azure-compliant-cvm", secure_boot=True)
    assert appraise(good, policy).passed


def test_gpu_required() -> None:
    policy = Policy.from_toml("[gpu]\nrequired = true")
    assert rules(appraise(snp_claims(), policy)) == ["gpu.required"]
    verified = {"measurements": 64, "cc_mode": "on", "rim": "verified", "revocation": "checked"}
    gpu = Claims(kind="nvidia", simulated=False, debug=False, report_data=b"", details=verified)
    assert appraise(snp_claims(gpu=gpu, gpus=(gpu,)), policy).passed
    off = Claims(
        kind="nvidia", simulated=False, debug=False, report_data=b"", details=verified | {"cc_mode": "off"}
    )
    verdict = appraise(snp_claims(gpu=off, gpus=(off,)), policy)
    assert rules(verdict) == ["gpu[0].cc_mode"]
    assert "observed off" in str(verdict.reasons[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_debugg = true", "unknown top-level key 'allow_debugg'"),
        ("[snp]\nmeasurment = 'aa'", "unknown key 'measurment' in [snp]"),
        ("[snp]\nmeasurement = 'abc'", "must be 96 hex digits"),
        ("allow_debug = 'no'", "allow_debug must be true or false"),
        ("tee = ['sgx']", "unknown value 'sgx'"),
        ("[snp]\nvmpl = -1", "non-negative integer"),
        ("[snp]\nmin_tcb = { ucode = 3 }", "unknown field 'ucode'"),
        ("[tdx]\nrtmr = [['aa']]", "lists of four"),
        ("[tdx]\ntcb_status = ['Fine']", "unknown value 'Fine'"),
        ("name = ", "not valid TOML"),
        ("snp = 3", "[snp] must be a table"),
    ],
)
def test_malformed_policies_are_refused_with_the_key_named(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(text)
    assert message in info.value.diagnostics()
    assert info.value.exit_status == 2


def test_policy_errors_name_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.toml"
    path.write_text("allow_simulated = 1\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert info.value.diagnostics().startswith(f"{path}: allow_simulated must be true or false")
    with pytest.raises(InputError, match="cannot read policy file"):
        Policy.load(tmp_path / "missing.toml")


# --- every stated rule is judged for every accepted kind ----------------------------------------


def maa_claims(**details: object) -> Claims:
    base: dict[str, object] = {
        "attestation_type": "sevsnpvm",
        "measurement": M1,
        "host_data": "0" * 64,
        "vmpl": 0,
        "reported_tcb": {"bootloader": 4, "tee": 0, "snp": 21, "microcode": 211},
        "compliance_status": "azure-compliant-cvm",
        "secure_boot": True,
    }
    base.update(details)
    return Claims(kind="maa", simulated=False, debug=False, report_data=bytes(64), details=base)


def test_snp_and_tdx_rules_are_judged_against_maa_tokens() -> None:
    policy = Policy.from_toml(f'tee = ["maa"]\n[snp]\nmeasurement = ["{M2}"]\nmin_tcb = {{ snp = 250 }}')
    assert rules(appraise(maa_claims(), policy)) == ["snp.measurement", "snp.min_tcb.snp"]
    assert appraise(maa_claims(), Policy.from_toml(f'tee = ["maa"]\n[snp]\nmeasurement = ["{M1}"]')).passed
    # A TDX-backed token under a policy with only [snp] rules fails those rules, it is not waved through.
    tdx_token = maa_claims(attestation_type="tdxvm", measurement=None, mrtd=M1, rtmr=[M1] * 4)
    assert rules(appraise(tdx_token, Policy.from_toml(f'tee = ["maa"]\n[snp]\nmeasurement = ["{M1}"]'))) == [
        "snp.measurement"
    ]
    both = Policy.from_toml(f'tee = ["maa"]\n[snp]\nmeasurement = ["{M1}"]\n[tdx]\nmrtd = ["{M1}"]')
    assert appraise(tdx_token, both).passed and appraise(maa_claims(), both).passed
    assert rules(appraise(maa_claims(attestation_type="azurevm", measurement=None), both)) == [
        "snp.measurement",
        "tdx.mrtd",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('tee = ["maa"]\n[snp]\nproduct = ["Milan"]', "[snp] product cannot be judged for evidence kind maa"),
        (
            'tee = ["maa"]\n[snp]\nmin_tcb = { fmc = 1 }',
            "[snp] min_tcb.fmc cannot be judged for evidence kind maa",
        ),
        (
            'tee = ["maa"]\n[tdx]\ntcb_status = ["UpToDate"]',
            "[tdx] tcb_status cannot be judged for evidence kind maa",
        ),
        (f'tee = ["snp"]\n[tdx]\nmrtd = ["{M1}"]', "[tdx] mrtd is not judged for evidence kind snp"),
        (
            f'tee = ["snp", "tdx"]\n[snp]\nmeasurement = ["{M1}"]',
            "[snp] measurement is not judged for evidence kind tdx",
        ),
        ('tee = ["nvidia"]\n[snp]\nvmpl = 0', "[snp] vmpl is not judged for evidence kind nvidia"),
        (
            f'tee = ["snp", "maa"]\n[snp]\nvmpl = 0\n[tdx]\nmrtd = ["{M1}"]\n[azure]\nsecure_boot = true',
            "[azure] secure_boot cannot be judged for evidence kind snp",
        ),
        (
            'tee = ["az-snp-vtpm"]\n[azure]\ncompliance_status = "x"',
            "compliance_status cannot be judged for evidence kind az-snp-vtpm",
        ),
        (
            'tee = ["maa"]\n[collateral]\nmax_stale_days = 1',
            "[collateral] max_stale_days cannot be judged for evidence kind maa",
        ),
        (
            f'[snp]\nmeasurement = ["{M1}"]\n[azure]\ncompliance_status = "x"',
            "no evidence kind can be judged by every rule",
        ),
        (
            f'tee = ["snp", "sim-snp"]\n[tdx]\nmrtd = ["{M1}"]\n[snp]\nvmpl = 0',
            "[tdx] mrtd is not judged for any kind",
        ),
        ("[tdx]\ndeny_advisories = []", "deny_advisories must be a non-empty list"),
        ("[collateral]\nmax_stale_days = -1", "non-negative integer"),
        ("[collateral]\nmax_days = 1", "unknown key 'max_days' in [collateral]"),
    ],
)
def test_a_rule_that_cannot_be_judged_for_an_accepted_kind_fails_loading(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(text)
    assert message in info.value.diagnostics()
    assert info.value.exit_status == 2


def test_policies_stating_both_families_judge_each_kind_by_its_own_section() -> None:
    policy = Policy.from_toml(f'tee = ["snp", "tdx"]\n[snp]\nmeasurement = ["{M1}"]\n[tdx]\nmrtd = ["{M2}"]')
    assert appraise(snp_claims(), policy).passed
    assert rules(appraise(tdx_claims(), policy)) == ["tdx.mrtd"]
    # Implicit kinds are narrowed rather than refused: simulated kinds that cannot be judged drop out.
    tdx_only = Policy.from_toml(f'allow_simulated = true\n[tdx]\nmrtd = ["{M1}"]')
    assert "sim-snp" not in tdx_only.accepted_kinds()
    assert "sim-snp" in Policy.from_toml("allow_simulated = true\n[snp]\nvmpl = 0").accepted_kinds()
    assert Policy.from_toml("[azure]\nsecure_boot = true").accepted_kinds() == (
        "az-snp-vtpm",
        "az-tdx-vtpm",
        "maa",
    )


def test_collateral_rules_fail_closed_when_the_collateral_was_not_available() -> None:
    policy = Policy.from_toml(
        'tee = ["tdx"]\n[tdx]\ntcb_status = ["UpToDate"]\ndeny_advisories = ["intel-sa-00837"]\n'
        "[collateral]\nmax_stale_days = 3"
    )
    verdict = appraise(tdx_claims(), policy)
    assert rules(verdict) == ["tdx.tcb_status", "tdx.deny_advisories", "collateral.max_stale_days"]
    assert all("collateral" in r.observed and "not available" in r.observed for r in verdict.reasons)
    fresh = tdx_claims(tcb_status="UpToDate", advisory_ids=["INTEL-SA-00615"], collateral_stale_days=0)
    assert appraise(fresh, policy).passed
    assert appraise(
        tdx_claims(tcb_status="UpToDate", advisory_ids=[], collateral_stale_days=3), policy
    ).passed
    bad = tdx_claims(tcb_status="Revoked", advisory_ids=["INTEL-SA-00837"], collateral_stale_days=4)
    text = [str(r) for r in appraise(bad, policy).reasons]
    assert "tdx.deny_advisories: expected none of ['INTEL-SA-00837'], observed ['INTEL-SA-00837']" in text
    assert (
        "collateral.max_stale_days: expected collateral at most 3 days past its nextUpdate, "
        "observed 4 days past" in text
    )
    assert rules(
        appraise(tdx_claims(tcb_status="UpToDate", advisory_ids="x", collateral_stale_days="1"), policy)
    ) == [
        "tdx.deny_advisories",
        "collateral.max_stale_days",
    ]
    # The default policy asks only what every policy asks: revocation checked, nothing stale.
    assert appraise(tdx_claims()).passed


def test_every_policy_refuses_revoked_unchecked_and_stale() -> None:
    strict = Policy.from_toml(f'name = "pinned"\n[tdx]\nmrtd = ["{M1}"]')
    for policy in (Policy(), strict):
        revoked = appraise(tdx_claims(tcb_status="Revoked"), policy)
        assert "tdx.tcb_status" in rules(revoked)
        assert "observed Revoked" in str(revoked.reasons[0])
        for claims in (tdx_claims(revocation="unchecked"), tdx_claims(revocation=None)):
            assert rules(appraise(claims, policy)) == ["collateral.revocation"]
        assert rules(appraise(tdx_claims(collateral_stale_days=1), policy)) == ["collateral.max_stale_days"]
        assert appraise(tdx_claims(collateral_stale_days=0), policy).passed
    # Every kind that could be checked is judged; an absent claim fails.
    for kind in ("snp", "az-snp-vtpm"):
        assert rules(appraise(snp_claims(kind=kind, revocation=None))) == ["collateral.revocation"]
    # Simulated evidence is judged by allow_simulated (an old simulator has no CRL to check).
    sim = snp_claims(kind="sim-snp", simulated=True, revocation="unchecked")
    assert appraise(sim, Policy.from_toml("allow_simulated = true")).passed
    # A GPU's revocation is NVIDIA's OCSP, judged as gpu[i].revocation, not as a CRL rule.
    assert "gpu[0].revocation" in rules(appraise(snp_claims(kind="nvidia", revocation="unchecked")))
    # MAA tokens carry no revocation claim: not judged by it.
    assert appraise(maa_claims()).passed
    gpu = Claims(kind="nvidia", simulated=False, debug=False, report_data=b"", details={"cc_mode": True})
    assert "collateral.revocation" not in rules(appraise(gpu))
    # The loud opt-out lets unchecked revocation through, and nothing else.
    lax = Policy.from_toml("[collateral]\nallow_unchecked_revocation = true")
    assert appraise(tdx_claims(revocation="unchecked"), lax).passed
    assert rules(appraise(tdx_claims(revocation="unchecked", tcb_status="Revoked"), lax)) == [
        "tdx.tcb_status"
    ]
    with pytest.raises(PolicyError, match="allow_unchecked_revocation must be true or false"):
        Policy.from_toml('[collateral]\nallow_unchecked_revocation = "yes"')
    with pytest.raises(PolicyError, match="cannot accept Revoked"):
        Policy.from_toml('tee = ["tdx"]\n[tdx]\ntcb_status = ["UpToDate", "Revoked"]')


def test_the_repository_policies_still_load() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in (root / "jupyter_cc" / "policies").glob("*.toml"):
        Policy.load(path)
    from jupyter_cc.hub.kubernetes import aci_policy_toml

    Policy.from_toml(aci_policy_toml("aci", "e30="))
    demo = (root / "examples" / "verify-demo.sh").read_text().split("<<'TOML'\n")[1].split("TOML")[0]
    assert "sim-snp" in Policy.from_toml(demo).accepted_kinds()
    readme = (root / "README.md").read_text().split("```toml\n")[1].split("```")[0]
    Policy.from_toml(readme.replace("<96 hex>", M1))
