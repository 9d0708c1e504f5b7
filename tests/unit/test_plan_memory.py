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
    assert base.gradients_total == pytest.approx(4 * base.trainable_params)


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


# ---- GPU anchors: BART-large (BartConfig() defaults, random init, sdpa) on one H200, peaks from
# torch.cuda.max_memory_allocated / 2**30 in /work/shared/bench/gpu_anchor.py (DESIGN.md).
BART_DEFAULTS = mem.ModelSpec(
    name="BartConfig()", d_model=1024, encoder_layers=12, decoder_layers=12, encoder_heads=16, decoder_heads=16,
    encoder_ffn=4096, decoder_ffn=4096, vocab_size=50265, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
)


def _anchor_token_budget_batches(max_tokens=16384, n=4167):
    """(batch, source len, target len) of every micro-batch gpu_anchor.py builds, in its run order.

    Same generator as the script: lognormal lengths, sorted by (source, target), cut when
    count x longest SOURCE exceeds the budget (targets are not counted), shuffled with seed 1.
    """
    import math

    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    src = np.clip(rng.lognormal(math.log(1024 * 0.6), 0.7, n), 32, 1024).astype(int)
    tgt = np.clip(rng.lognormal(math.log(256 * 0.35), 0.4, n), 8, 256).astype(int)
    batches, cur, longest = [], [], 0
    for i in sorted(range(n), key=lambda i: (src[i], tgt[i])):
        if cur and (len(cur) + 1) * max(longest, src[i]) > max_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, src[i])
    batches.append(cur)
    np.random.default_rng(1).shuffle(batches)
    return [(len(b), int(max(src[j] for j in b)), int(max(tgt[j] for j in b))) for b in batches]


def _anchor_peak_gib(levers, shapes):
    """Largest predicted allocated peak over the micro-batches a run executed."""
    h200 = mem.resolve_device("H200")
    return max(mem.estimate(BART_DEFAULTS, levers, mem.Workload(*s), h200).allocated for s in shapes) / mem.GiB


@pytest.mark.parametrize("label, levers, which, measured_gib", [
    # memory_bs1_fp32_max: fp32, batch 1 padded to 1,024 + 256, fused AdamW
    ("fp32 bs1", mem.Levers(precision="fp32", hold_logits=False), "bs1", 6.8),
    # amp_bf16_token_budget: 25 steps + 3 warm-up (+ the FLOP-count step on the first batch)
    ("bf16 16k", mem.Levers(precision="bf16", hold_logits=False), "28", 39.8),
    # grad_ckpt_amp: same batches; the CUDA activation factor was derived from this point
    ("bf16 16k ckpt", mem.Levers(precision="bf16", gradient_checkpointing=True, hold_logits=False), "28", 15.6),
])
def test_gpu_anchors_within_15_percent(label, levers, which, measured_gib):
    shapes = [(1, 1024, 256)] if which == "bs1" else _anchor_token_budget_batches()[:28]
    predicted = _anchor_peak_gib(levers, shapes)
    assert abs(predicted / measured_gib - 1) <= 0.15, f"{label}: predicted {predicted:.2f} GiB, measured {measured_gib} GiB"


def test_anchor_batches_follow_the_script():
    shapes = _anchor_token_budget_batches()
    assert len(shapes) == 165
    assert all(b * s <= 16384 or b == 1 for b, s, _ in shapes)
    # the budget ignores targets: the worst of the 28 run batches is short sources with many summaries
    assert max(shapes[:28], key=lambda x: x[0] * x[2]) == (55, 296, 223)


def test_bart_large_gradients_and_adamw_states_are_textbook_sizes():
    plan = mem.plan_memory(_large("train.precision=bf16", "train.max_tokens=4096", "train.batch_tokens=16384"), "A100-80")
    n = plan.trainable_params
    assert n == plan.params == mem.model_spec(_large()).params() and 406e6 < n < 407e6
    assert plan.weights == pytest.approx(4 * n, rel=0.001)  # fp32 master weights (+ final_logits_bias)
    assert plan.gradients_total == 4 * n  # fp32 gradients
    assert plan.optimizer == 8 * n  # AdamW: exp_avg + exp_avg_sq in fp32
    # with accumulation (4 micro-batches) every gradient is live while later micro-batches run
    assert plan.workload.accumulation == 4 and plan.gradients == 4 * n
    parts = dict((k, v) for k, v, _ in plan.breakdown())
    assert parts["gradients"] / mem.GiB == pytest.approx(1.51, abs=0.01)
    assert parts["fixed overhead"] >= 0.5 * mem.GiB  # CUDA context is real memory
    assert abs(sum(parts.values()) - plan.peak) < 1e6
