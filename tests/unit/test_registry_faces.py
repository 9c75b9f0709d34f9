"""Every face takes its evidence kinds, TEE choices and SIMULATED banner from attest/kinds.py.

Adding a TEE must mean one entry in the registry, not edits in eleven files: these tests fail
when a module types out a list of kinds again or a face offers other TEE choices.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jupyter_cc.attest import kinds
from jupyter_cc.attest.kinds import KIND_NAMES, SIMULATED_BANNER, TEE_CHOICES
from tests.support.env import ROOT

PACKAGE = ROOT / "jupyter_cc"
REGISTRY = PACKAGE / "attest" / "kinds.py"
NAMES = set(KIND_NAMES) | set(TEE_CHOICES) - {"auto"}
# "snp" and "tdx" alone are also the hardware families in other vocabularies (policy sections,
# HCL report types, configfs-tsm providers); a literal naming only those is not a kind list.
FAMILIES = {"snp", "tdx"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != REGISTRY)


def _literal_strings(node: ast.AST) -> list[str]:
    """The string constants directly inside a tuple, list, set or dict literal."""
    if isinstance(node, ast.Dict):
        elements = [*node.keys, *node.values]
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        elements = list(node.elts)
    else:
        return []
    return [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def test_no_module_types_out_a_list_of_kinds_again() -> None:
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            named = [s for s in _literal_strings(node) if s in NAMES]
            if len(set(named)) >= 2 and not set(named) <= FAMILIES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(set(named))}")
    assert found == [], "kinds listed outside attest/kinds.py:\n" + "\n".join(found)


def test_the_banner_is_written_once_in_python_and_once_in_typescript() -> None:
    python = [p.relative_to(ROOT) for p in PACKAGE.rglob("*.py") if SIMULATED_BANNER in p.read_text()]
    assert python == [REGISTRY.relative_to(ROOT)]
    ts = {p.name: p.read_text() for p in (ROOT / "labextension" / "src").glob("*.ts")}
    holders = [name for name, text in ts.items() if SIMULATED_BANNER in text]
    assert holders == ["state.ts"]
    assert re.search(
        r"export const SIMULATED_BANNER = '" + re.escape(SIMULATED_BANNER) + "';", ts["state.ts"]
    )


def test_the_kernel_provisioner_offers_exactly_the_registry_choices() -> None:
    from jupyter_cc.provisioner import ConfidentialProvisioner

    assert tuple(ConfidentialProvisioner.class_traits()["tee"].values) == TEE_CHOICES


def test_the_hub_spawner_offers_exactly_the_registry_choices() -> None:
    from jupyter_cc.hub import AttestedSSHSpawner

    assert tuple(AttestedSSHSpawner.class_traits()["tee"].values) == TEE_CHOICES


def _choices(argv_prefix: list[str], option: str) -> tuple[str, ...]:
    from jupyter_cc.cli import _build_parser as build_parser

    parser = build_parser()
    for word in argv_prefix:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]  # type: ignore[attr-defined]
    action = next(a for a in parser._actions if option in a.option_strings)
    return tuple(action.choices or ())


@pytest.mark.parametrize("command", [["attest"], ["kernelspec", "install"], ["profile", "add"]], ids=" ".join)
def test_cli_tee_options_offer_exactly_the_registry_choices(command: list[str]) -> None:
    assert _choices(command, "--tee") == TEE_CHOICES


def test_cli_verify_has_one_subcommand_per_kind_and_the_bundle() -> None:
    from jupyter_cc.cli import _build_parser as build_parser

    parser = build_parser()
    top = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    verify = top.choices["verify"]  # type: ignore[attr-defined]
    sub = next(a for a in verify._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {*KIND_NAMES, "bundle"}


def test_profiles_refuse_a_tee_outside_the_registry_naming_the_choices() -> None:
    from jupyter_cc.errors import InputError
    from jupyter_cc.profiles import Profile

    for tee in TEE_CHOICES:
        Profile(name="p", host="h", tee=tee)
    with pytest.raises(InputError) as err:
        Profile(name="p", host="h", tee="sgx")
    assert all(choice in err.value.diagnostics() for choice in TEE_CHOICES)


def test_the_guest_collects_every_choice_and_names_them_when_refusing() -> None:
    from jupyter_cc.errors import InputError
    from jupyter_cc.guest.collectors import collect_cpu_evidence

    with pytest.raises(InputError) as err:
        collect_cpu_evidence(bytes(64), tee="sgx")
    assert all(choice in err.value.diagnostics() for choice in TEE_CHOICES)


def test_policy_knows_exactly_the_registered_kinds() -> None:
    from jupyter_cc.errors import PolicyError
    from jupyter_cc.policy import Policy

    for name in KIND_NAMES:
        Policy.from_toml(f'tee = ["{name}"]\n' + ("allow_simulated = true\n" if name == "sim-snp" else ""))
    with pytest.raises(PolicyError) as err:
        Policy.from_toml('tee = ["sgx"]\n')
    assert "sgx" in err.value.diagnostics()


def test_the_registry_is_consistent() -> None:
    assert len(set(KIND_NAMES)) == len(KIND_NAMES)
    assert {k.family for k in kinds.KINDS} <= set(KIND_NAMES)
    assert all(kinds.kind(name) is not None for name in KIND_NAMES)
    assert kinds.kind("sgx") is None
    assert [k.name for k in kinds.KINDS if k.simulated] == list(kinds.SIMULATED_KINDS) == ["sim-snp"]


def test_the_readme_python_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README's From Python part has an example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
