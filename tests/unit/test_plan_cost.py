"""Time and cost planner: the instance catalog, the table, the pick and the plan command."""
from __future__ import annotations

import io
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from threadsum.config import load_config  # noqa: E402
from threadsum.train import cost  # noqa: E402


@pytest.fixture()
def cfg(tmp_path):
    return load_config(None, [f"data.prepared_dir={tmp_path / 'none'}"])


def test_catalog_has_dated_prices_and_cpu_types():
    cat = cost.instance_catalog()
    assert cat["prices_as_of"] and cat["region"] == "us-east-1" and 0 < cat["spot_discount"] < 1
    inst = cat["instances"]
    assert {"ml.c5.4xlarge", "ml.m5.4xlarge", "ml.g5.xlarge", "ml.p4d.24xlarge"} <= set(inst)
    assert all(v["price"] > 0 for v in inst.values())


def test_table_sorted_by_cost_with_cpu_rows(cfg):
    rows, meta = cost.cost_table(cfg)
    fitting = [r for r in rows if r.fits]
    assert [r.epoch_cost for r in fitting] == sorted(r.epoch_cost for r in fitting)
    assert all(not r.fits for r in rows[len(fitting):])
    cpu = [r for r in fitting if r.gpus == 0]
    gpu = [r for r in fitting if r.gpus > 0]
    assert cpu and gpu and min(r.epoch_hours for r in cpu) > max(r.epoch_hours for r in gpu if r.gpus == 1)
    for r in fitting:
        assert r.epoch_cost_spot == pytest.approx(r.epoch_cost * (1 - meta["spot_discount"]))
        assert math.isfinite(r.epoch_hours) and r.tokens_per_s > 0
    assert meta["epoch_tokens"] == pytest.approx(3.05e6 * 0.8)


def test_measured_anchor_reproduced(cfg):
    rows, _ = cost.cost_table(cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16"})}))
    h200 = next(r for r in rows if r.instance == "ml.p5en.48xlarge")
    assert h200.basis.startswith("measured")


def test_pick_instance_is_cheapest_fitting_gpu(cfg):
    rows, _ = cost.cost_table(cfg)
    pick = cost.pick_instance(cfg)
    assert pick == next(r.instance for r in rows if r.fits and r.gpus > 0)


def test_plan_command_prints_breakdown_options_and_cost(cfg):
    buf = io.StringIO()
    out = cost.plan_command(cfg, "A10G", cost=True, console=Console(file=buf, width=220))
    text = buf.getvalue()
    for word in ("weights", "optimizer states", "activations", "peak", "options that fit", "pick:", "ml.c5.4xlarge", "as of"):
        assert word in text
    assert out["pick"] is not None and out["cost"]


def test_plan_command_for_a_causal_model(tmp_path):
    cfg = load_config(None, [f"data.prepared_dir={tmp_path / 'none'}", "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct",
                             "data.max_source_tokens=1024", "data.max_target_tokens=128"])
    buf = io.StringIO()
    out = cost.plan_command(cfg, "A10G", cost=True, console=Console(file=buf, width=220))
    text = buf.getvalue()
    assert "generation KV cache" in text and "2 kv heads" in text and "one sequence" in text
    assert out["kv_cache_gib"] > 0 and out["cost"]
    assert cost.flops_per_token(cost.mem.model_spec(cfg), 0.9, 1024, 128) > 6 * 0.35e9  # 6 x non-embedding weights
