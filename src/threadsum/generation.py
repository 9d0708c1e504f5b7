"""Decoding: the one place that turns ``eval.generation`` settings into how summaries are generated.

Validation ROUGE during training, ``threadsum evaluate``, the :class:`~threadsum.inference.Summarizer`
(CLI and HTTP service) and the ``generation_config.json`` of an exported model all go through
:func:`build_generation_config` and :func:`generate_batches`, so the same thread gets the same summary
everywhere for the same settings (a test holds this). Adding a decoding option is one edit in
:func:`decoding_settings`.

Rules (and why):

- ``min_new_tokens`` is capped at ``max_new_tokens``: a floor above the ceiling is unsatisfiable
  and ``generate`` would raise mid-run.
- ``early_stopping`` is on for beam search: a beam stops when ``num_beams`` finished candidates
  exist (Hugging Face's meaning), as BART's summarization checkpoints do.
- The model's own ``min_length``/``max_length`` are reset so that only the token counts above
  bound the summary (BART-CNN ships ``min_length=56``, which would otherwise apply as well).
- Greedy or beam search, never sampling: summaries are reproducible.
- Inputs longer than the model's position table are cut to it (``max_position_embeddings``);
  padding is on the right with the tokenizer's pad id.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Optional, Sequence

from threadsum.config import GenerationConfig as DecodingConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import transformers


def decoding_settings(gen: DecodingConfig) -> dict[str, Any]:
    """The ``generate()`` settings for ``eval.generation`` (the rules in the module docstring).

    Returns a dict of Hugging Face ``GenerationConfig`` fields; lengths are in tokens.
    """
    beams = gen.num_beams > 1
    return {
        "num_beams": gen.num_beams,
        "do_sample": False,
        "length_penalty": gen.length_penalty,
        "early_stopping": beams,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        "min_new_tokens": min(gen.min_new_tokens, gen.max_new_tokens),
        "max_new_tokens": gen.max_new_tokens,
        "min_length": 0,
        # scores/logits of every step would be batch x beams x steps x vocab floats: never keep them
        "output_scores": False,
        "output_logits": False,
        "return_dict_in_generate": False,
    }


def build_generation_config(gen: DecodingConfig, model: Any = None) -> "transformers.GenerationConfig":
    """A ``transformers.GenerationConfig``: the model's own (token ids such as ``decoder_start_token_id``
    and ``forced_bos_token_id``) with threadsum's :func:`decoding_settings` on top.

    Args:
        gen: the ``eval.generation`` section.
        model: a Hugging Face model (its ``generation_config`` and ``config`` supply the special token
            ids); None starts from defaults.
    """
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    out = copy.deepcopy(base) if base is not None else GenerationConfig()
    model_config = getattr(model, "config", None)
    for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                "forced_bos_token_id", "forced_eos_token_id"):
        if getattr(out, key, None) is None and getattr(model_config, key, None) is not None:
            setattr(out, key, getattr(model_config, key))
    out.max_length = None
    out.update(**decoding_settings(gen))
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest input first (ties in input order), so each batch pads little.

    Padding is pure wasted compute and beam search multiplies it by ``num_beams``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-padded ``input_ids`` and ``attention_mask``, both int64 ``[batch, max_len]`` on the CPU."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids, mask


def source_limit(model: Any) -> Optional[int]:
    """Longest input the model can read, in tokens (``max_position_embeddings``), or None if unbounded."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


class GeneratedBatch(NamedTuple):
    """One length-sorted batch of generated summaries (unpacks as ``indices, texts, n_tokens``)."""

    indices: list[int]
    """Positions of these threads in the input sequence list."""
    texts: list[str]
    """Decoded summaries (special tokens removed, stripped), aligned with ``indices``."""
    n_tokens: list[int]
    """Generated tokens per summary, special tokens excluded."""


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Token ids ``[batch, len]`` -> summaries: special tokens dropped, no space clean-up, stripped."""
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True,
                                                        clean_up_tokenization_spaces=False)]


def generate_batches(model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                     device: "torch.device", batch_size: Optional[int] = None) -> Iterator[GeneratedBatch]:
    """Generate summaries for tokenized sources, one length-sorted batch at a time.

    Args:
        sequences: source token ids per thread (``[n_threads][src_len]``, lengths may differ).
        gen: decoding settings; ``gen.batch_size`` threads per batch unless ``batch_size`` is given.
        device: where the model lives; each batch's tensors are freed before the next one starts.
    Yields: :class:`GeneratedBatch` per batch; nothing but strings and ints leaves this function.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    config = build_generation_config(gen, model)
    limit = source_limit(model) or 1 << 30
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size or gen.batch_size):
        ids, mask = pad_batch([list(sequences[i])[:limit] for i in idx], pad)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            n_tokens = (~torch.isin(out, special)).sum(dim=1).tolist()
            out = out.cpu()
        texts = decode(tokenizer, out)
        del out, ids, mask
        yield GeneratedBatch(idx, texts, n_tokens)


def generate_texts(model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                   device: "torch.device", batch_size: Optional[int] = None) -> list[str]:
    """Summaries for ``sequences`` in input order (see :func:`generate_batches`)."""
    out: list[str] = [""] * len(sequences)
    for batch in generate_batches(model, tokenizer, sequences, gen, device, batch_size):
        for i, text in zip(batch.indices, batch.texts):
            out[i] = text
    return out
