"""OOM recovery: an out-of-memory error inside a step splits the micro-batch and redoes the step;
repeated OOM lowers the piece budget for the rest of the run. The result equals (within float
tolerance) a run that used the small pieces from the start."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.train.loop import train  # noqa: E402
from threadsum.train.step import INJECT_OOM_ENV  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def _tiny_no_dropout(prepared, out, **kw):
    cfg = tiny_config(prepared, out, max_steps=9, checkpoint_every_steps=0, **kw)
    # dropout masks depend on how a batch is split; without dropout the split is pure arithmetic
    cfg.model.tiny.dropout = 0.0
    return cfg


def test_injected_oom_recovers_and_matches_small_micro_batches(prepared, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv(INJECT_OOM_ENV, "3,7")
    oom = train(_tiny_no_dropout(prepared, tmp_path / "oom"))
    monkeypatch.delenv(INJECT_OOM_ENV)
    assert oom["status"] == "finished" and oom["steps"] == 9
    assert oom["oom_events"] == 2
    lowered = oom["compute_max_tokens"]
    assert lowered < 1024  # the second event lowered the budget for the rest of the run

    events = [json.loads(ln) for ln in (tmp_path / "oom" / "metrics.jsonl").read_text().splitlines() if '"oom"' in ln]
    assert [e["step"] for e in events] == [3, 7]
    record = json.loads((tmp_path / "oom" / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["summary"]["oom_events"] == 2

    small = train(_tiny_no_dropout(prepared, tmp_path / "small", compute_max_tokens=lowered // 2))
    assert small["oom_events"] == 0
    wa = load_file(str(tmp_path / "oom" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "small" / "model" / "model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    # the same threads were trained on, only in different pieces
    assert oom["real_tokens"] == small["real_tokens"]
