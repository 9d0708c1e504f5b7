"""Every command: a bad user value exits 2 with one line naming the value and the fix, no traceback.

Training runs in a real process (``python -m threadsum``), as a user runs it, because its log lines
go to the process's stderr; the other commands run in-process through typer's test runner (the same
``threadsum.cli.app``), where an escaping exception would show up as ``result.exception``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixture import make_prepared

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("cli-bad") / "prepared", n_train=8, n_val=2, n_test=2)


def _run(args: list[str], cwd: Path, monkeypatch) -> tuple[int, str]:
    """Exit code and everything printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    if args[0] == "train":
        res = subprocess.run([sys.executable, "-m", "threadsum", *args], capture_output=True, text=True,
                             timeout=300, cwd=cwd, env=env)
        return res.returncode, res.stdout + res.stderr
    from typer.testing import CliRunner

    from threadsum.cli import app

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "400")
    res = CliRunner().invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{args}: an exception escaped the CLI: {res.exception!r}\n{res.output}")
    return res.exit_code, res.output


# (command line, text the one-line message must contain); {prepared} and {tmp} are filled in per test
CASES = [
    (["config", "-c", "{tmp}/missing.yaml"], "missing.yaml"),
    (["config", "train.lr=fast"], "train.lr"),
    (["synth", "-n", "0", "-o", "{tmp}/synth"], "0"),
    (["prepare", "-c", TINY, "--source", "{tmp}/no-such-folder", "data.prepared_dir={tmp}/p"], "no-such-folder"),
    (["plan", "-c", TINY, "--device", "rtx9090"], "rtx9090"),
    (["train", "-c", TINY, "data.prepared_dir={tmp}/nothing-here", "train.output_dir={tmp}/run"], "nothing-here"),
    (["train", "-c", TINY, "data.prepared_dir={prepared}", "train.output_dir={tmp}/run",
      "train.optimizer=adamw8bit", "track.tracking_uri=none"], "adamw8bit"),
    (["train", "-c", TINY, "train.strategy=deepspeed"], "deepspeed"),
    (["train", "-c", TINY, "data.prepared_dir={prepared}", "train.output_dir={tmp}/run", "train.compile=true",
      "train.compile_backend=turbo", "track.tracking_uri=none"], "turbo"),
    (["train", "-c", TINY, "train.pad_buckets=[0,64]"], "pad_buckets"),
    (["train", "-c", TINY, "data.prepared_dir={prepared}", "train.output_dir={tmp}/run",
      "--resume", "{tmp}/no-checkpoint", "track.tracking_uri=none"], "no-checkpoint"),
    (["evaluate", "-c", TINY, "data.prepared_dir={prepared}", "--split", "bogus"], "bogus"),
    (["evaluate", "-c", TINY, "data.prepared_dir={prepared}", "--model", "{tmp}/no-model",
      "track.tracking_uri=none"], "no-model"),
    (["summarize", "{tmp}/thread.eml", "-m", "{tmp}/no-model"], "no-model"),
    (["summarize", "{tmp}/no-thread.eml", "-m", "{tmp}/no-model"], "no-thread.eml"),
    (["summarize", "{tmp}/thread.eml", "-m", "{tmp}", "--device", "tpu"], "tpu"),
    (["serve", "-m", "{tmp}/no-model"], "no-model"),
    (["serve", "-m", "{tmp}/no-model", "serve.port=-1"], "serve.port"),
    (["runs", "--root", "{tmp}/no-runs"], "no-runs"),
    (["runs", "report", "--root", "{tmp}/no-runs", "-o", "{tmp}/log.md"], "no-runs"),
    (["demo", "--threads", "-5", "--out", "{tmp}/demo"], "-5"),
    (["sagemaker", "launch", "-c", TINY, "--instance-type", "foo", "--dry-run"], "foo"),
    (["sagemaker", "status", "bad_job!!"], "bad_job!!"),
]


@pytest.mark.parametrize("args,named", CASES, ids=[" ".join(a[:2]) + f" [{n}]" for a, n in CASES])
def test_bad_value_exits_2_with_one_line(args, named, prepared, tmp_path, monkeypatch):
    (tmp_path / "thread.eml").write_text("From: a@example.com\nSubject: hi\n\nCan you send the budget?\n")
    argv = [a.format(tmp=tmp_path, prepared=prepared) for a in args]
    code, out = _run(argv, tmp_path, monkeypatch)
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    naming = [ln for ln in lines if named in ln]
    assert naming, out
    assert len(lines) <= 3, f"expected one line naming the problem, got:\n{out}"
