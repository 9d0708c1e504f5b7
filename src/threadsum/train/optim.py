"""Optimizers and learning-rate schedules of the training loop."""
from __future__ import annotations

import importlib.util
import math
from typing import Any

from threadsum.config import TrainConfig
from threadsum.errors import ConfigError, MissingExtraError


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and LayerNorm weights (1-d) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: Any, cfg: TrainConfig, device_type: str):
    """The optimizer ``train.optimizer`` names over the trainable parameters, peak lr ``train.lr``.

    ``device_type``: 'cuda', 'cpu' or 'mps'. Raises :class:`ConfigError` when the optimizer cannot run
    on this device (adamw8bit off CUDA) and :class:`MissingExtraError` when its package is missing.
    """
    import torch

    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        # the fused kernel does the whole update in one pass over the parameters (CUDA; CPU since torch 2.4)
        fused = device_type in ("cuda", "cpu")
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # factored second moments: optimizer state is O(rows + cols) per matrix instead of 2x the weights
        return Adafactor(groups, lr=cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if cfg.optimizer == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingExtraError(
                "train.optimizer=adamw8bit needs the 'bitsandbytes' package (CUDA only): "
                "pip install bitsandbytes, or set train.optimizer=adamw or adafactor"
            )
        if device_type != "cuda":
            raise ConfigError(f"train.optimizer=adamw8bit runs on CUDA GPUs only, this run is on {device_type}; "
                              f"set train.optimizer=adamw or adafactor")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    raise ConfigError(f"unknown train.optimizer '{cfg.optimizer}'; use adamw, adafactor or adamw8bit")


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak lr at optimizer step ``s`` (0-based): linear warmup, then decay to 0."""
    warmup = min(warmup_steps, max(0, total_steps - 1))

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (s - warmup) / max(1, total_steps - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def build_scheduler(optimizer: Any, cfg: TrainConfig, total_steps: int):
    """LambdaLR over ``total_steps`` optimizer steps: ``train.warmup_steps`` of linear warmup, then
    ``train.schedule`` (linear, cosine or constant); see :func:`lr_lambda`."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, total_steps))
