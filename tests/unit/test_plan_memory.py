"""Memory planner: architecture arithmetic, levers, devices, auto-fit, and the CPU calibration."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from threadsum.config import load_config  # noqa: E402
from threadsum.train import memory as mem  # noqa: E402

CALIBRATION = Path(__file__).resolve().parents[1] / "data" / "memory_calibration.json"


def _large(*overrides: str):
    return load_config(None, ["model.name_or_path=facebook/bart-large", *overrides])


@pytest.mark.parametrize("name", ["facebook/bart-base", "facebook/bart-large"])
def test_param_count_matches_transformers(name):
    torch = pytest.importorskip("torch")
    from transformers import BartConfig, BartForConditionalGeneration

    spec = mem.model_spec(load_config(None, [f"model.name_or_path={name}"]))
    raw = {k: v for k, v in mem.known_models()[name].items()}
    with torch.device("meta"):
        model = BartForConditionalGeneration(BartConfig(**raw))
    assert spec.params() == sum(p.numel() for p in model.parameters())


def test_tiny_and_local_config(tmp_path):
    cfg = load_config(None, ["model.init=random", "model.tiny.d_model=64", "model.tiny.vocab_size=1000"])
    assert mem.model_spec(cfg).d_model == 64
    (tmp_path / "config.json").write_text(json.dumps(mem.known_models()["facebook/bart-base"]))
    assert mem.model_spec(load_config(None, [f"model.name_or_path={tmp_path}"])).encoder_layers == 6
    with pytest.raises(mem.PlanError, match="config.json"):
        mem.model_spec(load_config(None, ["model.name_or_path=someone/unknown-model"]))


def test_devices():
    assert mem.resolve_device("h100").name == "H100-80"
    assert mem.resolve_device("A100-40").memory_gib < 40
    assert mem.resolve_device("a10g").kind == "cuda"
    assert mem.resolve_device("cpu:24").memory_bytes == 24 * mem.GiB
    assert mem.resolve_device("auto").memory_bytes > 0
    with pytest.raises(mem.PlanError, match="unknown device"):
        mem.resolve_device("tpu-v5")


def test_levers_move_memory_the_right_way():
    base = mem.plan_memory(_large("train.precision=bf16"), "H200")
    more = mem.plan_memory(_large("train.precision=bf16", "train.max_tokens=16384"), "H200")
    ckpt = mem.plan_memory(_large("train.precision=bf16", "train.max_tokens=16384", "model.gradient_checkpointing=true"), "H200")
    lora = mem.plan_memory(_large("train.precision=bf16", "model.lora.enabled=true"), "H200")
    ada = mem.plan_memory(_large("train.precision=bf16", "train.optimizer=adafactor"), "H200")
    fsdp = mem.plan_memory(_large("train.precision=bf16"), "H200", ranks=8)
    assert more.peak > base.peak and more.activations > base.activations
    assert ckpt.activations < more.activations / 3
    assert lora.optimizer < base.optimizer / 40 and lora.trainable_params < 0.05 * lora.params
    assert ada.optimizer < base.optimizer / 20
    assert fsdp.optimizer == pytest.approx(base.optimizer / 8)
    # AdamW state of BART-large is 3.2 GB (DESIGN.md)
    assert base.optimizer == pytest.approx(3.25e9, rel=0.01)
    assert abs(sum(b for _, b, _ in base.breakdown()) - base.peak) < 1e6


def test_auto_fit_keeps_effective_batch_and_fits():
    cfg = _large("train.max_tokens=16384", "train.batch_tokens=32768")
    overrides, plan = mem.auto_fit(cfg, "T4")
    assert plan.fits
    assert not any(o.startswith("train.batch_tokens") for o in overrides)
    assert not any("lora" in o for o in overrides)
    new, _, _ = mem.apply_auto_fit(cfg, "T4")
    assert new.train.batch_tokens == 32768
    assert new.train.max_tokens <= 16384
    # nothing fits 2 GiB: the error says what to do
    with pytest.raises(mem.PlanError, match="LoRA"):
        mem.auto_fit(cfg, "gpu:2")


def test_options_are_sorted_and_fit():
    opts = mem.fit_options(_large(), "A10G")
    assert opts and all(o.plan.fits for o in opts)
    plain = [o for o in opts if not o.changes_model]
    assert [o.speed for o in plain] == sorted((o.speed for o in plain), reverse=True)


def _predict(p: dict) -> float:
    spec = mem.ModelSpec(
        name="calibration", d_model=p["d_model"], encoder_layers=p["encoder_layers"], decoder_layers=p["decoder_layers"],
        encoder_heads=p["attention_heads"], decoder_heads=p["attention_heads"], encoder_ffn=p["ffn_dim"],
        decoder_ffn=p["ffn_dim"], vocab_size=p["vocab_size"], dropout=p["dropout"],
        attention_dropout=p["attention_dropout"], activation_dropout=p["attention_dropout"],
    )
    lv = mem.Levers(precision=p["precision"], optimizer=p["optimizer"], gradient_checkpointing=p["checkpointing"], lora=p["lora"])
    plan = mem.estimate(spec, lv, mem.Workload(p["batch"], p["src_len"], p["tgt_len"]), mem.resolve_device("cpu:64"))
    return plan.peak / mem.MiB


def test_calibration_points_within_15_percent():
    if not CALIBRATION.exists():
        pytest.skip("tests/data/memory_calibration.json missing: run python bench/calibrate_memory.py")
    doc = json.loads(CALIBRATION.read_text())
    assert doc["points"], "calibration file holds no points"
    errors = []
    for p in doc["points"]:
        pred = _predict(p)
        err = pred / p["measured_mb"] - 1
        if abs(err) > 0.15:
            errors.append(f"{p['precision']} {p['optimizer']} lora={p['lora']} ckpt={p['checkpointing']} "
                          f"B={p['batch']} {p['src_len']}+{p['tgt_len']}: measured {p['measured_mb']:.0f} MB, "
                          f"predicted {pred:.0f} MB ({err:+.0%})")
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_live_measurement_matches_committed_calibration():
    """Re-measure two committed points: guards against drift of torch/transformers memory behaviour."""
    import subprocess
    import sys

    if not CALIBRATION.exists():
        pytest.skip("no committed calibration")
    script = Path(__file__).resolve().parents[2] / "bench" / "calibrate_memory.py"
    points = json.loads(CALIBRATION.read_text())["points"][:2]
    for p in points:
        keys = {k: v for k, v in p.items() if k not in ("params", "trainable_params") and not k.endswith(("_mb", "seconds"))}
        out = subprocess.run([sys.executable, str(script), "--point", json.dumps(keys)], capture_output=True, text=True,
                             timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert out.returncode == 0, out.stderr[-2000:]
        live = json.loads(out.stdout.strip().splitlines()[-1])["measured_mb"]
        assert abs(_predict(p) / live - 1) <= 0.15
