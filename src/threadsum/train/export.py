"""The trained model as one Hugging Face folder, ``<output_dir>/model/``: safetensors weights,
tokenizer, generation config, the resolved threadsum ``config.yaml`` and a README.md model card.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from threadsum.config import Config
from threadsum.errors import DivergedError
from threadsum.train.distributed import model_is_sharded

MODEL_DIR = "model"


def consolidated_model(accelerator, model, cfg: Config, tokenizer):
    """The model to export as one Hugging Face folder: returned on rank 0, None on the others.

    DDP/plain: the unwrapped model. FSDP: all ranks gather the full state dict (to CPU, on rank 0
    only) and rank 0 loads it into a fresh copy of the model, which ``save_pretrained`` can write.
    Every rank must call it. Raises RuntimeError when the gathered weights do not fit the model.
    """
    if not model_is_sharded(accelerator.unwrap_model(model)):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    from threadsum.model import load_model, prepare_for_training

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    fresh = prepare_for_training(load_model(cfg, tokenizer), cfg.model)
    missing, unexpected = fresh.load_state_dict(full, strict=False)
    # tied copies of the shared embedding may be listed under one name only; anything else is a bug
    real_missing = [k for k in missing if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"consolidating FSDP weights failed: missing {real_missing[:3]}, unexpected {unexpected[:3]}")
    return fresh


def check_finite_weights(model) -> None:
    """Raise :class:`DivergedError` (exit 4) naming how many of the model's weight tensors hold NaN or
    inf: such a model generates garbage (often empty summaries) and is never written."""
    import torch

    tensors = model.state_dict()
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DivergedError(f"{len(bad)} of {len(tensors)} weight tensors hold NaN or inf (e.g. {bad[0]}); "
                            f"model/ is not written: training diverged, lower train.lr and train again")


def export_model(model, tokenizer, cfg: Config, out_dir: Path, summary: dict[str, Any], data_counts: dict[str, Any]) -> Path:
    """Write ``out_dir/model/`` atomically (a temporary folder renamed into place): weights
    (safetensors; LoRA merged or the adapter per ``model.lora.merge_on_export``), tokenizer, generation
    config (threadsum.generation), config.yaml and README.md (``summary``: the run summary,
    ``data_counts``: threads per split). Returns the folder. Raises :class:`DivergedError` when a
    weight tensor holds NaN or inf (nothing is written then)."""
    from threadsum.generation import build_generation_config
    from threadsum.model import finalize_model_folder
    from threadsum.train.modelcard import write_model_card

    final = out_dir / MODEL_DIR
    tmp = out_dir / f".tmp-{MODEL_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.model.lora.enabled and cfg.model.lora.merge_on_export:
        model = model.merge_and_unload()
    check_finite_weights(model)
    base_config = getattr(model, "config", None)
    if base_config is not None:
        base_config.use_cache = True  # training turned the KV cache off; generation wants it
    gen_cfg = build_generation_config(cfg.eval.generation, model)
    model.generation_config = gen_cfg
    model.save_pretrained(str(tmp))
    gen_cfg.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    cfg.save(tmp)
    write_model_card(tmp, cfg, summary, data_counts)
    finalize_model_folder(tmp, model)  # loadable by transformers 4.46+ and 5.x, world-readable files
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
