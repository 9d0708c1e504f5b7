"""`threadsum export`: convert a model folder for a faster engine (CTranslate2).

    threadsum export outputs/run/model --format ctranslate2 --quantization int8 --out outputs/run/model-int8

The output is itself a threadsum model folder: CTranslate2 weights (``model.bin``, its ``config.json``
and vocabulary), the tokenizer, ``generation_config.json`` (the start and forced token ids), the
threadsum ``config.yaml`` (cleaning, rendering and decoding settings), the model card when there is
one, and ``threadsum-export.json`` (format, quantization, source positions, vocabulary size). So
``summarize -m DIR``, ``serve -m DIR`` and ``evaluate --model DIR`` run it with the ctranslate2 engine.

Seq2seq and decoder-only (causal) folders both export; the manifest's ``family`` tells the engine to
run a ``ctranslate2.Translator`` or a ``ctranslate2.Generator``. A LoRA run saved as an adapter
(``adapter_config.json``) is merged into its base model first, by its family's peft class. The
user's folder is never written to: CTranslate2's converter reads ``config.normalize_before``, which
transformers v5's ``BartConfig`` no longer has, so it is set on the loaded config object only
(False: BART normalizes after each sublayer).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from threadsum.deps import require
from threadsum.errors import UserError
from threadsum.inference.engine import (
    CT2_WEIGHTS,
    EXPORT_MANIFEST,
    QUANTIZATIONS,
    is_ctranslate2_dir,
)

FORMATS = ("ctranslate2",)
"""Formats ``threadsum export --format`` writes."""

ADAPTER_CONFIG = "adapter_config.json"
"""peft's adapter file: the folder holds LoRA weights, not a full model."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
"""Any of these means a saved Hugging Face tokenizer (the converted folder needs one)."""


class ExportError(UserError):
    """The model folder cannot be exported as asked; the message says what to change."""


def _check(model_dir: Path, out_dir: Path, fmt: str, quantization: str, force: bool) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format '{fmt}' is not supported; use {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization '{quantization}' is not supported; use one of {', '.join(QUANTIZATIONS)}")
    require("ctranslate2", "fast")
    if not model_dir.is_dir():
        raise ExportError(f"model folder '{model_dir}' does not exist; pass a folder written by `threadsum train` "
                          f"(or any save_pretrained seq2seq or causal model)")
    if is_ctranslate2_dir(model_dir):
        raise ExportError(f"{model_dir} is already a CTranslate2 folder; export the folder it was made from")
    if not (model_dir / "config.json").is_file() and not (model_dir / ADAPTER_CONFIG).is_file():
        raise ExportError(f"{model_dir} holds neither config.json nor {ADAPTER_CONFIG}: it is not a saved model")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise ExportError(f"{model_dir} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                          f"beside the model (tokenizer.save_pretrained) and export again")
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve() in out_dir.resolve().parents:
        raise ExportError(f"--out {out_dir} is inside the model folder; choose a folder outside it")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"--out {out_dir} exists and is not empty; choose a new folder or pass --force to replace it")


def merge_adapter(model_dir: Path, into: Path) -> Path:
    """Merge a peft LoRA adapter folder into its base model; save the full model and tokenizer in ``into``.

    The adapter is loaded by its family's peft class (:attr:`threadsum.family.Family.peft_auto_class`,
    from the adapter's ``task_type``): ``AutoPeftModelForSeq2SeqLM`` or ``AutoPeftModelForCausalLM``.
    The adapter folder's ``generation_config.json`` (a causal run's end-of-turn token among its end
    tokens), else the base model's, is saved with it.

    Raises:
        ExportError: the adapter's base model cannot be loaded (its ``base_model_name_or_path``).
    """
    require("peft", "train")
    import peft

    from threadsum.family import family_of_folder
    from threadsum.model import load_tokenizer

    auto_class = getattr(peft, family_of_folder(model_dir).peft_auto_class)
    try:
        model = auto_class.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        base = json.loads((model_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        raise ExportError(f"cannot load the base model '{base}' of the adapter in {model_dir}: {exc}") from None
    merged = model.merge_and_unload()
    merged.save_pretrained(str(into))
    if (model_dir / "generation_config.json").is_file():
        shutil.copy2(model_dir / "generation_config.json", into / "generation_config.json")
    load_tokenizer(str(model_dir)).save_pretrained(str(into))
    return into


def convert_ctranslate2(source: Path, out_dir: Path, quantization: str) -> Any:
    """Run CTranslate2's Transformers converter on ``source``; returns the Hugging Face model it loaded.

    ``normalize_before`` (absent from transformers v5's ``BartConfig``) is set to False on the loaded
    config object, through the converter's ``load_model`` hook, so no file is changed.
    """
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        loaded: Any = None

        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if type(model.config).__name__ == "BartConfig" and not hasattr(model.config, "normalize_before"):
                model.config.normalize_before = False
            self.loaded = model
            return model

    converter = _Converter(str(source))
    converter.convert(str(out_dir), quantization=quantization, force=True)
    _fill_special_tokens(out_dir / "config.json", source)
    return converter.loaded


def _fill_special_tokens(ct2_config: Path, source: Path) -> None:
    """CTranslate2 refuses to load a model whose ``bos_token`` is null, which its Llama loader writes
    for tokenizers without BOS (ChatML ones, Llama-style tokenizers trained without it): the pad token
    stands in, as CTranslate2's own Qwen2 loader does. It is never generated: decoding starts from the
    prompt's tokens."""
    if not ct2_config.is_file():  # pragma: no cover - the converter's contract
        return
    data = json.loads(ct2_config.read_text())
    if data.get("bos_token") is not None:
        return
    from threadsum.model import load_tokenizer

    tok = load_tokenizer(str(source))
    data["bos_token"] = tok.pad_token if tok.pad_token is not None else tok.eos_token
    ct2_config.write_text(json.dumps(data, indent=2) + "\n")


def export_model(model_dir: str, out_dir: str, fmt: str = "ctranslate2", quantization: str = "int8",
                 force: bool = False) -> Path:
    """Write ``out_dir``: a threadsum model folder in ``fmt`` (see the module docstring).

    Args:
        quantization: CTranslate2 weight type; int8 for CPUs, float16 or int8_float16 for GPUs.
        force: replace a non-empty ``out_dir``.
    Raises:
        ExportError: bad format/quantization/folders (exit 2).
        MissingExtraError: ctranslate2 is not installed: ``pip install 'threadsum[fast]'`` (exit 2).
    """
    src, out = Path(model_dir), Path(out_dir)
    _check(src, out, fmt, quantization, force)
    require("transformers", "train")
    from threadsum.generation import build_generation_config
    from threadsum.inference.summarizer import load_saved_config
    from threadsum.model import load_tokenizer

    cfg = load_saved_config(str(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as work:
        source = merge_adapter(src, Path(work) / "merged") if (src / ADAPTER_CONFIG).is_file() else src
        tmp = Path(work) / "out"
        model = convert_ctranslate2(source, tmp, quantization)
        load_tokenizer(str(source)).save_pretrained(str(tmp))
        build_generation_config(cfg.eval.generation, model).save_pretrained(str(tmp))
        cfg.save(tmp)
        if (src / "README.md").is_file():
            shutil.copy2(src / "README.md", tmp / "README.md")
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(_manifest(src, model, quantization), indent=2) + "\n")
        if not (tmp / CT2_WEIGHTS).is_file():  # pragma: no cover - the converter's contract
            raise ExportError(f"the converter wrote no {CT2_WEIGHTS} in {tmp}")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    return out


def _manifest(src: Path, model: Any, quantization: str) -> dict[str, Any]:
    """What the engine needs besides CTranslate2's files: the family (which CTranslate2 class runs
    it), the model's positions (a causal model's whole context: prompt and summary share it) and
    the vocabulary size (every token id must be below it)."""
    import ctranslate2

    from threadsum.family import family_of, model_positions

    return {
        "format": "ctranslate2",
        "family": family_of(model).name,
        "ct2_class": family_of(model).ct2_class,
        "quantization": quantization,
        "source": str(src.resolve()),
        "merged_adapter": (src / ADAPTER_CONFIG).is_file(),
        "max_source_positions": model_positions(model.config),
        "vocab_size": int(model.config.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "ctranslate2": ctranslate2.__version__,
    }


def export_command(model_dir: str, out_dir: str, fmt: str, quantization: str, force: bool = False) -> Path:
    """`threadsum export`: convert, then print where the folder is and how to use it."""
    from rich.console import Console

    out = export_model(model_dir, out_dir, fmt, quantization, force)
    Console().print(f"exported {model_dir} -> {out} ({fmt}, {quantization}); use it with "
                    f"`threadsum summarize -m {out} FILE`, `threadsum serve -m {out}` or `threadsum evaluate --model {out}`")
    return out
