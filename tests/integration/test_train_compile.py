"""train.compile: the same losses as eager training, and a bounded number of compiled graphs."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.train.batching import PadRule  # noqa: E402
from threadsum.train.compiling import pad_rule  # noqa: E402
from threadsum.train.loop import train  # noqa: E402


def test_pad_rule_buckets_then_multiples():
    rule = PadRule(8, (64, 128))
    assert [rule(n) for n in (1, 64, 65, 128, 129, 200)] == [64, 64, 128, 128, 136, 200]
    assert str(PadRule(8)) == "8"  # sampler fingerprints of runs without buckets are unchanged


def _losses(path):
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r and "event" not in r]


@pytest.mark.parametrize("chunked", [True, False])
def test_compiled_training_matches_eager_with_bounded_graphs(tmp_path, chunked):
    prepared = make_prepared(tmp_path / "prepared", n_train=32, n_val=2, n_test=2)
    buckets = [48, 64, 96, 128]
    common = dict(max_steps=5, checkpoint_every_steps=0, log_every_steps=1, pad_buckets=buckets,
                  loss_chunk_tokens=64 if chunked else 0)

    def run(name, **extra):
        cfg = tiny_config(prepared, tmp_path / name, **common, **extra)
        cfg.model.tiny.dropout = 0.0  # compiled and eager dropout streams differ; the math must not
        result = train(cfg)
        assert result["status"] == "finished"
        return _losses(tmp_path / name / "metrics.jsonl")

    eager = run("eager")
    compiled = run("compiled", compile=True, compile_backend="aot_eager")
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
    graphs = compiled[-1]["compiled_graphs"]
    # batch sizes vary from step to step; only (source bucket, target bucket) pairs may add graphs
    # (dynamo counts forward graphs; a graph break would add one per break)
    assert 1 <= graphs <= len(buckets) ** 2
    assert "compiled_graphs" not in eager[-1]
    assert pad_rule(tiny_config(prepared, tmp_path / "x", compile=True).train).buckets  # default ladder
