"""The registry of evidence kinds (attest/kinds.py) is consistent, and the attest faces read it.

The CLI's ``verify`` subcommands and ``--tee`` choices, the policy format, the guest agent's
collectors and the dispatch of :func:`jupyter_cc.attest.verify` are all generated from
:data:`~jupyter_cc.attest.kinds.KINDS`; these tests fail when one of them drifts from it.
"""

from __future__ import annotations

import importlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_cc.attest import kinds
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import KIND_NAMES, KINDS, SIMULATED_BANNER, TEE_CHOICES
from jupyter_cc.cli import _build_parser, main
from jupyter_cc.errors import EvidenceError, InputError, PolicyError
from jupyter_cc.policy import Policy


def _subparsers(parser: object) -> dict[str, object]:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")  # type: ignore[attr-defined]
    return dict(action.choices)


def _verify_parsers() -> dict[str, object]:
    return _subparsers(_subparsers(_build_parser())["verify"])


def test_names_are_unique_and_every_kind_is_described() -> None:
    assert len(set(KIND_NAMES)) == len(KIND_NAMES) == len(KINDS)
    for entry in KINDS:
        assert entry.summary and entry.operand.isupper()
        assert kinds.kind(entry.name) is entry
        assert len({i.flag for i in entry.inputs}) == len(entry.inputs)
    assert set(kinds.REAL_KINDS) | set(kinds.SIMULATED_KINDS) == set(KIND_NAMES)
    assert set(kinds.AZURE_KINDS) == {k.name for k in KINDS if k.azure_vtpm}


def test_every_kind_has_a_verifier_that_imports() -> None:
    for entry in KINDS:
        module, _, function = entry.verifier.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), entry.name


def test_claims_family_is_the_registry_family() -> None:
    for entry in KINDS:
        claims = Claims(kind=entry.name, simulated=entry.simulated, debug=False, report_data=b"")
        assert claims.family == entry.family
    assert Claims(kind="other", simulated=False, debug=False, report_data=b"").family == "other"


def test_tee_choices_are_auto_then_every_collectable_kind() -> None:
    assert TEE_CHOICES[0] == "auto"
    assert TEE_CHOICES[1:] == tuple(k.tee_choice for k in KINDS if k.tee_choice is not None)
    assert len(set(TEE_CHOICES)) == len(TEE_CHOICES)


@pytest.mark.parametrize("choice", [c for c in TEE_CHOICES if c != "sim"])
def test_the_guest_tries_real_sources_for_every_real_choice(choice: str, tmp_path: Path) -> None:
    from jupyter_cc.guest.collectors import collect_cpu_evidence

    # An empty file system root has no source at all: the refusal names the sources tried.
    with pytest.raises(EvidenceError) as err:
        collect_cpu_evidence(bytes(64), tee=choice, root=tmp_path, tpm_tcti="device:/nonexistent")
    sources = {s for k in KINDS if choice in ("auto", k.tee_choice) for s in k.sources}
    assert sources and all(s in err.value.diagnostics() for s in sources)


def test_the_guest_collects_the_simulated_choice_with_the_banner_as_its_note(tmp_path: Path) -> None:
    from jupyter_cc.guest.collectors import collect_cpu_evidence

    simulated = next(k for k in KINDS if k.simulated)
    collected, unavailable = collect_cpu_evidence(bytes(64), tee=str(simulated.tee_choice), sim_dir=tmp_path)
    assert (collected.kind, unavailable) == (simulated.name, [])
    assert collected.notes == (SIMULATED_BANNER,)
    assert SIMULATED_BANNER.encode() == "SIMULATED \u2014 not a hardware TEE".encode()


def test_the_guest_and_the_cli_offer_the_registry_tee_choices() -> None:
    import jupyter_cc.guest.__main__ as guest_main
    from jupyter_cc.guest import collectors

    assert vars(collectors)["TEE_CHOICES"] is TEE_CHOICES
    # The guest agent imports the registry late (after starting its prepared kernel), and
    # refuses a --tee the registry does not offer, naming the registry's choices.
    done = subprocess.run(
        [sys.executable, "-m", guest_main.__spec__.name, "--tee", "sgx"],
        input=b"", capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"'sgx' is not one of {', '.join(TEE_CHOICES)}" in done.stderr.decode()
    for command in (["attest"], ["kernelspec", "install"]):
        parser: object = _build_parser()
        for word in command:
            parser = _subparsers(parser)[word]
        action = next(a for a in parser._actions if "--tee" in a.option_strings)  # type: ignore[attr-defined]
        assert tuple(action.choices) == TEE_CHOICES


def test_the_guest_refuses_an_unknown_choice_naming_the_registry_ones() -> None:
    from jupyter_cc.guest.collectors import collect_cpu_evidence

    with pytest.raises(InputError) as err:
        collect_cpu_evidence(bytes(64), tee="sgx")
    assert f"use one of {', '.join(TEE_CHOICES)}" in err.value.diagnostics()


def test_policy_knows_exactly_the_registry_kinds_products_and_statuses() -> None:
    for name in KIND_NAMES:
        Policy.from_toml(f'tee = ["{name}"]')
    with pytest.raises(PolicyError) as err:
        Policy.from_toml('tee = ["sgx"]')
    assert f"(known: {', '.join(KIND_NAMES)})" in err.value.diagnostics()
    with pytest.raises(PolicyError) as err:
        Policy.from_toml('[snp]\nproduct = ["Naples"]')
    assert f"(known: {', '.join(kinds.SNP_PRODUCTS)})" in err.value.diagnostics()
    with pytest.raises(PolicyError) as err:
        Policy.from_toml('[tdx]\ntcb_status = ["Fine"]')
    assert f"(known: {', '.join(kinds.TCB_STATUSES)})" in err.value.diagnostics()


def test_policy_sections_narrow_to_the_registry_families() -> None:
    snp = Policy.from_toml("[snp]\nvmpl = 0").accepted_kinds()
    tdx = Policy.from_toml('[tdx]\ntcb_status = ["UpToDate"]').accepted_kinds()
    assert snp == tuple(k.name for k in KINDS if k.family == "snp" and not k.simulated)
    assert tdx == tuple(k.name for k in KINDS if k.family == "tdx" and not k.simulated)
    assert Policy().accepted_kinds() == kinds.REAL_KINDS
    assert Policy(allow_simulated=True).accepted_kinds() == (*kinds.REAL_KINDS, *kinds.SIMULATED_KINDS)


def test_tdx_status_ranking_is_the_registry_order() -> None:
    from jupyter_cc.attest.tdx.tcb import worst_status

    statuses = kinds.TCB_STATUSES
    for better, worse in itertools.pairwise(statuses):
        assert worst_status(better, worse) == worst_status(worse, better) == worse


def test_verify_has_one_subcommand_per_kind_with_its_operand_and_inputs() -> None:
    parsers = _verify_parsers()
    assert set(parsers) == {*KIND_NAMES, "bundle"}
    for entry in KINDS:
        actions = {a.dest: a for a in parsers[entry.name]._actions}  # type: ignore[attr-defined]
        assert actions["file"].metavar == entry.operand
        flags = {o: a for a in actions.values() for o in a.option_strings}
        for item in entry.inputs:
            assert flags[item.flag].required == item.required, (entry.name, item.flag)
            assert flags[item.flag].metavar == item.metavar
        assert {"--at", "--policy", "--report-data", "--json"} <= set(flags)


def test_verify_help_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for entry in KINDS:
        assert entry.name in out and entry.summary in out


def test_an_unknown_kind_is_refused_naming_the_registry() -> None:
    from jupyter_cc.attest.certs import utcnow
    from jupyter_cc.attest.evidence import Evidence, verify

    with pytest.raises(InputError) as err:
        verify(Evidence(kind="sgx", report=b"x"), at=utcnow())
    assert f"use one of {', '.join(KIND_NAMES)}" in err.value.diagnostics()


def test_the_public_api_is_flat() -> None:
    import jupyter_cc.attest as attest
    import jupyter_cc.policy as policy
    from jupyter_cc.attest import (  # noqa: F401
        KINDS,
        Claims,
        Evidence,
        TrustAnchor,
        TrustStore,
        parse_bundle,
        serialize_bundle,
        verify,
        verify_bundle,
    )
    from jupyter_cc.policy import Policy, Verdict, appraise  # noqa: F401

    assert set(attest.__all__) == {
        "parse_bundle",
        "verify_bundle",
        "serialize_bundle",
        "Evidence",
        "verify",
        "Claims",
        "TrustAnchor",
        "TrustStore",
        "KINDS",
    }
    assert KINDS is kinds.KINDS
    assert {"Policy", "appraise", "Verdict"} <= set(policy.__all__)


def test_snp_kinds_take_amd_crls_as_tdx_kinds_take_intel_ones() -> None:
    from jupyter_cc.attest.kinds import kind as registered

    for name in ("snp", "az-snp-vtpm", "tdx", "az-tdx-vtpm"):
        entry = registered(name)
        assert entry is not None
        crl = [i for i in entry.inputs if i.flag == "--crl"]
        assert len(crl) == 1 and crl[0].repeat and not crl[0].required, name
