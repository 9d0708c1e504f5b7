import subprocess
import sys

import pytest
from typer.testing import CliRunner

from threadsum.cli import app

runner = CliRunner()
COMMANDS = ["config", "synth", "prepare", "train", "evaluate", "summarize", "verify", "export", "serve", "plan",
            "runs", "demo"]


def test_top_level_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "--help" in res.output


def test_bad_override_exits_2_with_message():
    res = runner.invoke(app, ["config", "train.nope=1"])
    assert res.exit_code == 2
    assert "train.nope" in res.output


def test_config_prints_resolved_yaml():
    res = runner.invoke(app, ["config", "train.seed=5"])
    assert res.exit_code == 0
    assert "seed: 5" in res.output


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "threadsum", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "prepare" in out.stdout
