"""Refuse prepared data tokenized for another model: the one rule "the ids in data.prepared_dir mean
what the model's vocabulary says they mean", used by `train`, `evaluate` and `sagemaker launch`.

Two tokenizers match when their :func:`threadsum.model.tokenizer_fingerprint` (vocabulary and
special-token ids) is equal, so facebook/bart-base and facebook/bart-large (one vocabulary) match,
while a BPE trained by ``configs/tiny.yaml`` and BART's do not. A hub id equal to the one recorded in
``prepare.json`` is accepted without loading it (nothing to download before ``sagemaker launch``); a
local folder is always compared, since its files may have changed; a tokenizer that cannot be loaded
here (a hub id on an offline machine) is refused unless its name is the recorded one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from threadsum.config import Config
from threadsum.data.prepared import PreparedDataError, open_prepared
from threadsum.errors import UserError
from threadsum.model import (
    ModelLoadError,
    load_tokenizer,
    tokenizer_fingerprint,
    tokenizer_source,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


class TokenizerMismatchError(UserError):
    """The prepared data was tokenized with another tokenizer than the model's (exit 2)."""


def recorded_tokenizer(prepared_dir: str | Path) -> Optional[str]:
    """The tokenizer ``prepare`` recorded in prepare.json (a hub id, a folder, or "trained byte-level
    BPE, vocab N"), or None when the folder does not say."""
    try:
        info = json.loads((Path(prepared_dir) / "prepare.json").read_text(encoding="utf-8"))
        source = (info.get("tokenizer") or {}).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def _describe(prepared_dir: str | Path) -> str:
    source = recorded_tokenizer(prepared_dir)
    return f"'{source}'" if source else f"the tokenizer in {Path(prepared_dir) / 'tokenizer'}"


def _prepare_fix(prepared_dir: str | Path, model_tokenizer: str) -> str:
    return (f"Fix: prepare the data for this model into a new folder (`threadsum prepare -c <this config> "
            f"data.prepared_dir=<new folder>` tokenizes with {model_tokenizer}) and train on that, or point "
            f"data.prepared_dir at data already prepared for it")


def check_tokenizer_matches(prepared_dir: str | Path, tokenizer: "PreTrainedTokenizerBase", *,
                            model_tokenizer: Optional[str] = None, fix: Optional[str] = None) -> None:
    """Raise :class:`TokenizerMismatchError` unless the prepared data's tokenizer equals ``tokenizer``.

    Equal means equal :func:`threadsum.model.tokenizer_fingerprint` (vocabulary and special-token
    ids). ``model_tokenizer`` names ``tokenizer`` in the message (a hub id or folder); ``fix`` replaces
    the default advice (prepare again). Raises :class:`PreparedDataError` when ``prepared_dir`` is not
    a prepared folder or its tokenizer cannot be loaded.
    """
    prepared = open_prepared(prepared_dir)
    try:
        theirs = load_tokenizer(str(prepared.tokenizer_dir))
    except Exception as exc:  # a damaged tokenizer.json raises KeyError/Exception from the tokenizers library
        raise PreparedDataError(f"the tokenizer of the prepared data in {prepared.tokenizer_dir} cannot be loaded "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                f"run `threadsum prepare` again") from None
    ours_fp, theirs_fp = tokenizer_fingerprint(tokenizer), tokenizer_fingerprint(theirs)
    if ours_fp == theirs_fp:
        return
    name = model_tokenizer or getattr(tokenizer, "name_or_path", "") or "the model's tokenizer"
    raise TokenizerMismatchError(
        f"data.prepared_dir {prepared_dir} was tokenized with {_describe(prepared_dir)} (vocabulary {len(theirs)}, "
        f"fingerprint {theirs_fp[:12]}), but the model uses the tokenizer of '{name}' (vocabulary {len(tokenizer)}, "
        f"fingerprint {ours_fp[:12]}): its token ids would be read as other tokens. "
        + (fix or _prepare_fix(prepared_dir, f"'{name}'"))
    )


def check_prepared_for_model(cfg: Config) -> None:
    """Refuse ``cfg.data.prepared_dir`` unless it was tokenized with the tokenizer of ``cfg.model``.

    The model's tokenizer is :func:`threadsum.model.tokenizer_source` (``model.tokenizer``, else
    ``model.name_or_path``); a random-init model without one is built on the prepared tokenizer, so
    it always matches. A hub id equal to the one prepare.json records is accepted as is; otherwise the
    tokenizer is loaded and compared, and one that cannot be loaded here is refused as unverifiable.
    Raises :class:`TokenizerMismatchError` (exit 2) or :class:`PreparedDataError`.
    """
    source = tokenizer_source(cfg.model)
    if source is None:
        return
    prepared_dir = cfg.data.prepared_dir
    recorded = recorded_tokenizer(prepared_dir)
    if recorded == source and not Path(source).expanduser().exists():
        return  # the same hub id: one tokenizer, no download needed to tell
    try:
        tokenizer = load_tokenizer(source)
    except ModelLoadError as exc:
        reason = str(exc).splitlines()[0].rstrip(". ")
        raise TokenizerMismatchError(
            f"data.prepared_dir {prepared_dir} was tokenized with {_describe(prepared_dir)}, but the model uses "
            f"the tokenizer of '{source}', which cannot be loaded here to compare ({reason}). "
            + _prepare_fix(prepared_dir, f"'{source}'")
            + f"; or make '{source}' loadable here (Hugging Face cache or network) so its vocabulary can be compared"
        ) from None
    check_tokenizer_matches(prepared_dir, tokenizer, model_tokenizer=source)
