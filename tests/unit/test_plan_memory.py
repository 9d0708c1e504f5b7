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


def _predict_seq2seq(p: dict) -> float:
    spec = mem.ModelSpec(
        name="calibration", d_model=p["d_model"], encoder_layers=p["encoder_layers"], decoder_layers=p["decoder_layers"],
        encoder_heads=p["attention_heads"], decoder_heads=p["attention_heads"], encoder_ffn=p["ffn_dim"],
        decoder_ffn=p["ffn_dim"], vocab_size=p["vocab_size"], dropout=p["dropout"],
        attention_dropout=p["attention_dropout"], activation_dropout=p["attention_dropout"],
    )
    lv = mem.Levers(precision=p["precision"], optimizer=p["optimizer"], gradient_checkpointing=p["checkpointing"], lora=p["lora"])
    plan = mem.estimate(spec, lv, mem.Workload(p["batch"], p["src_len"], p["tgt_len"]), mem.resolve_device("cpu:64"))
    return plan.peak / mem.MiB


def _labelled_per_row(p: dict) -> int:
    """Labelled positions per sequence of a measured causal batch (its padded first row loses some)."""
    B, S, L = p["batch"], p["src_len"], p["src_len"] + p["tgt_len"]
    first, per = (L - 1, L - 1) if p["train_on_prompt"] else (p["tgt_len"], p["tgt_len"])
    if B > 1:  # row 0 is padded from L - L // 4 on
        first = max(0, (L - L // 4 - 1) - (0 if p["train_on_prompt"] else S - 1))
    return round((first + (B - 1) * per) / B)


def _predict_causal(p: dict) -> float:
    """A causal point as bench/calibrate_memory.py measures it: one sequence of src + tgt tokens, the
    completion labelled (every position but the last with train_on_prompt), the chunked head."""
    spec = mem.ModelSpec(
        name="calibration", d_model=p["d_model"], encoder_layers=0, decoder_layers=p["layers"], encoder_heads=0,
        decoder_heads=p["attention_heads"], encoder_ffn=0, decoder_ffn=p["ffn_dim"], vocab_size=p["vocab_size"],
        dropout=0.0, family="causal", kv_heads=p["kv_heads"], qkv_bias=p["architecture"] == "qwen2",
    )
    seq = p["src_len"] + p["tgt_len"]
    lv = mem.Levers(precision=p["precision"], optimizer=p["optimizer"], gradient_checkpointing=p["checkpointing"],
                    lora=p["lora"], loss_chunk_tokens=p["chunk"])
    w = mem.Workload(p["batch"], p["src_len"], p["tgt_len"], seq_len=seq,
                     labelled_len=_labelled_per_row(p))
    return mem.estimate(spec, lv, w, mem.resolve_device("cpu:64")).peak / mem.MiB


def _predict(p: dict) -> float:
    return _predict_causal(p) if p.get("family") == "causal" else _predict_seq2seq(p)


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
            errors.append(f"{p.get('family', 'seq2seq')} {p['model']} {p['precision']} {p['optimizer']} lora={p['lora']} ckpt={p['checkpointing']} "
                          f"B={p['batch']} {p['src_len']}+{p['tgt_len']}: measured {p['measured_mb']:.0f} MB, "
                          f"predicted {pred:.0f} MB ({err:+.0%})")
    assert not errors, "\n".join(errors)
    # the causal family is calibrated too (the planner's causal peak within 15% of measured CPU points)
    assert sum(p.get("family") == "causal" for p in doc["points"]) >= 6


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


# ---- causal (decoder-only) models
def _causal(name="Qwen/Qwen2.5-0.5B-Instruct", *overrides: str):
    return load_config(None, [f"model.name_or_path={name}", "data.max_source_tokens=1024", "data.max_target_tokens=128",
                              *overrides])


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen3-0.6B",
                                  "Qwen/Qwen3-1.7B", "meta-llama/Llama-3.2-1B-Instruct",
                                  "HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct"])
def test_causal_param_count_matches_transformers(name):
    torch = pytest.importorskip("torch")
    import transformers

    spec = mem.model_spec(load_config(None, [f"model.name_or_path={name}"]))
    assert spec.family == "causal" and spec.encoder_layers == 0
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**mem.known_models()[name]))
    assert spec.params() == sum(p.numel() for p in model.parameters())


def test_causal_spec_from_models_yaml_alias_and_published_sizes():
    spec = mem.model_spec(load_config(None, ["model.name_or_path=Qwen/Qwen2.5-0.5B"]))  # alias of -Instruct
    assert (spec.family, spec.d_model, spec.decoder_layers, spec.kv_heads_, spec.head_dim_) == ("causal", 896, 24, 2, 64)
    assert spec.params() == 494_032_768 and spec.tied_embeddings and spec.qkv_bias
    llama = mem.model_spec(load_config(None, ["model.name_or_path=meta-llama/Llama-3.2-1B"]))
    assert llama.params() == 1_235_814_400
    qwen3 = mem.model_spec(load_config(None, ["model.name_or_path=Qwen/Qwen3-0.6B"]))
    assert qwen3.head_dim_ == 128 and qwen3.decoder_heads * qwen3.head_dim_ == 2048 != qwen3.d_model and qwen3.qk_norm


def test_causal_spec_from_local_config_and_tiny(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "mistral", "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 96, "vocab_size": 32000,
        "tie_word_embeddings": False, "max_position_embeddings": 4096}))
    spec = mem.model_spec(load_config(None, [f"model.name_or_path={tmp_path}"]))
    assert (spec.family, spec.decoder_layers, spec.kv_heads_, spec.head_dim_, spec.tied_embeddings) == ("causal", 6, 2, 96, False)
    q, kv = 8 * 96, 2 * 96
    layer = 2 * 512 * q + 2 * 512 * kv + 3 * 512 * 1536 + 2 * 512
    assert spec.params() == 2 * 32000 * 512 + 6 * layer + 512  # untied: embedding + lm_head
    with pytest.raises(mem.PlanError, match="model.family"):
        mem.model_spec(load_config(None, [f"model.name_or_path={tmp_path}", "model.family=seq2seq"]))
    tiny = mem.model_spec(load_config(None, ["model.init=random", "model.tiny.architecture=qwen2", "model.tiny.d_model=64",
                                             "model.tiny.decoder_layers=3", "model.tiny.attention_heads=4",
                                             "model.tiny.ffn_dim=128", "model.tiny.vocab_size=1000"]))
    assert (tiny.family, tiny.decoder_layers, tiny.kv_heads_, tiny.encoder_layers) == ("causal", 3, 4, 0)
    bart = mem.model_spec(load_config(None, ["model.init=random"]))
    assert bart.family == "seq2seq"


def test_causal_batch_costs_pad_of_prompt_plus_completion():
    cfg = _causal("Qwen/Qwen2.5-0.5B-Instruct", "data.max_source_tokens=1020", "data.max_target_tokens=130",
                  "train.pad_to_multiple_of=8", "train.max_tokens=4700")
    w = mem.workload_from_config(cfg)
    assert w.seq_len == 1152  # pad(1020 + 130), not pad(1020) + pad(130) = 1160
    assert w.batch == 4 and w.tokens == 4 * 1152 and w.labelled_tokens == 4 * 130
    bart = mem.workload_from_config(load_config(None, ["data.max_source_tokens=1020", "data.max_target_tokens=130",
                                                       "train.pad_to_multiple_of=8"]))
    assert bart.seq_len == 0 and bart.tokens == bart.batch * (1024 + 136)
    on_prompt = mem.workload_from_config(_causal("Qwen/Qwen2.5-0.5B-Instruct", "train.train_on_prompt=true"))
    assert on_prompt.labelled_tokens == on_prompt.tokens


def test_label_only_head_logits_are_far_below_full_logits():
    """Qwen2.5-0.5B (vocab 151,936), one thread of 1,024 prompt + 128 summary tokens."""
    cfg = _causal("Qwen/Qwen2.5-0.5B-Instruct", "train.max_tokens=1152")
    spec = mem.model_spec(cfg)
    w = mem.workload_from_config(cfg)
    one = mem.levers_from_config(cfg, mem.resolve_device("A10G"))
    ddp = mem.levers_from_config(cfg, mem.resolve_device("A10G"), ranks=2)
    assert one.loss_chunk_tokens == 1024 and ddp.loss_chunk_tokens == 0
    V, lp = 151_936, 2
    _, chunked_fwd, _ = mem._head_terms(spec, one, w.tokens, w.labelled_tokens, lp, selected=True)
    _, full_fwd, _ = mem._head_terms(spec, ddp, w.tokens, w.labelled_tokens, lp, selected=True)
    assert full_fwd >= 1152 * V * 4 * 2  # fp32 logits + log-softmax of every position
    # minus the kept head-input and head-weight gradients and one chunk's weight gradient before it is summed
    logits_chunked = chunked_fwd - (128 * 896 * 8 + (V * 896 + V) * 4 + V * 896 * 4)
    assert one.precision == "bf16"
    assert logits_chunked == 128 * V * (lp + 8)  # one chunk, only the 128 labelled rows: bf16 matmul, fp32 logits + log-softmax
    assert logits_chunked < full_fwd / 8
    # and in the whole plan: the one-process step is far smaller than the full-logits one
    plan_one = mem.estimate(spec, one, w, mem.resolve_device("A10G"))
    plan_full = mem.estimate(spec, mem.replace(one, loss_chunk_tokens=0), w, mem.resolve_device("A10G"))
    assert plan_full.peak - plan_one.peak > 1.0 * mem.GiB


def test_one_process_fsdp_strategy_keeps_the_chunked_loss():
    cfg = _causal("Qwen/Qwen2.5-0.5B-Instruct", "train.strategy=fsdp")
    assert mem.levers_from_config(cfg, mem.resolve_device("H100")).loss_chunk_tokens == cfg.train.loss_chunk_tokens
    assert mem.levers_from_config(cfg, mem.resolve_device("H100"), ranks=4).loss_chunk_tokens == 0


def test_kv_cache_of_generation():
    spec = mem.model_spec(_causal())
    # batch 1, greedy, 1,024 prompt + 128 new tokens, bf16: 24 layers x 2 x 2 kv heads x 64 x 1,152 x 2 B
    assert mem.kv_cache_bytes(spec, 1, 1, 1024, 128, 2) == 24 * 2 * 2 * 64 * 1152 * 2
    size, shape = mem.generation_kv_cache(_causal("Qwen/Qwen2.5-0.5B-Instruct", "eval.generation.batch_size=8",
                                                  "eval.generation.num_beams=4", "eval.dtype=bf16"), mem.resolve_device("A10G"))
    assert size == 8 * 4 * 24 * 2 * 2 * 64 * (1024 + 128) * 2 and "2 kv heads" in shape
    bart = mem.model_spec(_large())
    assert mem.kv_cache_bytes(bart, 1, 1, 1024, 128, 2) == 12 * 2 * 1024 * (1024 + 128) * 2  # self + cross attention


def test_causal_levers_lora_and_checkpointing():
    base = mem.plan_memory(_causal("Qwen/Qwen2.5-0.5B-Instruct", "train.precision=bf16"), "A10G")
    lora = mem.plan_memory(_causal("Qwen/Qwen2.5-0.5B-Instruct", "train.precision=bf16", "model.lora.enabled=true"), "A10G")
    ckpt = mem.plan_memory(_causal("Qwen/Qwen2.5-0.5B-Instruct", "train.precision=bf16", "model.gradient_checkpointing=true"), "A10G")
    assert lora.levers.lora_targets == mem.CausalFormulas.lora_targets
    # r16 on q/k/v/o + gate/up/down of 24 layers
    per_layer = 16 * ((896 + 896) + (896 + 128) * 2 + (896 + 896) + 2 * (896 + 4864) + (4864 + 896))
    assert lora.trainable_params == 24 * per_layer
    assert lora.optimizer < base.optimizer / 50 and ckpt.activations < base.activations
    assert abs(sum(b for _, b, _ in base.breakdown()) - base.peak) < 1e6
    overrides, plan = mem.auto_fit(_causal("Qwen/Qwen2.5-0.5B-Instruct", "train.max_tokens=16384"), "T4")
    assert plan.fits and plan.model.family == "causal"
