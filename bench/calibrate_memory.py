"""Measure the real peak memory of one training step on CPU, to calibrate ``threadsum.train.memory``.

Each point runs in a fresh Python process (so earlier points cannot leave memory behind):

1. import torch/transformers, build the input batch, record the resident set size (RSS);
2. build a random-init BART, apply the model levers (checkpointing, LoRA) with the project's own
   ``prepare_for_training`` and the optimizer with the training loop's ``build_optimizer``;
3. run one small warm-up step so the optimizer state exists (the steady state of a real run);
4. reset the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) and run one full step
   (autocast forward, label-smoothed cross-entropy, backward, grad clipping, optimizer step);
5. peak = VmHWM; the measured number is ``peak - RSS before the model existed``.

    python bench/calibrate_memory.py                 # the whole matrix -> tests/data/memory_calibration.json
    python bench/calibrate_memory.py --limit 3       # first 3 points only, printed
    python bench/calibrate_memory.py --point '{"d_model": 256, ...}'   # one point, JSON on stdout
    python bench/calibrate_memory.py --family causal # measure only the causal points (others kept)

Causal points (``"family": "causal"``) build a random-init ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
and run the step the trainer runs for a decoder-only model: prompt + completion as one padded
sequence, the inner model's last hidden state, ``threadsum.train.loss.chunked_lm_loss`` over the
labelled (completion) rows only, backward, grad clipping, AdamW; LoRA on the causal targets
(q/k/v/o, gate/up/down) with peft's CAUSAL_LM task.

The matrix takes about 10-20 s per point on a 2-core machine (mostly interpreter start-up).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "memory_calibration.json"

# the architectures measured; "s" is fast, "m" has weights large enough to matter next to activations
MODELS = {
    "s": dict(d_model=256, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=1024, vocab_size=8000),
    "m": dict(d_model=384, encoder_layers=3, decoder_layers=3, attention_heads=6, ffn_dim=1536, vocab_size=16000),
}


# causal shapes (hidden, layers, heads, kv heads, SwiGLU width, vocab): 5-25M params
CAUSAL_MODELS = {
    "cs": dict(architecture="llama", d_model=256, layers=4, attention_heads=4, kv_heads=2, ffn_dim=688, vocab_size=8000),
    "cm": dict(architecture="qwen2", d_model=512, layers=6, attention_heads=8, kv_heads=2, ffn_dim=1408, vocab_size=16000),
    "cl": dict(architecture="llama", d_model=384, layers=8, attention_heads=6, kv_heads=2, ffn_dim=1024, vocab_size=32000),
}


def causal_matrix() -> list[dict]:
    base = dict(family="causal", model="cm", precision="fp32", optimizer="adamw", lora=False, checkpointing=False,
                batch=2, src_len=384, tgt_len=128, chunk=1024, train_on_prompt=False)
    points = [
        base | dict(model="cs", batch=4, src_len=224, tgt_len=32),
        base,
        base | dict(batch=1, src_len=1024, tgt_len=128),  # one sequence: no padding mask, native GQA
        base | dict(lora=True),
        base | dict(checkpointing=True, src_len=1024, tgt_len=128),
        base | dict(model="cl", src_len=448, tgt_len=64),
        base | dict(model="cl", lora=True, checkpointing=True, batch=4, src_len=224, tgt_len=32),
        base | dict(train_on_prompt=True),
        base | dict(precision="bf16"),
    ]
    for p in points:
        p.update(CAUSAL_MODELS[p["model"]])
    return points


def matrix() -> list[dict]:
    base = dict(model="m", optimizer="adamw", lora=False, checkpointing=False, dropout=0.1, attention_dropout=0.0,
                batch=2, src_len=256, tgt_len=64)
    points = []
    # every lever combination with AdamW on the medium model at 640 tokens
    for prec, lora, ckpt in itertools.product(["fp32", "bf16"], [False, True], [False, True]):
        points.append(base | dict(precision=prec, lora=lora, checkpointing=ckpt))
    for prec in ["fp32", "bf16"]:
        points.append(base | dict(precision=prec, optimizer="adafactor"))  # Adafactor
        # pretrained-style dropout (attention + activation dropout, as in bart-base/large), one long thread
        points.append(base | dict(precision=prec, batch=1, src_len=512, tgt_len=128, attention_dropout=0.1))
        # a smaller model with a larger batch
        points.append(base | dict(model="s", precision=prec, batch=6))
    for p in points:
        p.update(MODELS[p["model"]])
    return points + causal_matrix()


# ------------------------------------------------------------------------------------ child
def _rss_kb() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _hwm_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed memory stays mapped, the measurement is a bit higher
        pass


def measure(point: dict) -> dict:
    """Measure one point in this process (see the module docstring); sizes in MB (2^20 bytes)."""
    if point.get("family") == "causal":
        return measure_causal(point)
    import contextlib

    import torch
    import torch.nn.functional as F

    from threadsum.config import Config
    from threadsum.model import build_random_model, prepare_for_training
    from threadsum.train.optim import build_optimizer

    cfg = Config.model_validate({
        "model": {
            "init": "random",
            "tiny": {k: point[k] for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim", "vocab_size")}
            | {"dropout": point["dropout"]},
            "gradient_checkpointing": point["checkpointing"],
            "lora": {"enabled": point["lora"]},
        },
        "train": {"optimizer": point["optimizer"], "precision": point["precision"]},
    })

    class _Vocab:  # build_random_model only needs the size and special ids of a tokenizer
        pad_token_id, bos_token_id, eos_token_id = 1, 0, 2

        def __len__(self) -> int:
            return point["vocab_size"]

    torch.manual_seed(0)
    V, B, S, T = point["vocab_size"], point["batch"], point["src_len"], point["tgt_len"]
    ids = torch.randint(5, V, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, S // 2:] = 0  # one padded row, as in real length-sorted batches
    labels = torch.randint(5, V, (B, T))
    dec_in = torch.cat([torch.full((B, 1), 2), labels[:, :-1]], dim=1)
    small = (ids[:1, :8], mask[:1, :8], labels[:1, :8], dec_in[:1, :8])
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if point["precision"] == "bf16" else contextlib.nullcontext

    # every library the step touches is imported before the baseline, so only the model is counted
    import peft  # noqa: F401
    import transformers.models.bart.modeling_bart  # noqa: F401
    import transformers.optimization  # noqa: F401

    _trim()
    rss0 = _rss_kb()
    model = build_random_model(cfg.model, _Vocab())
    if point.get("attention_dropout"):
        model.config.attention_dropout = point["attention_dropout"]
        model.config.activation_dropout = point["attention_dropout"]
        for mod in model.modules():  # the layers copied the values at construction
            if hasattr(mod, "dropout") and isinstance(mod.dropout, float) and mod.__class__.__name__.endswith("Attention"):
                mod.dropout = point["attention_dropout"]
            if hasattr(mod, "activation_dropout"):
                mod.activation_dropout = point["attention_dropout"]
    model = prepare_for_training(model, cfg.model)
    model.train()
    opt = build_optimizer(model, cfg.train, "cpu")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    def step(i, m, lab, d):
        with autocast():
            logits = model(input_ids=i, attention_mask=m, decoder_input_ids=d).logits
        loss = F.cross_entropy(logits.float().view(-1, V), lab.reshape(-1), label_smoothing=0.1, ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step(*small)  # the optimizer state now exists, as in every step of a real run but the first
    _trim()
    rss_static = _rss_kb()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    t0 = time.perf_counter()
    step(ids, mask, labels, dec_in)
    seconds = time.perf_counter() - t0
    peak = _hwm_kb()
    return {
        "params": total, "trainable_params": trainable,
        "rss_before_model_mb": rss0 / 1024, "rss_static_mb": rss_static / 1024, "peak_rss_mb": peak / 1024,
        "measured_mb": (peak - rss0) / 1024, "step_seconds": round(seconds, 2),
    }


def measure_causal(point: dict) -> dict:
    """One causal training step (see the module docstring), measured as :func:`measure` does."""
    import contextlib

    import torch
    import transformers

    from threadsum.config import TrainConfig
    from threadsum.train.loss import IGNORE_INDEX, chunked_lm_loss
    from threadsum.train.optim import build_optimizer

    torch.manual_seed(0)
    V, B, S, T = point["vocab_size"], point["batch"], point["src_len"], point["tgt_len"]
    L = S + T
    ids = torch.randint(5, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX)
    labels[:, S - 1:L - 1] = ids[:, S:]  # position t predicts token t + 1: the completion is labelled
    if point["train_on_prompt"]:
        labels[:, :L - 1] = ids[:, 1:]
    if B > 1:  # one padded row, as in real length-sorted batches
        mask[0, L - L // 4:] = 0
        labels[0, L - L // 4 - 1:] = IGNORE_INDEX
    small = (ids[:1, :16], mask[:1, :16], torch.where(torch.arange(16) >= 8, ids[:1, :16], IGNORE_INDEX))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if point["precision"] == "bf16" else contextlib.nullcontext
    arch = point["architecture"]
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    model_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[arch]
    config = config_cls(hidden_size=point["d_model"], num_hidden_layers=point["layers"],
                        num_attention_heads=point["attention_heads"], num_key_value_heads=point["kv_heads"],
                        intermediate_size=point["ffn_dim"], vocab_size=V, max_position_embeddings=2048,
                        tie_word_embeddings=True, attn_implementation="sdpa", use_cache=False)
    tc = TrainConfig(optimizer=point["optimizer"], precision=point["precision"])

    import peft  # noqa: F401  (every library the step touches is imported before the baseline)

    _trim()
    rss0 = _rss_kb()
    model = model_cls(config)
    if point["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if point["lora"]:
        from peft import LoraConfig, get_peft_model

        if point["checkpointing"]:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner, head = base.model, base.lm_head.weight
    opt = build_optimizer(model, tc, "cpu")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    def step(i, m, lab):
        with autocast():
            hidden = inner(input_ids=i, attention_mask=m).last_hidden_state
            keep = lab != IGNORE_INDEX  # the head meets the labelled rows only
            loss = chunked_lm_loss(hidden[keep], head, None, lab[keep], 0.1, point["chunk"])
        (loss / keep.sum()).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step(*small)
    _trim()
    rss_static = _rss_kb()
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    step(ids, mask, labels)
    seconds = time.perf_counter() - t0
    peak = _hwm_kb()
    return {
        "params": total, "trainable_params": trainable,
        "rss_before_model_mb": rss0 / 1024, "rss_static_mb": rss_static / 1024, "peak_rss_mb": peak / 1024,
        "measured_mb": (peak - rss0) / 1024, "step_seconds": round(seconds, 2),
    }


# ----------------------------------------------------------------------------------- parent
def run_point(point: dict, timeout: float = 600) -> dict:
    """Measure one point in a fresh interpreter and return the point with its measurement."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--point", json.dumps(point)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed for {point}:\n{proc.stderr[-3000:]}")
    return {**point, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", help="measure one point (JSON) in this process and print the result")
    ap.add_argument("--limit", type=int, default=0, help="measure only the first N points of the matrix and print them")
    ap.add_argument("--out", default=str(OUT), help="where the full matrix is written")
    ap.add_argument("--family", choices=["seq2seq", "causal"], help="measure only this family's points (the others are kept)")
    args = ap.parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return
    points = matrix()[: args.limit or None]
    out = Path(args.out)
    previous = json.loads(out.read_text()).get("points", []) if out.exists() and not args.limit else []

    def earlier(p: dict) -> Optional[dict]:  # resume: a point measured before (same settings)
        return next((r for r in previous if all(r.get(k) == v for k, v in p.items()) and r.get("family") == p.get("family")), None)

    results = []
    for n, p in enumerate(points, 1):
        wanted = args.family is None or p.get("family", "seq2seq") == args.family
        r = earlier(p) if (not wanted or not args.family) else None
        if r is None:
            if not wanted:
                continue
            r = run_point(p)
        results.append(r)
        if not args.limit:
            _write(out, results)
        print(f"[{n}/{len(points)}] {p.get('family', 'seq2seq')} {p['model']} {p['precision']} {p['optimizer']} lora={p['lora']} "
              f"ckpt={p['checkpointing']} B={p['batch']} {p['src_len']}+{p['tgt_len']}: {r['measured_mb']:.0f} MB "
              f"({r['step_seconds']} s)", flush=True)
    if not args.limit:
        _write(out, results)
        print(f"wrote {len(results)} points to {out}")


def _machine() -> str:
    """CPU model, core count, the bf16/VNNI/AMX flags of /proc/cpuinfo and the kernel."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    flags = set((re.search(r"flags\s*:\s*(.+)", info) or re.match("", "")).group(0).split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    return (f"{model.group(1).strip() if model else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"flags: {' '.join(wanted) or 'none of avx2/avx512/bf16/vnni/amx'}, Linux {platform.release()}")


def _write(out: Path, results: list[dict]) -> None:
    import torch
    import transformers

    doc = {
        "what": "peak RSS of one steady-state training step minus RSS before the model existed (MB = 2^20 bytes)",
        "command": "python bench/calibrate_memory.py",
        "machine": _machine(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "complete": len(results) == len(matrix()),
        "points": results,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
