"""CVM profiles in the user config: TOML round trips, refusals, other tables kept, the CLI."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from jupyter_cc.cli import main
from jupyter_cc.errors import InputError
from jupyter_cc.profiles import Profile, get_profile, load_profiles, remove_profile, save_profile
from jupyter_cc.remote.guest import GuestTarget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HOSTILE = [
    'a"b',
    "back\\slash\\",
    "new\nline\r\n",
    "$(rm -rf ~)`id`",
    "tab\there\x00nul\x1besc\x7fdel",
    "'single' \"\"\"triple\"\"\" '''lit'''",
    "unicode é ✓ \u2028 \U0001f600",
    '[profiles.evil]\nhost = "x"',
    "# not a comment",
]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "jupyter" / "jupyter_cc.toml"
    monkeypatch.setenv("JUPYTER_CC_CONFIG", str(path))
    return path


@pytest.mark.parametrize("value", HOSTILE)
def test_written_strings_round_trip_through_tomllib(config: Path, value: str) -> None:
    # The file as any TOML reader sees it, not through load_profiles.
    save_profile(Profile(name="p", host=value))
    assert tomllib.loads(config.read_text())["profiles"]["p"]["host"] == value


@pytest.mark.parametrize("value", HOSTILE)
def test_profile_round_trips_hostile_strings(config: Path, value: str) -> None:
    profile = Profile(
        name="lab",
        host=value,
        ssh_user=value,
        identity_file=value,
        known_hosts=value,
        host_key_file=value,
        python=value,
        sim_dir=value,
        policy="/abs/" + value,
        port=2222,
        tee="snp",
        kbs="https://kbs.example.org:8085/" + value.replace("\n", ""),
    )
    save_profile(profile)
    assert load_profiles() == {"lab": profile}
    assert get_profile("lab") == profile
    assert list(tomllib.loads(config.read_text())["profiles"]) == ["lab"]


def test_file_is_private_and_env_honoured(config: Path) -> None:
    assert load_profiles() == {}
    assert save_profile(Profile(name="a", transport="local")) == config
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    config.chmod(0o644)
    save_profile(Profile(name="b", host="h"))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert sorted(load_profiles()) == ["a", "b"]
    assert [p.name for p in config.parent.iterdir()] == ["jupyter_cc.toml"]  # no temp files left


def test_remove(config: Path) -> None:
    save_profile(Profile(name="a", host="h1"))
    save_profile(Profile(name="b", host="h2"))
    remove_profile("a")
    assert list(load_profiles()) == ["b"]
    with pytest.raises(InputError, match=r"no profile 'a'.*known profiles: b"):
        remove_profile("a")
    remove_profile("b")
    assert load_profiles() == {}


def test_remove_works_on_an_invalid_profile(config: Path) -> None:
    config.parent.mkdir()
    config.write_text('[profiles.bad]\nhots = "typo"\n\n[profiles.good]\ntransport = "local"\n')
    with pytest.raises(InputError, match="unknown key hots"):
        load_profiles()
    remove_profile("bad")
    assert list(load_profiles()) == ["good"]


def test_get_profile_lists_known_names(config: Path) -> None:
    with pytest.raises(InputError, match=r"no profile 'x' .*known profiles: none"):
        get_profile("x")
    save_profile(Profile(name="one", host="h"))
    save_profile(Profile(name="two", transport="local"))
    with pytest.raises(InputError, match="known profiles: one, two"):
        get_profile("x")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('host = "h"\nhostname = "x"', "unknown key hostname"),
        ('host = "h"\nport = "22"', "port is a TOML str, expected an integer"),
        ('host = "h"\nport = 70000', "not a TCP port"),
        ('host = "h"\nport = true', "expected an integer"),
        ('host = "h"\ntee = "sgx"', "tee 'sgx' is not one of"),
        ('transport = "telnet"', "transport 'telnet'"),
        ('transport = "ssh"', "transport ssh needs a host"),
        ('host = "h"\npolicy = "relative.toml"', "not an absolute path"),
        ('host = "h"\nkbs = "ftp://x"', "not a key broker URL"),
        ('host = "h"\n[profiles.p.sub]\nx = 1', "unknown key sub"),
        ('host = ""', "host is empty"),
    ],
)
def test_bad_profiles_are_refused(config: Path, table: str, message: str) -> None:
    config.parent.mkdir()
    config.write_text(f"[profiles.p]\n{table}\n")
    with pytest.raises(InputError, match=message):
        load_profiles()


def test_bad_names_and_files(config: Path) -> None:
    for name in ("", "has.dot", "-lead", "sp ace", "x" * 65):
        with pytest.raises(InputError, match="profile name"):
            Profile(name=name, transport="local")
    config.parent.mkdir()
    config.write_text("[profiles\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_profiles()
    config.write_text("profiles = 3\n")
    with pytest.raises(InputError, match="expected a table"):
        load_profiles()


OTHER = """# my jupyter-cc settings
default_profile = "lab"

[policies.prod]
path = "/etc/jupyter-cc/prod.toml"  # kept
text = '''
[profiles.fake]
not a header
'''

[profiles.old]
host = "old.example.org"
# this comment goes with the profile table

[[brokers]]
url = "http://kbs:8085"
"""


def test_other_tables_are_kept_verbatim(config: Path) -> None:
    config.parent.mkdir()
    config.write_text(OTHER)
    save_profile(Profile(name="new", transport="local", tee="sim", policy="/p.toml"))
    text = config.read_text()
    doc = tomllib.loads(text)
    assert doc["default_profile"] == "lab"
    assert doc["policies"]["prod"]["text"] == "[profiles.fake]\nnot a header\n"
    assert doc["brokers"] == [{"url": "http://kbs:8085"}]
    assert sorted(doc["profiles"]) == ["new", "old"]
    for kept in ("# my jupyter-cc settings", 'path = "/etc/jupyter-cc/prod.toml"  # kept', "[[brokers]]"):
        assert kept in text
    remove_profile("old")
    remove_profile("new")
    doc = tomllib.loads(config.read_text())
    assert "profiles" not in doc and doc["brokers"] == [{"url": "http://kbs:8085"}]


COMMENTED = """[profiles.lab]
# the lab CVM: ask ops before changing the policy
host = "lab.example.org"  # behind the VPN
port = 2222

[profiles.old]
host = "old.example.org"
"""


def test_comments_inside_a_profile_table_survive_edits_of_others(config: Path) -> None:
    config.parent.mkdir()
    config.write_text(COMMENTED)
    save_profile(Profile(name="new", transport="local"))
    remove_profile("old")
    text = config.read_text()
    assert text.startswith(COMMENTED.split("[profiles.old]")[0])
    assert "# the lab CVM: ask ops before changing the policy" in text
    assert 'host = "lab.example.org"  # behind the VPN' in text
    assert sorted(load_profiles()) == ["lab", "new"]
    save_profile(Profile(name="lab", host="lab.example.org", port=2200))  # replaced in place
    text = config.read_text()
    assert "# the lab CVM: ask ops before changing the policy" in text
    assert 'host = "lab.example.org"  # behind the VPN' in text
    assert get_profile("lab").port == 2200


@pytest.mark.parametrize(
    "original",
    [
        'profiles.a.host = "h"\n',
        'profiles = { a = { host = "h" } }\n',
        '[profiles]\na = { host = "h" }\n',
    ],
)
def test_other_profile_layouts_are_refused_and_left_alone(config: Path, original: str) -> None:
    config.parent.mkdir()
    config.write_text(original)
    assert get_profile("a").host == "h"
    for change in (lambda: save_profile(Profile(name="b", transport="local")), lambda: remove_profile("a")):
        with pytest.raises(InputError, match="edit the file by hand"):
            change()
        assert config.read_text() == original


def test_layouts_it_cannot_rewrite_are_refused(config: Path) -> None:
    config.parent.mkdir()
    original = 'profiles.a.host = "h"\n'
    config.write_text(original)
    assert get_profile("a").host == "h"
    with pytest.raises(InputError, match="edit the file by hand"):
        save_profile(Profile(name="b", transport="local"))
    assert config.read_text() == original


def test_guest_target_and_provisioner_config() -> None:
    full = Profile(
        name="lab",
        host="cvm",
        port=2222,
        ssh_user="azureuser",
        identity_file="/k/id",
        known_hosts="/k/known",
        host_key_file="/etc/ssh/ssh_host_ed25519_key.pub",
        policy="/p/prod.toml",
        python="/opt/venv/bin/python",
        tee="az-snp-vtpm",
        kbs="kbs://kbs:8085?cert-sha256=abababababababababababababababababababababababababababababababab",
    )
    assert full.to_guest_target() == GuestTarget(
        transport="ssh",
        host="cvm",
        port=2222,
        user="azureuser",
        identity_file="/k/id",
        known_hosts="/k/known",
        host_key_file="/etc/ssh/ssh_host_ed25519_key.pub",
        python="/opt/venv/bin/python",
        tee="az-snp-vtpm",
    )
    assert full.provisioner_config() == {
        "transport": "ssh",
        "host": "cvm",
        "port": 2222,
        "user": "azureuser",
        "identity_file": "/k/id",
        "known_hosts": "/k/known",
        "host_key_file": "/etc/ssh/ssh_host_ed25519_key.pub",
        "policy": "/p/prod.toml",
        "remote_python": "/opt/venv/bin/python",
        "tee": "az-snp-vtpm",
    }
    minimal = Profile(name="h", host="cvm")
    assert minimal.to_guest_target() == GuestTarget(host="cvm")
    assert minimal.provisioner_config() == {"transport": "ssh", "host": "cvm", "tee": "auto"}
    local = Profile(name="sim", transport="local", tee="sim", policy="/p.toml", sim_dir="/tmp/sim")
    assert local.to_guest_target() == GuestTarget(transport="local", tee="sim", sim_dir="/tmp/sim")
    assert local.provisioner_config() == {
        "transport": "local",
        "tee": "sim",
        "policy": "/p.toml",
        "sim_dir": "/tmp/sim",
    }


# --- the CLI --------------------------------------------------------------------------------------


def run_cli(argv: Sequence[str]) -> int:
    """The real ``jupyter-cc`` entry point: its exit status, and its one sentence on stderr."""
    return main(list(argv))


def test_cli_add_list_remove(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prod.toml").write_text('name = "prod"\n')
    assert run_cli(["profile", "list"]) == 0
    assert "no profiles" in capsys.readouterr().out
    argv = ["profile", "add", "lab", "--host", "cvm", "--port", "2222", "--ssh-user", "u"]
    argv += ["--identity-file", "id", "--known-hosts", "~/kh", "--host-key-file", "/etc/ssh/k.pub"]
    argv += ["--policy", "prod.toml", "--python", "/opt/py", "--tee", "snp", "--kbs", "kbs://kbs:8085"]
    assert run_cli(argv) == 0
    assert "added profile lab" in capsys.readouterr().out
    lab = get_profile("lab")
    assert lab.policy == str(tmp_path / "prod.toml")
    assert lab.identity_file == str(tmp_path / "id")
    assert lab.known_hosts == str(Path("~/kh").expanduser())
    assert lab.host_key_file == "/etc/ssh/k.pub" and lab.python == "/opt/py" and lab.port == 2222
    assert run_cli(["profile", "add", "lab", "--transport", "local"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(["profile", "add", "lab", "--transport", "local", "--replace"]) == 0
    assert get_profile("lab").transport == "local"
    assert run_cli(["profile", "add", "cvm2", "--host", "h2"]) == 0
    capsys.readouterr()
    assert run_cli(["profile", "list"]) == 0
    out = capsys.readouterr().out
    assert "lab" in out and "h2" in out
    assert run_cli(["profile", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["cvm2"] == {"name": "cvm2", "transport": "ssh", "host": "h2", "tee": "auto"}
    assert run_cli(["profile", "remove", "lab"]) == 0
    assert list(load_profiles()) == ["cvm2"]
    assert run_cli(["profile", "remove", "lab"]) == 2
    assert "known profiles: cvm2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "add", "x"], "--transport ssh needs --host"),
        (["profile", "add", "x", "--transport", "local", "--tee", "sim"], "--tee sim needs a --policy"),
        (["profile", "add", "x", "--host", "h", "--policy", "missing.toml"], "does not exist"),
        (["profile", "add", "x.y", "--host", "h"], "profile name"),
        (["profile", "add", "x", "--host", "h", "--port", "0"], "not a TCP port"),
    ],
)
def test_cli_add_refusals(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not config.exists()
