"""Evaluation during training: validation loss and validation ROUGE-L.

Decoding goes through :func:`threadsum.generation.generate_texts`, as ``evaluate`` and the
Summarizer do, so ``val_rougeL`` scores the summaries those would produce.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from threadsum.config import Config
from threadsum.train.batching import BatchFetcher


def validation_loss(model, fetch: BatchFetcher, batches: list[list[int]], device, autocast: Callable[[], Any],
                    chunk_tokens: int = 0) -> float:
    """Mean token cross-entropy in nats (no label smoothing) over ``batches`` (lists of row indices
    of the validation split), computed in ``autocast()`` by the training loss's own function
    (:func:`threadsum.train.loss.lm_loss_sum`, chunked head with ``chunk_tokens`` > 0); the model is
    back in train mode after."""
    import torch

    from threadsum.train.loss import lm_loss_sum

    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for indices in batches:
            b = fetch(indices)
            inputs = {k: b[k].to(device) for k in fetch.family.model_inputs}
            with autocast():
                total += lm_loss_sum(model, inputs, b["labels"].to(device), 0.0, chunk_tokens).item()
            n += b["n_label_tokens"]
    model.train()
    return total / max(1, n)


def validation_summaries(model, tokenizer, ds, n: int, cfg: Config, device) -> tuple[list[str], list[str]]:
    """(generated summaries, reference summaries) for the first ``n`` rows of the tokenized split
    ``ds``, decoded per ``cfg.eval.generation`` by :func:`threadsum.generation.generate_texts` (as
    ``evaluate`` and the Summarizer do); the model is back in train mode after."""
    from threadsum.generation import decode, generate_texts

    rows = ds[list(range(min(n, len(ds))))]
    model.eval()
    preds = generate_texts(model, tokenizer, rows["input_ids"], cfg.eval.generation, device)
    model.train()
    return preds, decode(tokenizer, rows["labels"])


def validation_rouge(model, tokenizer, ds, n: int, cfg: Config, device) -> float:
    """ROUGE-L F1 (x100) of :func:`validation_summaries` against the references (bounded cost: ``n``
    threads). Raises MissingExtraError without rouge_score."""
    from threadsum.deps import require

    require("rouge_score", "train")
    from rouge_score import rouge_scorer

    preds, refs = validation_summaries(model, tokenizer, ds, n, cfg, device)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, preds)]
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


@dataclass
class Validator:
    """Validation of a run: loss over ``batches`` of the validation split ``ds`` and, with
    ``train.eval_rouge_samples`` > 0, ROUGE-L of that many generated summaries."""

    ds: Any
    fetch: BatchFetcher
    batches: list[list[int]]
    tokenizer: Any
    cfg: Config
    device: Any
    autocast: Callable[[], Any]
    chunk_tokens: int = 0
    """The run's chunked-head setting (:func:`threadsum.train.loss.loss_chunk_tokens`); 0: full logits."""

    def __call__(self, model, unwrapped_model, step: int) -> dict[str, Any]:
        """Metrics record ``{step, val_loss[, val_rougeL], eval_seconds}``; ``unwrapped_model`` is the
        plain Hugging Face model (generation cannot run through DDP/FSDP wrappers)."""
        t0 = time.perf_counter()
        m: dict[str, Any] = {"step": step}
        m["val_loss"] = validation_loss(model, self.fetch, self.batches, self.device, self.autocast,
                                        self.chunk_tokens)
        samples = self.cfg.train.eval_rouge_samples
        if samples:
            m["val_rougeL"] = validation_rouge(unwrapped_model, self.tokenizer, self.ds, samples, self.cfg, self.device)
        m["eval_seconds"] = time.perf_counter() - t0
        return m
