"""The README.md model card written into every exported model folder."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from threadsum.config import Config
from threadsum.devices import hardware_description  # noqa: F401 - re-exported


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_model_card(model_dir: str | Path, cfg: Config, summary: dict[str, Any], data_counts: dict[str, Any]) -> Path:
    """Write ``model_dir/README.md``: base model, adaptation, data counts per split, training setup and
    the run's metrics (``summary``: the run summary of ``train``). Returns its path."""
    model_dir = Path(model_dir)
    base = "random init (" + ", ".join(f"{k}={v}" for k, v in cfg.model.tiny.model_dump().items()) + ")" \
        if cfg.model.init == "random" else str(cfg.model.name_or_path)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: summarization",
        "tags: [threadsum, email, summarization]",
        "---",
        f"# {cfg.name}: email-thread summarizer",
        "",
        "Fine-tuned with `threadsum train` to summarize email threads. Load it with "
        "`threadsum.inference.Summarizer.from_pretrained(<this folder>)`, which reads `config.yaml` here "
        "so threads are cleaned and rendered exactly as in training.",
        "",
        "## Model",
        f"- base: {base}",
        f"- adaptation: {'LoRA r=%d (%s)' % (cfg.model.lora.r, 'merged' if cfg.model.lora.merge_on_export else 'adapter only') if cfg.model.lora.enabled else 'full fine-tune'}",
        f"- parameters: {_fmt(summary.get('n_params'))} (trainable {_fmt(summary.get('n_trainable_params'))})",
        "",
        "## Data",
        f"- prepared folder: `{cfg.data.prepared_dir}` (source: `{cfg.data.source}`)",
        "- threads: " + ", ".join(f"{k} {v}" for k, v in data_counts.items()),
        f"- input budget {cfg.data.max_source_tokens} tokens, summary budget {cfg.data.max_target_tokens} tokens",
        "",
        "## Training",
        f"- hardware: {summary.get('hardware')}",
        f"- finished: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; training time "
        f"{_fmt(summary.get('train_seconds', 0) / 60)} min over {summary.get('steps')} optimizer steps",
        f"- precision {summary.get('precision')}, optimizer {cfg.train.optimizer}, peak lr {cfg.train.lr}, "
        f"{cfg.train.schedule} schedule, warmup {cfg.train.warmup_steps}, label smoothing {cfg.train.label_smoothing}",
        f"- micro-batch budget {cfg.train.max_tokens} tokens, {summary.get('accumulation')} micro-batches per step "
        f"(about {cfg.train.batch_tokens} tokens per step)",
        "",
        "## Metrics",
    ]
    for key in ("final_loss", "val_loss", "best_val_loss", "best_step", "val_rougeL", "real_tokens_per_s",
                "peak_mem_gb", "oom_events", "skipped_steps"):
        if summary.get(key) is not None:
            lines.append(f"- {key}: {_fmt(summary[key])}")
    lines += [
        "",
        "## Config",
        "The complete resolved configuration is `config.yaml` in this folder. Key settings:",
        "```json",
        json.dumps({"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")}, indent=1)[:4000],
        "```",
        "",
    ]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
