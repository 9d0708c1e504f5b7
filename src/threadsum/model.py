"""Load models and tokenizers by hub id or local directory; build the random-init tiny model.

Everything goes through ``from_pretrained`` so the tiny demo model takes the same path as
``facebook/bart-large``: the tiny tokenizer is trained, saved in Hugging Face format and reloaded.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from threadsum.config import Config, ModelConfig
from threadsum.deps import require
from threadsum.errors import UserError
from threadsum.family import (  # noqa: F401 - model_positions is re-exported
    CAUSAL,
    CAUSAL_ARCHITECTURES,
    SEQ2SEQ,
    UNRESOLVED,
    Family,
    family_of,
    family_of_folder,
    get_family,
    model_positions,
)

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
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if _is_local(name):
        return ModelLoadError(
            f"could not load the {what} in folder '{name}' ({reason}). It must be a folder written by "
            f"save_pretrained (config.json, weights, tokenizer files) of a seq2seq or causal LM that "
            f"transformers knows; set model.family=seq2seq|causal if its config.json is ambiguous.")
    if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
        return ModelLoadError(
            f"{what} directory '{name}' does not exist. Point model.name_or_path at a folder written by "
            f"save_pretrained (it holds config.json and the weights), or at a hub id such as facebook/bart-large."
        )
    mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "without network access to huggingface.co"
    short = name.split('/')[-1]
    return ModelLoadError(
        f"could not load {what} '{name}': it is not in the local Hugging Face cache and this machine is {mode}.\n"
        f"Fix one of:\n"
        f"  - on a machine with network: `huggingface-cli download {name}` (fills ~/.cache/huggingface), "
        f"then copy that cache here or set HF_HOME to it;\n"
        f"  - or save a local copy there: `huggingface-cli download {name} --local-dir models/{short}` "
        f"and set model.name_or_path=models/{short};\n"
        f"  - or train from scratch with model.init=random (see configs/tiny.yaml or configs/tiny-causal.yaml).\n"
        f"(underlying error: {reason})"
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


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path,
                    max_positions: Optional[int] = None) -> "PreTrainedTokenizerBase":
    """Train a byte-level BPE (BART/RoBERTa style) on ``texts``, save it with :func:`save_tokenizer`, reload it.

    ``max_positions`` (tokens) becomes ``model_max_length`` (the positions of the model it is for).
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
    save_tokenizer(fast, out_dir, max_positions)
    return load_tokenizer(str(out_dir))


# ------------------------------------------------------------------ folders any transformers loads
# transformers 5 writes its generic fast tokenizer as "TokenizersBackend", a name 4.x does not know;
# 4.x and 5.x both load "PreTrainedTokenizerFast" (5.x keeps it as an alias) from tokenizer.json as is
_PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}
_TOKENIZER_CONFIG = "tokenizer_config.json"
# arguments of the from_pretrained call that loaded the tokenizer, which transformers 5 saves back
_LOADER_ARGUMENTS = ("is_local", "local_files_only", "_commit_hash")
_MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def save_tokenizer(tokenizer: "PreTrainedTokenizerBase", out_dir: str | Path, max_positions: Optional[int] = None,
                   model_input_names: Optional[list[str]] = None) -> Path:
    """Save ``tokenizer`` with ``save_pretrained`` so that transformers 4.46+ and 5.x both load it.

    ``tokenizer_config.json`` then names a class both versions know, lists the model's input names
    (4.x's generic class would otherwise also return ``token_type_ids``, which BART's ``generate``
    rejects) and, when ``max_positions`` (tokens) is given, sets ``model_max_length`` to it, so that a
    user's ``tokenizer(text, truncation=True)`` cuts to what the model accepts. Files get the mode a
    new file gets here (see :func:`normalize_file_modes`); loader arguments
    transformers 5 saves back (``local_files_only``...) are dropped. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    names = model_input_names or list(getattr(tokenizer, "model_input_names", []) or [])
    portable_tokenizer_config(out_dir, max_positions, names)
    normalize_file_modes(out_dir)
    return out_dir


def portable_tokenizer_config(folder: str | Path, max_positions: Optional[int], model_input_names: list[str]) -> None:
    """Rewrite ``folder/tokenizer_config.json`` (if any) as :func:`save_tokenizer` describes; idempotent."""
    path = Path(folder) / _TOKENIZER_CONFIG
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    cls = data.get("tokenizer_class")
    data["tokenizer_class"] = _PORTABLE_TOKENIZER_CLASS.get(cls, cls)
    for key in _LOADER_ARGUMENTS:
        data.pop(key, None)
    if model_input_names:
        data["model_input_names"] = list(model_input_names)
    if max_positions:
        data["model_max_length"] = int(max_positions)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _new_file_mode(folder: Path) -> int:
    """Permission bits ``open()`` gives a new file in ``folder`` (0o666 less the umask, or a default ACL)."""
    probe = folder / f".mode-probe-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def normalize_file_modes(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode a newly written file gets there: 0644 under the usual
    umask 022 (world-readable), 0640 under 027, and so on.

    safetensors (0.8) writes weights with mode 0600 whatever the umask, so other users and containers
    could not read ``model.safetensors`` while every other file was 0644.
    """
    folder = Path(folder)
    mode = _new_file_mode(folder)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


def finalize_model_folder(folder: str | Path, model) -> Path:
    """Make a saved model folder load with plain transformers 4.46+ and 5.x; call after all files are written.

    The tokenizer config names a portable class, ``model_max_length`` = the model's positions (tokens,
    :func:`model_positions`), ``model_input_names`` = the inputs ``model.forward`` takes, and every file
    gets the mode of a new file (``model.safetensors`` included). ``model`` is the saved model (or its
    config). Returns ``folder``.
    """
    folder = Path(folder)
    forward = getattr(model, "forward", None)
    params = inspect.signature(forward).parameters if forward is not None else {}
    names = [n for n in _MODEL_INPUTS if n in params]
    portable_tokenizer_config(folder, model_positions(model), names)
    normalize_file_modes(folder)
    return folder


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """Hex sha256 of what each token id means: the vocabulary (token -> id, added tokens included)
    and the special tokens' ids. Equal fingerprints mean ids from one tokenizer are valid for the other.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    specials = {name: tokenizer.convert_tokens_to_ids(tok)
                for name, tok in sorted(tokenizer.special_tokens_map.items()) if isinstance(tok, str)}
    blob = json.dumps({"vocab": vocab, "special_ids": specials}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokenizer_source(cfg: ModelConfig) -> Optional[str]:
    """Where the tokenizer comes from; None means 'train one on the training split'."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.init == "random":
        return None
    return cfg.name_or_path


def build_random_model(cfg: ModelConfig, tokenizer: "PreTrainedTokenizerBase") -> "PreTrainedModel":
    """Build a randomly initialised model from ``cfg.tiny``: BART, or a decoder-only Llama/Qwen2
    (:func:`build_random_causal_model`) for ``tiny.architecture`` llama/qwen2.

    BART: ``BartForConditionalGeneration``.
    The vocabulary is ``len(tokenizer)``; pad/bos/eos ids come from the tokenizer, and decoding
    starts with eos and forces bos first and eos last, as BART's pretrained configs do. Weights
    are drawn by transformers' init (normal, std ``tiny.init_std``); seed torch first for a
    reproducible model (:func:`load_model` does).

    Raises:
        MissingExtraError: transformers is not installed (``threadsum[train]``).
    """
    require("transformers", "train")
    from transformers import BartConfig, BartForConditionalGeneration

    if cfg.tiny.architecture != "bart":
        return build_random_causal_model(cfg, tokenizer)
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


def build_random_causal_model(cfg: ModelConfig, tokenizer: "PreTrainedTokenizerBase") -> "PreTrainedModel":
    """A randomly initialised ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` from ``cfg.tiny``.

    hidden = ``d_model``, layers = ``decoder_layers``, MLP width = ``ffn_dim``, grouped-query
    attention with ``kv_heads`` key/value heads (0: ``attention_heads``), tied input/output
    embeddings (as Qwen2.5-0.5B and Llama-3.2-1B), RoPE over ``max_position_embeddings``; pad and
    EOS ids from the tokenizer. Raises MissingExtraError without transformers.
    """
    require("transformers", "train")
    import transformers

    t = cfg.tiny
    cls_config, cls_model = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[t.architecture]
    config = getattr(transformers, cls_config)(
        vocab_size=len(tokenizer), hidden_size=t.d_model, intermediate_size=t.ffn_dim,
        num_hidden_layers=t.decoder_layers, num_attention_heads=t.attention_heads,
        num_key_value_heads=t.kv_heads or t.attention_heads, max_position_embeddings=t.max_position_embeddings,
        attention_dropout=t.dropout, initializer_range=t.init_std, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return getattr(transformers, cls_model)._from_config(config, **kwargs)


CHATML_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""The ChatML chat template (Qwen's format) given to trained causal tokenizers."""
CAUSAL_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
"""Special tokens of a trained causal tokenizer (ids 0..2): padding, turn start, turn end (= EOS)."""


def train_causal_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path,
                           max_positions: Optional[int] = None) -> "PreTrainedTokenizerBase":
    """Train a byte-level BPE for a decoder-only model (Qwen-style), save it, reload it.

    No special tokens are added to encoded text; ``<|im_end|>`` is EOS (it ends each chat turn),
    ``<|endoftext|>`` pads, and the tokenizer carries :data:`CHATML_TEMPLATE`. ``vocab_size`` and
    ``max_positions`` as in :func:`train_tokenizer`. Raises MissingExtraError without tokenizers.
    """
    require("tokenizers", "train")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=CAUSAL_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    save_tokenizer(fast, out_dir, max_positions)
    return load_tokenizer(str(out_dir))


def train_tokenizer_for(cfg: ModelConfig, texts: Iterable[str], out_dir: str | Path) -> "PreTrainedTokenizerBase":
    """The tokenizer a random-init model of ``cfg.tiny`` is trained with: BART's byte-level BPE
    (:func:`train_tokenizer`) or the causal one with a chat template (:func:`train_causal_tokenizer`)."""
    t = cfg.tiny
    train = train_tokenizer if t.architecture == "bart" else train_causal_tokenizer
    return train(texts, t.vocab_size, out_dir, max_positions=t.max_position_embeddings)


def load_model_config(name_or_path: str):
    """The model's ``transformers`` config (``AutoConfig``) by hub id or folder, without weights.

    Raises:
        ModelLoadError: not a folder with a config.json, or a hub id not cached while offline.
    """
    require("transformers", "train")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise _hub_failure(name_or_path, "model", exc) from exc


def load_pretrained_model(name_or_path: str, attn_implementation: Optional[str] = None, dtype=None,
                          family: Optional["Family"] = None) -> "PreTrainedModel":
    """Load a model with its family's auto class (``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``).

    Args:
        name_or_path: hub id (from the local cache when offline) or a folder written by
            ``save_pretrained``.
        attn_implementation: 'eager' or 'sdpa'; None: transformers' default.
        dtype: torch dtype of the weights; None: transformers' default.
        family: the model family; None: read from the model's config (:func:`threadsum.family.family_of`).

    Raises:
        MissingExtraError: transformers is not installed (``threadsum[train]``).
        ModelLoadError: loading fails with ``OSError``/``ValueError`` (missing folder, not cached
            while offline, not a model of that family); the message lists the fixes.
    """
    require("transformers", "train")
    import transformers

    if family is None:
        family = family_of_folder(name_or_path) if _is_local(name_or_path) else family_of(load_model_config(name_or_path))
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return getattr(transformers, family.auto_class).from_pretrained(name_or_path, **kwargs)
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
    if init_dir is None and m.init != "random" and not m.name_or_path:
        raise ModelLoadError("model.name_or_path is empty; set a hub id (facebook/bart-large) or a local directory")
    family = family_for(m)
    if init_dir is not None:
        model = load_pretrained_model(init_dir, m.attn_implementation, family=family)
    elif m.init == "random":
        import torch

        torch.manual_seed(cfg.train.seed)
        model = build_random_model(m, tokenizer)
    else:
        model = load_pretrained_model(m.name_or_path, m.attn_implementation, family=family)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    set_stop_tokens(model, family.source_tokenizer(tokenizer, cfg.data.prompt), family.pad_id(tokenizer))
    return model


def set_stop_tokens(model: "PreTrainedModel", source_tokenizer: Any, pad_id: int) -> None:
    """Make ``model.generation_config`` stop at the token that ends a completion.

    A causal model trained on a chat template ends its summary with the end-of-turn token
    (``<|im_end|>``), which a base model's generation config need not list; it is added to
    ``eos_token_id`` (a list), and ``pad_token_id`` is set when missing (Llama 3 has none). A
    seq2seq model's source tokenizer is the plain tokenizer: nothing changes.
    """
    end_id = getattr(source_tokenizer, "end_id", None)
    gc = getattr(model, "generation_config", None)
    if end_id is None or gc is None:
        return
    current = gc.eos_token_id if gc.eos_token_id is not None else model.config.eos_token_id
    ids = list(current) if isinstance(current, (list, tuple)) else ([current] if current is not None else [])
    if end_id not in ids:
        ids = [end_id] + ids
    gc.eos_token_id = ids if len(ids) > 1 else ids[0]
    if gc.pad_token_id is None:
        gc.pad_token_id = pad_id


def family_for(model_cfg: "ModelConfig") -> Family:
    """The family a run's ``model`` section means: ``model.family`` when set, else
    ``model.tiny.architecture`` for a random init, else the pretrained model's config (read with
    ``AutoConfig``; offline without a cached copy this raises the loader's actionable ModelLoadError)."""
    if model_cfg.family == "auto":
        return _family_of_model(model_cfg)
    chosen = get_family(model_cfg.family)
    try:
        found = _family_of_model(model_cfg, explicit=True)
    except ModelLoadError:  # a hub id not cached while offline: the explicit family stands
        return chosen
    if found is not None and found.name != chosen.name:
        what = (f"model.tiny.architecture={model_cfg.tiny.architecture}" if model_cfg.init == "random"
                else f"{model_cfg.name_or_path!r}")
        raise ModelLoadError(f"model.family={chosen.name} contradicts {what}, a {found.name} model; "
                             f"set model.family=auto (or {found.name})")
    return chosen


def _family_of_model(model_cfg: "ModelConfig", explicit: bool = False) -> Optional[Family]:
    """The family the model itself declares; with ``explicit``, None where it declares none (a
    folder with no model config), so an explicit ``model.family`` decides."""
    if model_cfg.init == "random":
        return CAUSAL if model_cfg.tiny.architecture in CAUSAL_ARCHITECTURES else SEQ2SEQ
    if not model_cfg.name_or_path:
        raise ModelLoadError("model.name_or_path is empty; set a hub id (facebook/bart-large) or a local directory")
    path = Path(model_cfg.name_or_path).expanduser()
    if path.is_dir():  # a folder without a transformers config.json (a tokenizer alone): seq2seq, as before
        found = family_of_folder(path, UNRESOLVED if explicit else None)
        return None if found is UNRESOLVED else found
    return family_of(load_model_config(model_cfg.name_or_path))


def prepare_for_training(model: "PreTrainedModel", cfg: ModelConfig) -> "PreTrainedModel":
    """Apply the memory/adaptation levers of the model section: checkpointing, frozen embeddings, LoRA.

    Gradient checkpointing runs non-reentrant and turns off the KV cache; with LoRA, peft wraps
    the model (``get_peft_model`` with the family's task and, unless ``lora.target_modules`` names
    them, its attention and MLP projections) and the returned object is the wrapper.
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

        family = family_of(model)
        lcfg = PeftLoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules or family.lora_targets),
            task_type=family.peft_task,
        )
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, lcfg)
    return model
