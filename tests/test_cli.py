import subprocess
import sys
from pathlib import Path

import pytest

from franka_rl.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "show-config"):
        assert name in out


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_bad_override_is_one_line_error_not_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "franka_rl.cli", "show-config", "task.nope=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "task.nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_show_config_prints_hash(capsys):
    assert main(["show-config", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "seed: 5" in out and "# config hash:" in out


def test_ci_runs_the_readme_test_command():
    ci_command = [
        line for line in (REPO / ".ci/run").read_text().splitlines() if line.startswith("python3 -m venv")
    ]
    assert len(ci_command) == 1
    assert ci_command[0] in (REPO / "README.md").read_text()


def test_module_entry_points_print_user_errors_as_one_line():
    import subprocess
    import sys

    for module in ("franka_rl", "franka_rl.cli"):
        result = subprocess.run([sys.executable, "-m", module, "show-config", "bogus.key=1"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "bad config key 'bogus'" in result.stderr
