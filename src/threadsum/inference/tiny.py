"""A tiny random-init summarizer folder for demos, service tests and serving benchmarks.

It takes the same path as a trained model: a byte-level BPE trained and saved in Hugging Face
format, a BART saved with ``save_pretrained``, and the threadsum ``config.yaml`` beside them. Its
summaries are gibberish (nothing was trained) but every shape, batch and code path is real.
Building one takes about a second on a CPU.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from threadsum.config import Config, config_from_dict

_WORDS = (
    "meeting contract gas power deal price schedule review draft agreement trading desk report "
    "please call tomorrow monday friday attached revised version comments legal approval team "
    "budget forecast invoice payment shipment delivery capacity pipeline storage volume counterparty "
    "credit risk exposure settlement confirm thanks regards question update status deadline"
).split()
_NAMES = ["Jones, Tana", "Kaminski, Vince", "Shackleton, Sara", "Taylor, Mark", "Dasovich, Jeff", "Mann, Kay"]


def sample_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Email-like lines to train the tiny tokenizer on (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 40)))
        out.append(
            f"Subject: {rng.choice(_WORDS)} {rng.choice(_WORDS)}\nFrom: {rng.choice(_NAMES)}\n"
            f"To: {rng.choice(_NAMES)}\nDate: 2001-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 10:2{rng.randint(0, 9)}:00\n"
            f"{words.capitalize()}.\n---\nThe email thread discusses the {rng.choice(_WORDS)}."
        )
    return out


def sample_thread(seed: int = 0, n_emails: int = 3, words: int = 60) -> dict:
    """A thread in the JSONL thread form, for requests in tests and benchmarks."""
    rng = random.Random(seed)
    emails = []
    for i in range(n_emails):
        body = " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."
        emails.append({
            "from": rng.choice(_NAMES),
            "to": [rng.choice(_NAMES)],
            "date": f"2001-05-{10 + i:02d} 09:{i:02d}:00",
            "subject": "Re: gas contract" if i else "gas contract",
            "body": body,
        })
    return {"thread_id": f"t{seed}", "subject": "gas contract", "emails": emails}


def varied_thread(seed: int) -> dict:
    """A thread shaped like real mail, in the JSONL thread form: 1-5 emails of 1-4 sentences of 3-30
    words each, so lengths (and so the batches' padded shapes) vary from one request to the next as
    they do in real traffic. Deterministic in ``seed``; the serving memory benchmark's requests."""
    rng = random.Random(seed)
    emails = []
    for i in range(rng.randint(1, 5)):
        sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30))).capitalize() + "."
                     for _ in range(rng.randint(1, 4))]
        emails.append({
            "from": rng.choice(_NAMES),
            "to": [rng.choice(_NAMES)],
            "date": f"2001-05-{10 + i:02d} 09:{rng.randint(0, 59):02d}:00",
            "subject": ("Re: " if i else "") + f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}",
            "body": " ".join(sentences),
        })
    return {"thread_id": f"v{seed}", "subject": emails[0]["subject"], "emails": emails}


def tiny_config(overrides: Optional[dict] = None) -> Config:
    """Config of the tiny model: small shapes, short greedy generation."""
    data = {
        "name": "tiny-serve",
        "data": {"max_source_tokens": 256, "max_target_tokens": 32},
        "model": {
            "init": "random",
            "name_or_path": None,
            "tiny": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2,
                     "ffn_dim": 128, "vocab_size": 600, "max_position_embeddings": 256, "dropout": 0.0},
        },
        "eval": {"generation": {"num_beams": 1, "min_new_tokens": 4, "max_new_tokens": 16,
                                "no_repeat_ngram_size": 0, "batch_size": 16}},
    }
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(data, origin="tiny_config")


def build_tiny_model_dir(out_dir: str | Path, overrides: Optional[dict] = None, seed: int = 0) -> Path:
    """Write a from_pretrained-loadable tiny summarizer folder (tokenizer, weights, config.yaml).

    ``overrides`` are dotted config keys (:func:`tiny_config`); ``{"model.tiny.architecture": "llama"}``
    (or ``qwen2``) writes a decoder-only model with a ChatML tokenizer, whose generation config stops
    at ``<|im_end|>``. Returns ``out_dir``.
    """
    import torch

    from threadsum.model import (
        CAUSAL_SPECIAL_TOKENS,
        SPECIAL_TOKENS,
        build_random_model,
        family_for,
        finalize_model_folder,
        set_stop_tokens,
        train_tokenizer_for,
    )

    cfg = tiny_config(overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer_for(cfg.model, sample_texts(seed=seed), out)
    torch.manual_seed(seed)
    model = build_random_model(cfg.model, tokenizer)
    # a decoder-only model stops at the chat template's end-of-turn token, as a trained one does
    family = family_for(cfg.model)
    set_stop_tokens(model, family.source_tokenizer(tokenizer, cfg.data.prompt), family.pad_id(tokenizer))
    # an untrained model picks single bytes as often as words, and lone bytes of multi-byte
    # characters decode to U+FFFD; steering it to merged tokens keeps its output readable text
    bias = getattr(model, "final_logits_bias", None)
    if bias is not None:
        first_merge = len(SPECIAL_TOKENS) + 256
        with torch.no_grad():
            bias[:, len(SPECIAL_TOKENS):first_merge] = -1e4
    elif family.prompt_in_output:  # no logits bias: zero rows of the tied head score 0, below the
        # best of the merged tokens' random scores, so neither lone bytes nor turn/pad tokens win
        keep = {tokenizer.eos_token_id}
        rows = [i for i in tokenizer.all_special_ids if i not in keep] + list(range(len(CAUSAL_SPECIAL_TOKENS),
                                                                                     len(CAUSAL_SPECIAL_TOKENS) + 256))
        with torch.no_grad():
            model.get_output_embeddings().weight[rows] = 0.0
    model.save_pretrained(str(out))
    cfg.save(out)
    finalize_model_folder(out, model)
    return out
