"""Peak memory of one training step on CPU: full fp32 logits vs the chunked, label-only LM head.

    python bench/bench_loss_memory.py [--shape bart-large|qwen2.5-0.5b|qwen2.5-0.5b-head] [--lora] [--chunk 1024] [--out FILE]

One optimizer-free step (forward + backward of ``threadsum.train.loss.lm_loss_sum``, the training
loss of both model families) on a batch collated by the family (``threadsum.family``), fp32, label
smoothing 0.1. Each mode runs in its own process so its peak RSS (``ru_maxrss``) is its own; the
model's weights and gradients are in both, only the loss path differs.

- ``bart-large``: random-init BART-large (vocabulary 50,265), batch 2 x (1,024 source + 256 target).
  Goal: the chunked path's peak <= 0.9x the full-logits path's.
- ``qwen2.5-0.5b``: random-init Qwen2 at Qwen2.5-0.5B's shape (24 layers, hidden 896, MLP 4,864,
  14 heads / 2 key-value heads, tied embeddings, vocabulary 151,936), batch 1 x (1,024 prompt +
  128 summary tokens, only the summary labelled). The full path computes logits for all 1,152
  positions, the label-only head for the 128 labelled ones. Goal: the step's peak (memory it adds
  above the model at rest) <= 0.5x the full-logits step's, loss and gradients equal. ``--lora``
  trains LoRA adapters (r=16 on the causal family's default targets, as configs/qwen2.5-0.5b-lora.yaml)
  instead of every weight: no [params] gradient in the step, so what is left is activations and the head.
- ``qwen2.5-0.5b-head``: the LM head and loss alone at that shape (final hidden states
  [1, 1,152, 896] and the tied [151,936, 896] embedding, both requiring gradients): the memory and
  time the label-only head saves, without the 24 layers' activations and gradients around it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("bart-large", "qwen2.5-0.5b", "qwen2.5-0.5b-head")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _model_and_batch(shape: str):
    import torch

    from threadsum.family import CAUSAL, SEQ2SEQ

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if shape == "bart-large":
        from transformers import BartConfig, BartForConditionalGeneration

        model = BartForConditionalGeneration(BartConfig(vocab_size=50265, dropout=0.1))
        src = torch.randint(4, 50265, (2, 1024), generator=g).tolist()
        tgt = torch.randint(4, 50265, (2, 256), generator=g).tolist()
        batch = SEQ2SEQ.collate(src, tgt, pad_id=1, pad=8, decoder_start_id=2)
        return model, SEQ2SEQ, batch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, attention_dropout=0.0)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa")
    prompt = torch.randint(4, 151000, (1, 1024), generator=g).tolist()
    summary = [x + [151645] for x in torch.randint(4, 151000, (1, 127), generator=g).tolist()]
    batch = CAUSAL.collate(prompt, summary, pad_id=151643, pad=8)
    return model, CAUSAL, batch


class _HeadOnly:
    """The LM head of Qwen2.5-0.5B's shape over fixed final hidden states (``qwen2.5-0.5b-head``)."""

    def __init__(self):
        import torch

        from threadsum.family import CAUSAL

        torch.manual_seed(0)  # the same head weights in both processes
        g = torch.Generator().manual_seed(2)
        self.config = type("C", (), {"model_type": "qwen2"})()
        self.hidden = torch.nn.Parameter(torch.randn(1, 1152, 896, generator=g))
        self.lm_head = torch.nn.Linear(896, 151936, bias=False)
        self.model = lambda **_: type("O", (), {"last_hidden_state": self.hidden})()
        prompt = torch.randint(4, 151000, (1, 1024), generator=g).tolist()
        summary = [x + [151645] for x in torch.randint(4, 151000, (1, 127), generator=g).tolist()]
        self.batch = CAUSAL.collate(prompt, summary, pad_id=151643, pad=8)

    def __call__(self, **_):
        return type("O", (), {"logits": self.lm_head(self.hidden)})()

    def parameters(self):
        return [self.hidden, self.lm_head.weight]

    def train(self):
        return self


def child(shape: str, chunk: int, lora: bool = False, checkpointing: bool = False) -> dict:
    import torch

    from threadsum.family import CAUSAL
    from threadsum.train.loss import lm_loss_sum

    if shape == "qwen2.5-0.5b-head":
        head = _HeadOnly()
        model, family, b = head, CAUSAL, head.batch
    else:
        model, family, b = _model_and_batch(shape)
        if lora or checkpointing:  # the trainer's own levers (threadsum.model.prepare_for_training)
            from threadsum.config import ModelConfig
            from threadsum.model import prepare_for_training

            model = prepare_for_training(model, ModelConfig(
                gradient_checkpointing=checkpointing,
                lora={"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.0}))
    model.train()
    base_rss = _rss_gb()
    inputs = {k: b[k] for k in family.model_inputs}
    t = time.perf_counter()
    loss = lm_loss_sum(model, inputs, b["labels"], 0.1, chunk)
    (loss / b["n_label_tokens"]).backward()
    seconds = time.perf_counter() - t
    peak = _rss_gb()
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)))
    return {"shape": shape, "chunk_tokens": chunk, "loss_sum": float(loss), "grad_norm": grad_norm,
            "seconds": round(seconds, 1), "rss_after_init_gb": round(base_rss, 2), "peak_rss_gb": round(peak, 2),
            "step_gb": round(peak - base_rss, 2), "labelled": int(b["n_label_tokens"]),
            "positions": int(b["labels"].numel()),
            "params": sum(p.numel() for p in model.parameters())}


def _head_report(full: dict, chunked: dict) -> tuple[str, str]:
    step_ratio = chunked["step_gb"] / max(full["step_gb"], 1e-9)
    what = ("The LM head and loss alone at Qwen2.5-0.5B's shape: final hidden states [1, 1,152, 896] and the "
            "tied [151,936, 896] embedding, both with gradients; 128 labelled of 1,152 positions; fp32.")
    verdict = (f"Head memory (peak minus rest) label-only / full: **{step_ratio:.2f}x**; time "
               f"{chunked['seconds']} s vs {full['seconds']} s. Loss equal to "
               f"{abs(chunked['loss_sum'] - full['loss_sum']) / abs(full['loss_sum']):.1e} (relative).")
    return what, verdict


def _row(r: dict) -> str:
    name = "full fp32 logits" if r["chunk_tokens"] == 0 else f"chunked, label-only, {r['chunk_tokens']} tokens"
    return (f"| {name} | {r['peak_rss_gb']:.2f} | {r['rss_after_init_gb']:.2f} | {r['step_gb']:.2f} | "
            f"{r['seconds']} | {r['loss_sum']:.4f} | {r['grad_norm']:.6f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, default="bart-large")
    ap.add_argument("--chunk", type=int, default=1024, help="train.loss_chunk_tokens of the chunked run")
    ap.add_argument("--out", default=None, help="results file (default bench/results_loss_memory[_SHAPE].md)")
    ap.add_argument("--lora", action="store_true", help="LoRA adapters instead of a full fine-tune")
    ap.add_argument("--checkpointing", action="store_true", help="model.gradient_checkpointing=true")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.shape, args.child, args.lora, args.checkpointing)), flush=True)
        return 0
    from threadsum.devices import hardware_description

    rows = []
    for chunk in (0, args.chunk):
        proc = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--child", str(chunk)]
                              + (["--lora"] if args.lora else []) + (["--checkpointing"] if args.checkpointing else []),
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[-1][7:]))
        print(rows[-1], flush=True)
    full, chunked = rows
    ratio = chunked["peak_rss_gb"] / full["peak_rss_gb"]
    step_ratio = chunked["step_gb"] / max(full["step_gb"], 1e-9)
    loss_rel = abs(chunked["loss_sum"] - full["loss_sum"]) / abs(full["loss_sum"])
    grad_rel = abs(chunked["grad_norm"] - full["grad_norm"]) / abs(full["grad_norm"])
    if args.shape == "qwen2.5-0.5b-head":
        what, verdict = _head_report(full, chunked)
    elif args.shape == "bart-large":
        what = ("Random-init BART-large (406M parameters, vocabulary 50,265), fp32, batch 2 x (1,024 + 256) tokens, "
                "label smoothing 0.1, forward + backward, each mode in its own process.")
        verdict = f"Peak ratio chunked / full: **{ratio:.2f}x** (goal <= 0.90x: {'met' if ratio <= 0.9 else 'missed'})."
    else:
        what = (("LoRA r=16 on q/k/v/o/gate/up/down_proj, " if args.lora else "")
                + ("gradient checkpointing, " if args.checkpointing else "")
                + f"random-init Qwen2 at Qwen2.5-0.5B's shape ({full['params'] / 1e6:.0f}M parameters, 24 layers, "
                f"vocabulary 151,936, tied embeddings), fp32, batch 1 x (1,024 prompt + 128 summary) tokens: "
                f"{full['labelled']} labelled of {full['positions']} positions; label smoothing 0.1, forward + "
                f"backward, each mode in its own process.")
        verdict = (f"Step memory (peak minus the model at rest) chunked / full: **{step_ratio:.2f}x** "
                   f"(goal <= 0.50x: {'met' if step_ratio <= 0.5 else 'missed'}); whole-process peak ratio "
                   f"{ratio:.2f}x (the weights, {full['rss_after_init_gb']:.1f} GB at rest, and their gradients "
                   f"when all are trained, are in both). Loss differs by {loss_rel:.1e} (relative), gradient norm by {grad_rel:.1e}.")
    lines = [
        f"## Peak memory of one step, {args.shape} shape, CPU: full fp32 logits vs chunked label-only head", "",
        f"Command: `python bench/bench_loss_memory.py --shape {args.shape} --chunk {args.chunk}"
        f"{' --lora' if args.lora else ''}{' --checkpointing' if args.checkpointing else ''}`", "",
        f"Machine: {hardware_description()}; load average at the end {os.getloadavg()[0]:.1f}.", what, "",
        "| loss path | peak RSS GB | RSS after model init GB | step GB (peak - init) | step seconds | loss sum | grad norm |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(_row(r) for r in rows), "", verdict, "",
    ]
    suffix = "" if args.shape == "bart-large" else "_" + args.shape.replace(".", "").replace("-head", "_head")
    suffix += ("_lora" if args.lora else "") + ("_ckpt" if args.checkpointing else "")
    out = Path(args.out or REPO / "bench" / f"results_loss_memory{suffix}.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
