"""The line quoted when a kernel or single-user server exits while starting is the cause."""

from __future__ import annotations

from jupyter_cc.guest.kernel import exit_cause

SINGLEUSER_AS_ROOT = """\
[I 2026-12-01 22:32:56.101 ServerApp] jupyter_lsp | extension was successfully linked.
[C 2026-12-01 22:32:56.767 ServerApp] Running as root is not recommended. Use --allow-root to bypass.
[I 2026-12-01 22:32:56.768 ServerApp] Skipped non-installed server(s): basedpyright, bash-language-server
"""


def test_the_last_error_level_record_wins_over_later_info_lines() -> None:
    cause = exit_cause(SINGLEUSER_AS_ROOT)
    assert cause == "ServerApp: Running as root is not recommended. Use --allow-root to bypass."


def test_at_most_the_last_two_errors_are_quoted() -> None:
    log = "".join(f"[E 2026-12-01 10:00:0{i}.000 App] error {i}\n" for i in range(4))
    assert exit_cause(log) == "App: error 2; App: error 3"


def test_a_traceback_gives_its_exception_line() -> None:
    log = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    import nope\n"
        "ModuleNotFoundError: No module named 'nope'\n"
    )
    assert exit_cause(log) == "ModuleNotFoundError: No module named 'nope'"


def test_an_error_record_with_a_traceback_names_the_exception_too() -> None:
    log = (
        "[E 2026-12-01 10:00:00.000 ServerApp] Exception while loading config\n"
        "    Traceback (most recent call last):\n"
        "    ValueError: bad port\n"
        "[I 2026-12-01 10:00:01.000 ServerApp] shutting down\n"
    )
    assert exit_cause(log) == "ServerApp: Exception while loading config ValueError: bad port"


def test_nothing_said_is_named_and_long_lines_are_cut() -> None:
    assert exit_cause("") == "no output"
    assert exit_cause("\n\n") == "no output"
    cause = exit_cause("x" * 1000)
    assert len(cause) == 300 and cause.endswith("…")
