"""Load models and tokenizers by hub id or local directory; build the random-init tiny model.

Everything goes through ``from_pretrained`` so the tiny demo model takes the same path as
``facebook/bart-large``: the tiny tokenizer is trained, saved in Hugging Face format and reloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from threadsum.config import Config, ModelConfig
from threadsum.deps import require
from threadsum.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # BART's ids 0..4, in BART's order


class ModelLoadError(UserError):
    """A model or tokenizer could not be loaded; the message says how to fix it."""


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in {"1", "true", "yes"}


def _hub_failure(name: str, what: str, exc: Exception) -> ModelLoadError:
    if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
        return ModelLoadError(
            f"{what} directory '{name}' does not exist. Point model.name_or_path at a folder written by "
            f"save_pretrained (it holds config.json and the weights), or at a hub id such as facebook/bart-large."
        )
    mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "without network access to huggingface.co"
    return ModelLoadError(
        f"could not load {what} '{name}': it is not in the local Hugging Face cache and this machine is {mode}.\n"
        f"Fix one of:\n"
        f"  - on a machine with network: `huggingface-cli download {name}` (fills ~/.cache/huggingface), "
        f"then copy that cache here or set HF_HOME to it;\n"
        f"  - or save a local copy: `python -c \"from transformers import AutoModelForSeq2SeqLM as M, AutoTokenizer as T; "
        f"M.from_pretrained('{name}').save_pretrained('models/{name.split('/')[-1]}'); "
        f"T.from_pretrained('{name}').save_pretrained('models/{name.split('/')[-1]}')\"` "
        f"and set model.name_or_path=models/{name.split('/')[-1]};\n"
        f"  - or train from scratch with model.init=random (see configs/tiny.yaml).\n"
        f"(underlying error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def load_tokenizer(name_or_path: str) -> "PreTrainedTokenizerBase":
    """Load a tokenizer by hub id or directory with a clear message when it is not available.

    Raises:
        MissingExtraError: transformers is not installed (``threadsum[train]``).
        ModelLoadError: ``AutoTokenizer.from_pretrained`` fails (a missing folder, or a hub id not in
            the local cache while offline); the message lists the fixes.
    """
    require("transformers", "train")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise _hub_failure(name_or_path, "tokenizer", exc) from exc


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> "PreTrainedTokenizerBase":
    """Train a byte-level BPE (BART/RoBERTa style) on ``texts``, save it in HF format, reload it.

    A few MB of text trains in about a second; the reload proves the saved files are complete.

    Args:
        texts: training text (e.g. rendered threads and summaries of the training split).
        vocab_size: target vocabulary size in tokens, the 5 special tokens included (``<s>``,
            ``<pad>``, ``</s>``, ``<unk>``, ``<mask>`` get BART's ids 0..4); merges need a pair seen
            at least twice, so a small corpus may give fewer tokens.
        out_dir: folder the tokenizer files are written to (created when missing).

    Raises:
        MissingExtraError: tokenizers is not installed (``threadsum[train]``).
    """
    require("tokenizers", "train")
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS)
    inner = bpe._tokenizer
    inner.post_processor = RobertaProcessing(("</s>", inner.token_to_id("</s>")), ("<s>", inner.token_to_id("<s>")))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        cls_token="<s>", sep_token="</s>",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return load_tokenizer(str(out_dir))


def tokenizer_source(cfg: ModelConfig) -> Optional[str]:
    """Where the tokenizer comes from; None means 'train one on the training split'."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.init == "random":
        return None
    return cfg.name_or_path


def build_random_model(cfg: ModelConfig, tokenizer: "PreTrainedTokenizerBase") -> "PreTrainedModel":
    """Build a randomly initialised ``BartForConditionalGeneration`` from ``cfg.tiny``.

    The vocabulary is ``len(tokenizer)``; pad/bos/eos ids come from the tokenizer, and decoding
    starts with eos and forces bos first and eos last, as BART's pretrained configs do. Weights
    are drawn by transformers' init (normal, std ``tiny.init_std``); seed torch first for a
    reproducible model (:func:`load_model` does).

    Raises:
        MissingExtraError: transformers is not installed (``threadsum[train]``).
    """
    require("transformers", "train")
    from transformers import BartConfig, BartForConditionalGeneration

    t = cfg.tiny
    bart_cfg = BartConfig(
        vocab_size=len(tokenizer),
        d_model=t.d_model,
        encoder_layers=t.encoder_layers,
        decoder_layers=t.decoder_layers,
        encoder_attention_heads=t.attention_heads,
        decoder_attention_heads=t.attention_heads,
        encoder_ffn_dim=t.ffn_dim,
        decoder_ffn_dim=t.ffn_dim,
        max_position_embeddings=t.max_position_embeddings,
        dropout=t.dropout,
        init_std=t.init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=tokenizer.bos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return BartForConditionalGeneration(bart_cfg, **kwargs) if not kwargs else BartForConditionalGeneration._from_config(bart_cfg, **kwargs)


def load_pretrained_model(name_or_path: str, attn_implementation: Optional[str] = None, dtype=None) -> "PreTrainedModel":
    """Load a seq2seq model with ``AutoModelForSeq2SeqLM.from_pretrained`` by hub id or local folder.

    Args:
        name_or_path: hub id (from the local cache when offline) or a folder written by
            ``save_pretrained``.
        attn_implementation: 'eager' or 'sdpa'; None: transformers' default.
        dtype: torch dtype of the weights; None: transformers' default.

    Raises:
        MissingExtraError: transformers is not installed (``threadsum[train]``).
        ModelLoadError: loading fails with ``OSError``/``ValueError`` (missing folder, not cached
            while offline); the message lists the fixes.
    """
    require("transformers", "train")
    from transformers import AutoModelForSeq2SeqLM

    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_failure(name_or_path, "model", exc) from exc


def load_model(cfg: Config, tokenizer: "PreTrainedTokenizerBase", init_dir: Optional[str] = None) -> "PreTrainedModel":
    """The model a run starts from: random init (seeded by train.seed) or pretrained weights.

    ``init_dir`` overrides where pretrained weights come from (e.g. a saved random init). The
    input embeddings are resized when the tokenizer has more tokens than the model.

    Raises:
        ModelLoadError: ``model.name_or_path`` is empty with ``init='pretrained'``, or loading fails.
        MissingExtraError: transformers is not installed (``threadsum[train]``).
    """
    m = cfg.model
    if init_dir is not None:
        model = load_pretrained_model(init_dir, m.attn_implementation)
    elif m.init == "random":
        import torch

        torch.manual_seed(cfg.train.seed)
        model = build_random_model(m, tokenizer)
    else:
        if not m.name_or_path:
            raise ModelLoadError("model.name_or_path is empty; set a hub id (facebook/bart-large) or a local directory")
        model = load_pretrained_model(m.name_or_path, m.attn_implementation)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def prepare_for_training(model: "PreTrainedModel", cfg: ModelConfig) -> "PreTrainedModel":
    """Apply the memory/adaptation levers of the model section: checkpointing, frozen embeddings, LoRA.

    Gradient checkpointing runs non-reentrant and turns off the KV cache; with LoRA, peft wraps
    the model (``get_peft_model``, task SEQ_2_SEQ_LM) and the returned object is the wrapper.
    Memory effects are what ``threadsum plan`` predicts (:mod:`threadsum.train.memory`).

    Raises:
        MissingExtraError: ``model.lora.enabled`` and peft is not installed (``threadsum[train]``).
    """
    if cfg.gradient_checkpointing:
        # the KV cache is useless during teacher-forced training and conflicts with recomputation
        model.config.use_cache = False
        # transformers v5 renames gradient_checkpointing_enable -> activation_checkpointing_enable
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.lora.enabled:
        require("peft", "train")
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lcfg = PeftLoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="SEQ_2_SEQ_LM",
        )
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, lcfg)
    return model
